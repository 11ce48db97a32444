"""Back up hive-ray's task journal while the orchestrator keeps writing to it.

::

    python3 backup_journal.py /home/ubuntu/hive/journal/journal.sqlite3 /home/ubuntu/hive/backups

Uses SQLite's online backup API: the copy is one consistent snapshot even
though the journal is in WAL mode and being written (copying the file with
``cp`` is not: the newest commits live in ``journal.sqlite3-wal`` until a
checkpoint). Writers are never blocked. The copy is then checked with
``PRAGMA integrity_check``. Standard library only, so it runs on any node
with Python 3, with or without hive-ray installed.
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
import time
from pathlib import Path


def backup(journal: Path, directory: Path) -> Path:
    """Copy ``journal`` into ``directory`` as ``journal-<UTC time>.sqlite3``; return its path.

    Raises:
        FileNotFoundError: ``journal`` does not exist (a typo would otherwise create an empty one).
        RuntimeError: the copy failed its integrity check.
    """
    if not journal.is_file():
        raise FileNotFoundError(f"no journal at {journal}; check HIVE_JOURNAL_DIR on the head node")
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / time.strftime("journal-%Y%m%dT%H%M%SZ.sqlite3", time.gmtime())
    partial = target.with_suffix(".partial")
    source = sqlite3.connect(f"file:{journal}?mode=rw", uri=True)
    copy = sqlite3.connect(partial)
    try:
        # pages=1024 per step, then the lock is released so the orchestrator's commits continue.
        source.backup(copy, pages=1024, sleep=0.005)
        [(verdict,)] = copy.execute("PRAGMA integrity_check").fetchall()
        if verdict != "ok":
            raise RuntimeError(f"the backup of {journal} failed its integrity check: {verdict}")
    finally:
        copy.close()
        source.close()
    partial.rename(target)  # only complete, checked backups get the final name
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("journal", type=Path, help="the journal file: $HIVE_JOURNAL_DIR/journal.sqlite3")
    parser.add_argument("directory", type=Path, help="where to write the backup")
    args = parser.parse_args(argv)
    try:
        target = backup(args.journal, args.directory)
    except (OSError, RuntimeError, sqlite3.Error) as error:
        print(f"backup_journal: {error}", file=sys.stderr)
        return 1
    check = sqlite3.connect(target)
    try:
        [(tasks,)] = check.execute("SELECT count(*) FROM tasks").fetchall()
    except sqlite3.Error as error:
        print(f"backup_journal: {target} is not a hive-ray journal ({error})", file=sys.stderr)
        return 1
    finally:
        check.close()
    print(f"{target} ({target.stat().st_size} bytes, {tasks} tasks)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
