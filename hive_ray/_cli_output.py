"""What the ``hive`` commands print, and where everything else goes.

Quiet by default: a command's own lines go to the terminal (``sys.stdout``, and
:attr:`Console.err` for errors); everything else its process writes (Ray's Python loggers,
its C++ core's warnings, anything on file descriptors 1 and 2) goes to
``<state_dir>/logs/hive.log``. ``--verbose`` leaves everything on the terminal.

A foreground ``hive up`` shows a live status line, rewritten in place, only on a terminal;
into a file or pipe it writes a line when the pools change and a summary at most once a
minute (:class:`StatusLine`).
"""

from __future__ import annotations

import io
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

#: A log larger than this is moved to ``hive.log.1`` (replacing an older one) before a command.
LOG_ROTATE_BYTES = 5 * 1024 * 1024
#: Without a terminal, unchanged pools are summarised at most this often.
SUMMARY_SECONDS = 60.0


def plural(count: int, word: str, words: str | None = None) -> str:
    """``plural(1, "agent")`` -> ``"1 agent"``; ``plural(2, "agent")`` -> ``"2 agents"``."""
    return f"{count} {word if count == 1 else (words or word + 's')}"


class Console:
    """Where a command's own output goes (``out`` for results, ``err`` for errors)."""

    def __init__(self, out: TextIO, err: TextIO, log: Path | None,
                 restore: Callable[[], None] | None = None) -> None:
        self.out = out
        self.err = err
        self.log = log
        self._restore = restore

    def close(self) -> None:
        """Put file descriptors 1 and 2 and ``sys.stdout`` back as they were (a command run
        in-process, from a test or a notebook, must not leave its caller writing to the log)."""
        restore, self._restore = self._restore, None
        if restore is not None:
            restore()

    def error(self, message: str) -> None:
        print(f"hive: {message}", file=self.err, flush=True)


def open_console(log_dir: Path, *, verbose: bool, command: str) -> Console:
    """Quiet mode: file descriptors 1 and 2 (and ``sys.stderr``) go to the log; ``sys.stdout``
    and :attr:`Console.err` are the terminal's. Verbose: nothing moves. A ``sys.stdout`` or
    ``sys.stderr`` that is not the process's descriptor (pytest's capture, a notebook's
    stream) is kept as it is. :meth:`Console.close` undoes all of it."""
    if verbose:
        return Console(sys.stdout, sys.stderr, None)
    log_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    log = log_dir / "hive.log"
    rotate(log)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = {number: os.dup(number) for number in (1, 2)}
    previous_out, previous_err = sys.stdout, sys.stderr
    terminal_out = (os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8", errors="replace")
                    if _on_descriptor(sys.stdout, 1) else sys.stdout)
    terminal_err = (os.fdopen(os.dup(2), "w", buffering=1, encoding="utf-8", errors="replace")
                    if _on_descriptor(sys.stderr, 2) else sys.stderr)
    descriptor = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.dup2(descriptor, 1)
    os.dup2(descriptor, 2)
    os.close(descriptor)
    os.write(2, f"\n--- {time.strftime('%Y-%m-%d %H:%M:%S')} hive {command} (pid {os.getpid()})\n".encode())
    sys.stdout = terminal_out
    # sys.stderr keeps writing to descriptor 2, which is now the log.

    def restore() -> None:
        for stream in (sys.stdout, sys.stderr, terminal_out, terminal_err):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        for number, copy in saved.items():
            os.dup2(copy, number)
            os.close(copy)
        sys.stdout, sys.stderr = previous_out, previous_err
        for stream in (terminal_out, terminal_err):
            if stream is not previous_out and stream is not previous_err:
                stream.close()

    return Console(terminal_out, terminal_err, log, restore)


def _on_descriptor(stream: TextIO, number: int) -> bool:
    try:
        return stream.fileno() == number
    except (AttributeError, ValueError, io.UnsupportedOperation):
        return False


def rotate(log: Path, limit: int = LOG_ROTATE_BYTES) -> None:
    """Keep the log bounded: past ``limit`` it becomes ``<name>.1`` and a new one starts."""
    try:
        if log.stat().st_size > limit:
            os.replace(log, log.with_name(log.name + ".1"))
    except FileNotFoundError:
        pass


def is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError, io.UnsupportedOperation):
        return False


class StatusLine:
    """The foreground ``hive up`` status: live on a terminal, a line per change otherwise.

    ``show(text, shape)``: ``text`` is the line (a time of day is put before it), ``shape``
    what counts as a change (the pools, their sizes and states, not their counters). On a
    terminal every call rewrites the line; elsewhere a line is written when the shape
    changes, or when only counters changed and :data:`SUMMARY_SECONDS` have passed since
    the last line.
    """

    def __init__(self, stream: TextIO, live: bool, clock: Callable[[], float] = time.monotonic,
                 summary_seconds: float = SUMMARY_SECONDS) -> None:
        self._stream = stream
        self._live = live
        self._clock = clock
        self._summary_seconds = summary_seconds
        self._width = 0
        self._shape: str | None = None
        self._text: str | None = None
        self._printed_at = float("-inf")

    def show(self, text: str, shape: str) -> None:
        line = time.strftime("%H:%M:%S ") + text
        if self._live:
            self._stream.write("\r" + line.ljust(self._width))
            self._stream.flush()
            self._width = len(line)
            return
        now = self._clock()
        changed = shape != self._shape
        due = text != self._text and now - self._printed_at >= self._summary_seconds
        if changed or due:
            self._stream.write(line + "\n")
            self._stream.flush()
            self._printed_at = now
        self._shape, self._text = shape, text

    def end(self) -> None:
        """Leave the live line (the next message starts on a line of its own)."""
        if self._live and self._width:
            self._stream.write("\n")
            self._stream.flush()
            self._width = 0
