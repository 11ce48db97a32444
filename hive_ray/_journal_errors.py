"""Journal failures as `JournalError`s that say what happened and what to do.

SQLite reports a failure as a terse message and a result code ("database or
disk is full", 13). An operator needs to know which file, what it means and
what to do next, and the orchestrator needs a ``reason`` it can act on
without parsing text. Every SQLite or file-system error the journal meets
goes through `journal_error` (or the `translated` context manager), so no
raw ``sqlite3`` exception leaves the journal's public methods.
"""

from __future__ import annotations

import contextlib
import errno
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path

from hive_ray._errors import JournalError

# SQLite's primary result codes (an extended code keeps them in its low byte).
_PERM, _BUSY, _LOCKED, _NOMEM, _READONLY, _IOERR, _CORRUPT = 3, 5, 6, 7, 8, 10, 11
_FULL, _CANTOPEN, _NOTADB = 13, 14, 26

_REASON_BY_CODE = {
    _FULL: "full",
    _READONLY: "read_only",
    _PERM: "read_only",
    _CANTOPEN: "read_only",
    _CORRUPT: "corrupt",
    _NOTADB: "corrupt",
    _BUSY: "locked",
    _LOCKED: "locked",
    _IOERR: "io",
    _NOMEM: "memory",
}

_REASON_BY_ERRNO = {
    errno.ENOSPC: "full",
    errno.EDQUOT: "full",
    errno.EFBIG: "full",
    errno.EACCES: "read_only",
    errno.EPERM: "read_only",
    errno.EROFS: "read_only",
    errno.EIO: "io",
}

_DIAGNOSIS = {
    "full": "the disk is full (or a size limit or quota was reached)",
    "read_only": "the file or its directory is read-only or owned by another user",
    "corrupt": "the file is corrupt or not a SQLite database",
    "locked": "another process holds the journal (another orchestrator with the same journal_dir, "
              "or a long transaction in a sqlite3 shell)",
    "io": "the disk reported an I/O error (a failing or full disk, a file size limit, or a "
          "network file system)",
    "memory": "SQLite ran out of memory",
    "closed": "the journal was closed",
    "internal": "hive-ray asked SQLite for something it cannot do (a bug in hive-ray)",
    "other": "SQLite refused",
}


def fix_for(reason: str, path: Path) -> str:
    """What an operator should do about a failure of ``reason`` on the journal file ``path``."""
    directory, name = path.parent, path.name
    if reason == "full":
        return (f"free space on the disk holding {str(directory)!r} or move journal_dir "
                f"(HIVE_JOURNAL_DIR) to a larger disk; commits resume by themselves once there is room")
    if reason == "read_only":
        return (f"make {str(directory)!r} and the {name}* files in it owned and writable by the user "
                f"running the orchestrator (uid {os.getuid()}), or set HIVE_JOURNAL_DIR to a "
                f"writable directory")
    if reason == "corrupt":
        return (f"stop the orchestrator, then move {name}, {name}-wal and {name}-shm in "
                f"{str(directory)!r} aside (the journal starts empty) or restore them from a backup "
                f"(docs/ADMIN.md, 'The journal')")
    if reason == "locked":
        return ("stop the other process, or give each orchestrator its own journal_dir "
                "(HIVE_JOURNAL_DIR)")
    if reason == "io":
        return (f"check the disk holding {str(directory)!r} (df, dmesg) and keep the journal on a "
                f"local disk")
    if reason == "memory":
        return "give the head node more memory"
    if reason == "closed":
        return "open it again with Journal.open"
    if reason == "internal":
        return "please report it with this message; the journal itself is unharmed"
    return f"check free disk space and the permissions of {str(directory)!r}"


def reason_of(error: BaseException) -> str:
    """Classify a SQLite or OS error as one of `JournalError`'s reasons."""
    if isinstance(error, sqlite3.Error):
        code = getattr(error, "sqlite_errorcode", None)
        if isinstance(code, int):
            return _REASON_BY_CODE.get(code & 0xFF, "other")
        if "closed database" in str(error):
            return "closed"
        if isinstance(error, (sqlite3.ProgrammingError, sqlite3.InterfaceError)):
            return "internal"  # raised by Python's sqlite3 module, not by the disk
        return "other"
    if isinstance(error, OSError) and error.errno is not None:
        return _REASON_BY_ERRNO.get(error.errno, "other")
    return "other"


def journal_error(error: BaseException, *, path: Path, action: str, note: str = "") -> JournalError:
    """A `JournalError` for ``error``, met while ``action`` (e.g. "opening") the journal ``path``.

    ``note`` is appended: what became of the work in hand.
    """
    reason = reason_of(error)
    return JournalError(
        f"{action} the task journal {str(path)!r} failed: {_DIAGNOSIS.get(reason, _DIAGNOSIS['other'])} "
        f"({error}); {fix_for(reason, path)}{'. ' + note if note else ''}",
        path=str(path), reason=reason,
    )


@contextlib.contextmanager
def translated(path: Path, action: str) -> Iterator[None]:
    """Turn any ``sqlite3.Error`` raised inside into a `JournalError`."""
    try:
        yield
    except sqlite3.Error as error:
        raise journal_error(error, path=path, action=action) from error
