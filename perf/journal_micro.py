"""Micro-benchmarks of the task journal, as the orchestrator uses it (no Ray).

Commits (default): for each durability mode (``normal``, ``full``), many
concurrent "submits" each buffer one entry (~200-byte body) and wait until it
is durable, as ``submit`` does before it returns: ``grouped_entries_per_s``
(concurrency 1,000; target >= 10,000) and ``serial_commits_per_s`` (one
submit at a time: each waits for its own commit, so this is the commit rate).

Recovery (``--recovery``): a journal with 1,000,000 finished and 10,000
unfinished tasks; how long opening it, ``unfinished()``, ``pools()``,
``dead_letters()`` and ``find_idempotent()`` take (goal: well under a second),
in wall-clock and CPU seconds, and the integrity check meant for a worker.

Prints JSON and writes it to ``--json`` if given.

Usage: python perf/journal_micro.py [--entries 50000] [--concurrency 1000]
           [--durability normal full] [--recovery] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import pickle
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runs from a checkout too

from hive_ray._group_commit import GroupCommitter  # noqa: E402
from hive_ray._journal import Journal, JournalEntry  # noqa: E402
from hive_ray._runtime._durability import TaskJournal, encode_entry  # noqa: E402
from hive_ray._task import TaskEntry, TaskState  # noqa: E402

BODY = b'{"payload": "' + b"x" * 180 + b'"}'


def _entry(index: int, *, finished: bool = False, created_at: float | None = None,
           body: bytes = BODY, dead_letter: bool = False) -> JournalEntry:
    now = time.time() if created_at is None else created_at
    return JournalEntry(task_id=f"task-{index:08d}", pool=f"pool-{index % 10}",
                        state="succeeded" if finished else "queued", idempotency_key=f"key-{index}",
                        created_at=now, updated_at=now, finished=finished, body=body,
                        dead_letter=dead_letter)


async def commits(directory: str, durability: str, entries: int, concurrency: int) -> dict[str, float]:
    journal = Journal.open(directory, durability=durability, background_checkpoints=True)
    committer = GroupCommitter(journal, interval_seconds=0.0, checkpoint_seconds=1.0)
    counter = iter(range(entries))

    async def submitter() -> None:
        for index in counter:
            committer.put(_entry(index), accept=True)
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
        "commits_per_s": round(statistics.commits / elapsed, 1),
        "entries": entries,
        "concurrency": concurrency,
        "seconds": round(elapsed, 3),
        "commits": statistics.commits,
        "mean_batch": round(statistics.committed_entries / max(statistics.commits, 1), 1),
    }


def recovery(directory: str, finished: int, unfinished: int) -> dict[str, float]:
    """Time the reads a restarted orchestrator makes, on a large journal."""
    body = encode_entry(TaskEntry(task_id="t" * 32, pool="pool-0", agent_type="echo",
                                  payload={"text": "x" * 100}, state=TaskState.QUEUED))
    started = time.perf_counter()
    with Journal.open(directory) as journal:
        base = time.time() - 3600
        for start in range(0, finished, 50_000):
            journal.put_many(_entry(index, finished=True, created_at=base + index * 1e-3, body=body,
                                    dead_letter=index % 1000 == 0)
                             for index in range(start, min(finished, start + 50_000)))
            journal.commit()
        journal.put_many(_entry(finished + index, created_at=base + 2000 + index, body=body)
                         for index in range(unfinished))
        for pool in range(10):
            journal.put_pool(f"pool-{pool}", pickle.dumps({"spec": {"name": f"pool-{pool}"},
                                                           "reference": "module:Agent"}))
        journal.commit()
        file_bytes = journal.statistics().file_bytes
    built = time.perf_counter() - started

    timings: dict[str, float] = {}

    def timed(name: str, call):  # noqa: ANN001, ANN202
        # CPU time too: on a shared machine the wall clock also counts other processes' turns.
        began, began_cpu = time.perf_counter(), time.process_time()
        value = call()
        timings[name] = round(time.perf_counter() - began, 4)
        timings[name.replace("_seconds", "_cpu_seconds")] = round(time.process_time() - began_cpu, 4)
        return value

    journal = timed("open_seconds", lambda: TaskJournal.open(directory))
    rows = timed("unfinished_seconds", journal._journal.unfinished)
    decoded = timed("unfinished_decoded_seconds", journal.unfinished)
    pools = timed("pools_seconds", journal.pools)
    letters = timed("dead_letters_seconds", lambda: journal.dead_letters(100))
    timed("find_idempotent_seconds", lambda: journal.find_idempotent("pool-3", "key-13"))
    timed("check_integrity_seconds", journal.check_integrity)  # in the background, after start-up
    asyncio.run(journal.close())
    if len(rows) != unfinished or len(decoded) != unfinished or len(pools) != 10 \
            or len(letters) != min(100, (finished + 999) // 1000):
        raise SystemExit("the recovery reads returned the wrong number of rows")
    return {"finished": finished, "unfinished": unfinished, "file_bytes": file_bytes,
            "build_seconds": round(built, 1), "load_average": os.getloadavg()[0], **timings}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=50_000)
    parser.add_argument("--concurrency", type=int, default=1_000)
    parser.add_argument("--serial-entries", type=int, default=2_000,
                        help="entries for the one-at-a-time commit rate")
    parser.add_argument("--durability", nargs="+", default=["normal", "full"], choices=["normal", "full"])
    parser.add_argument("--recovery", action="store_true", help="measure recovery reads instead")
    parser.add_argument("--finished", type=int, default=1_000_000)
    parser.add_argument("--unfinished", type=int, default=10_000)
    parser.add_argument("--json", type=Path, help="also write the result to this file")
    arguments = parser.parse_args()
    result: dict[str, object] = {}
    with tempfile.TemporaryDirectory(prefix="hive-journal-bench-") as scratch:
        if arguments.recovery:
            result["recovery"] = recovery(f"{scratch}/recovery", arguments.finished, arguments.unfinished)
        else:
            for durability in arguments.durability:
                grouped = asyncio.run(commits(f"{scratch}/{durability}-grouped", durability,
                                              arguments.entries, arguments.concurrency))
                serial = asyncio.run(commits(f"{scratch}/{durability}-serial", durability,
                                             arguments.serial_entries, 1))
                result[durability] = {"grouped_entries_per_s": grouped["entries_per_s"],
                                      "serial_commits_per_s": serial["commits_per_s"],
                                      "grouped": grouped, "serial": serial}
    text = json.dumps(result)
    print(text)
    if arguments.json is not None:
        arguments.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
