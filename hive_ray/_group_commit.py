"""Group commit: many ``await durable()`` callers share each SQLite commit.

Commits run in a worker thread, so the orchestrator's event loop keeps
accepting (and buffering) tasks while the previous batch is written. With
``checkpoint_seconds`` the committer also checkpoints the journal's log (see
`Journal.checkpoint`) in another worker thread, at most that often, and
nobody waits for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Iterable

from hive_ray._errors import JournalError
from hive_ray._journal import Journal, JournalEntry

logger = logging.getLogger("hive_ray.journal")

#: Log pages left after a checkpoint that suggest it cannot keep up (about 40 MB).
_LAGGING_CHECKPOINT_PAGES = 10_000


class GroupCommitter:
    """Commits a `Journal` in the background, sharing each commit among many waiters.

    ``await durable()`` returns once everything buffered before the call is
    committed. One background task commits whenever there is pending work, at
    most once per ``interval_seconds``, and at once when ``max_batch`` entries
    are waiting. Commits run in a worker thread (`asyncio.to_thread`), so the
    event loop keeps buffering meanwhile. A failed commit raises its error in
    every waiter of that batch; the entries stay buffered and are retried.

    Use `put`/`put_many` here rather than on the journal so that a full
    buffer wakes the committer; `durable` wakes it too.
    """

    def __init__(
        self, journal: Journal, *, interval_seconds: float = 0.002, max_batch: int = 2_000,
        checkpoint_seconds: float | None = None,
    ) -> None:
        if interval_seconds < 0:
            raise ValueError(f"interval_seconds must be >= 0, got {interval_seconds!r}")
        if checkpoint_seconds is not None and checkpoint_seconds <= 0:
            raise ValueError(f"checkpoint_seconds must be > 0 or None, got {checkpoint_seconds!r}")
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch!r}")
        self._journal = journal
        self._interval = interval_seconds
        self._max_batch = max_batch
        self._waiters: deque[tuple[int, asyncio.Future[None]]] = deque()
        self._wake = asyncio.Event()
        self._full = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._failures_in_a_row = 0
        self._checkpoint_seconds = checkpoint_seconds
        self._checkpoint: asyncio.Task[None] | None = None
        self._checkpointed_at = 0.0

    def put(self, entry: JournalEntry) -> None:
        """Buffer ``entry`` in the journal and wake the committer if the batch is full."""
        self._journal.put(entry)
        self._nudge()

    def put_many(self, entries: Iterable[JournalEntry]) -> None:
        """Buffer several entries in the journal and wake the committer if the batch is full."""
        self._journal.put_many(entries)
        self._nudge()

    async def durable(self) -> None:
        """Return once everything buffered before this call is committed.

        Raises:
            JournalError: the commit covering these entries failed, or the
                committer is closed.
        """
        if self._closing:
            raise JournalError("the journal group committer is closed; create a new GroupCommitter")
        target = self._journal.put_sequence
        if target <= self._journal.durable_sequence:
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((target, future))
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())
        self._wake.set()
        await future

    async def close(self) -> None:
        """Commit what is left, stop the background task and release all waiters.

        Raises:
            JournalError: the final commit failed.
        """
        self._closing = True
        self._wake.set()
        self._full.set()
        if self._task is not None:
            await self._task
        if self._checkpoint is not None:
            await self._checkpoint
        if self._journal.pending_count or self._waiters:
            await self._commit_once(raise_errors=True)

    def _nudge(self) -> None:
        self._wake.set()
        if self._journal.pending_count >= self._max_batch:
            self._full.set()
        if self._task is None and not self._closing:
            with contextlib.suppress(RuntimeError):  # no running loop: durable() starts it
                self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        next_commit_at = 0.0
        try:
            while not self._closing:
                if not self._journal.pending_count and not self._waiters:
                    self._wake.clear()
                    await self._wake.wait()
                    continue
                if self._failures_in_a_row:
                    # Back off so that a full disk is not hammered every interval.
                    await asyncio.sleep(min(1.0, self._interval * 2**self._failures_in_a_row))
                delay = next_commit_at - loop.time()
                if delay > 0 and self._journal.pending_count < self._max_batch:
                    self._full.clear()
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(self._full.wait(), delay)
                next_commit_at = loop.time() + self._interval
                await self._commit_once(raise_errors=False)
        except BaseException as error:
            self._fail_waiters(
                self._journal.put_sequence,
                JournalError(f"the journal group committer stopped unexpectedly: {error!r}"),
            )
            raise

    async def _commit_once(self, *, raise_errors: bool) -> None:
        # Waiters registered up to now are certainly in this batch (or earlier).
        covered = self._journal.put_sequence
        try:
            await asyncio.to_thread(self._journal.commit)
        except Exception as error:
            self._failures_in_a_row += 1
            self._fail_waiters(covered, error)
            if raise_errors:
                raise
            return
        self._failures_in_a_row = 0
        durable = self._journal.durable_sequence
        waiters = self._waiters
        while waiters and waiters[0][0] <= durable:
            future = waiters.popleft()[1]
            if not future.done():
                future.set_result(None)
        self._maybe_checkpoint()

    def _maybe_checkpoint(self) -> None:
        if self._checkpoint_seconds is None or self._closing:
            return
        if self._checkpoint is not None and not self._checkpoint.done():
            return
        loop = asyncio.get_running_loop()
        if loop.time() - self._checkpointed_at < self._checkpoint_seconds:
            return
        self._checkpointed_at = loop.time()
        self._checkpoint = loop.create_task(self._run_checkpoint())

    async def _run_checkpoint(self) -> None:
        try:
            left = await asyncio.to_thread(self._journal.checkpoint)
        except Exception as error:  # noqa: BLE001 - the log grows until a later one succeeds
            logger.warning("%s", error)
            return
        if left > _LAGGING_CHECKPOINT_PAGES:
            logger.warning("the task journal's write-ahead log keeps %d pages after a checkpoint; "
                           "something holds a long read on %s", left, self._journal.path)

    def _fail_waiters(self, covered: int, error: BaseException) -> None:
        waiters = self._waiters
        while waiters and waiters[0][0] <= covered:
            future = waiters.popleft()[1]
            if not future.done():
                future.set_exception(error)
