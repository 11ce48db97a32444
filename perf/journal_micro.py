"""Throughput of the task journal under group commit, as the orchestrator uses it.

Many concurrent "submits" each buffer one entry (~200-byte body) and wait
until it is durable, the way ``submit`` must before it returns. Prints one
JSON line, e.g. ``{"entries_per_s": 61234.5, ...}``. The target is >= 10,000.

Usage: python perf/journal_bench.py [--entries 50000] [--concurrency 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runs from a checkout too

from hive_ray._group_commit import GroupCommitter  # noqa: E402
from hive_ray._journal import Journal, JournalEntry  # noqa: E402

BODY = b'{"payload": "' + b"x" * 180 + b'"}'


async def run(directory: str, entries: int, concurrency: int) -> dict[str, float]:
    journal = Journal.open(directory)
    committer = GroupCommitter(journal)
    counter = iter(range(entries))

    async def submitter() -> None:
        for index in counter:
            now = time.time()
            committer.put(
                JournalEntry(
                    task_id=f"task-{index:08d}",
                    pool="echo",
                    state="queued",
                    idempotency_key=None,
                    created_at=now,
                    updated_at=now,
                    finished=False,
                    body=BODY,
                )
            )
            await committer.durable()

    started = time.perf_counter()
    await asyncio.gather(*(submitter() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    await committer.close()
    statistics = journal.statistics()
    journal.close()
    if statistics.entries != entries:
        raise SystemExit(f"expected {entries} entries on disk, found {statistics.entries}")
    return {
        "entries_per_s": round(entries / elapsed, 1),
        "entries": entries,
        "concurrency": concurrency,
        "seconds": round(elapsed, 3),
        "commits": statistics.commits,
        "mean_batch": round(statistics.committed_entries / max(statistics.commits, 1), 1),
        "body_bytes": len(BODY),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=50_000)
    parser.add_argument("--concurrency", type=int, default=1_000)
    arguments = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="hive-journal-bench-") as directory:
        result = asyncio.run(run(directory, arguments.entries, arguments.concurrency))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
