"""Group commit: many ``await durable()`` callers share each SQLite commit.

Commits run in a worker thread, so the orchestrator's event loop keeps
accepting (and buffering) tasks while the previous batch is written. With
``checkpoint_seconds`` the committer also checkpoints the journal's log (see
`Journal.checkpoint`) in another worker thread, at most that often, and
nobody waits for it.

Failures: every waiter whose writes were in a failed commit gets its
`JournalError` (nobody waits forever), and the committer carries on: the
retried writes are committed, after a short back-off, once the disk lets it.
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
#: The longest wait between two commit attempts while commits keep failing.
_MAX_BACKOFF_SECONDS = 1.0


class GroupCommitter:
    """Commits a `Journal` in the background, sharing each commit among many waiters.

    ``await durable()`` returns once everything buffered before the call is
    committed. One background task commits whenever there is pending work, at
    most once per ``interval_seconds``, and at once when ``max_batch`` entries
    are waiting. Commits run in a worker thread (`asyncio.to_thread`), so the
    event loop keeps buffering meanwhile. A failed commit raises its
    `JournalError` in every waiter of that batch; its new tasks are dropped and
    its other writes retried (see `Journal.commit`), after a back-off that
    starts at ``failure_backoff_seconds`` and doubles up to a second.

    Use `put`/`put_many` here rather than on the journal so that a full
    buffer wakes the committer (or call `nudge` after writing to the journal
    directly); `durable` wakes it too.
    """

    def __init__(
        self, journal: Journal, *, interval_seconds: float = 0.002, max_batch: int = 2_000,
        checkpoint_seconds: float | None = None, failure_backoff_seconds: float = 0.05,
    ) -> None:
        if interval_seconds < 0:
            raise ValueError(f"interval_seconds must be >= 0, got {interval_seconds!r}")
        if checkpoint_seconds is not None and checkpoint_seconds <= 0:
            raise ValueError(f"checkpoint_seconds must be > 0 or None, got {checkpoint_seconds!r}")
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch!r}")
        if failure_backoff_seconds < 0:
            raise ValueError(f"failure_backoff_seconds must be >= 0, got {failure_backoff_seconds!r}")
        self._failure_backoff = failure_backoff_seconds
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

    def put(self, entry: JournalEntry, *, accept: bool = False) -> None:
        """Buffer ``entry`` in the journal (see `Journal.put`) and wake the committer."""
        self._journal.put(entry, accept=accept)
        self.nudge()

    def put_many(self, entries: Iterable[JournalEntry], *, accept: bool = False) -> None:
        """Buffer several entries in the journal (see `Journal.put`) and wake the committer."""
        self._journal.put_many(entries, accept=accept)
        self.nudge()

    async def durable(self) -> None:
        """Return once everything buffered before this call is committed.

        Raises:
            JournalError: the commit covering these entries failed, or the
                committer is closed.
        """
        if self._closing:
            raise JournalError(f"the group committer of the task journal {str(self._journal.path)!r} "
                               f"is closed; open the journal again", path=str(self._journal.path),
                               reason="closed")
        target = self._journal.put_sequence
        if target <= self._journal.durable_sequence:
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((target, future))
        self.nudge()
        await future

    async def close(self) -> None:
        """Commit what is left, stop the background task and release all waiters.

        Raises:
            JournalError: the final commit failed.
        """
        self._closing = True
        self._wake.set()
        self._full.set()
        for task in (self._task, self._checkpoint):
            if task is not None:
                await asyncio.wait([task])  # whatever became of it, the final commit follows
        if self._journal.pending_count or self._waiters:
            await self._commit_once(raise_errors=True)

    def nudge(self) -> None:
        """Wake the committer after writes were put on the journal directly."""
        self._wake.set()
        if self._journal.pending_count >= self._max_batch:
            self._full.set()
        # Started on first use, and again if it ever stopped (its waiters were failed then).
        if (self._task is None or self._task.done()) and not self._closing:
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
                    # Back off so that a full disk is not hammered in a tight loop.
                    await asyncio.sleep(min(_MAX_BACKOFF_SECONDS, self._failure_backoff
                                            * 2 ** (self._failures_in_a_row - 1)))
                delay = next_commit_at - loop.time()
                if delay > 0 and self._journal.pending_count < self._max_batch:
                    self._full.clear()
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(self._full.wait(), delay)
                next_commit_at = loop.time() + self._interval
                await self._commit_once(raise_errors=False)
        except BaseException as error:
            self._fail_waiters(self._journal.put_sequence, JournalError(
                f"the group committer of the task journal {str(self._journal.path)!r} stopped "
                f"({error!r}); the next durable() starts it again",
                path=str(self._journal.path), reason="other"))
            raise

    async def _commit_once(self, *, raise_errors: bool) -> None:
        covered = self._journal.put_sequence  # waiters registered so far
        try:
            await asyncio.to_thread(self._journal.commit)
        except Exception as error:  # noqa: BLE001 - every waiter of the batch learns why
            if not isinstance(error, JournalError):
                error = JournalError(f"committing the task journal {str(self._journal.path)!r} "
                                     f"failed unexpectedly: {error!r}", path=str(self._journal.path),
                                     reason="other")
            if not self._failures_in_a_row:
                logger.error("%s", error)
            self._failures_in_a_row += 1
            # Every waiter registered so far, and those whose writes joined the failed
            # batch after this call began (up to when the commit took the buffer).
            self._fail_waiters(max(covered, self._journal.attempted_sequence), error)
            if raise_errors:
                raise error from None
            return
        if self._failures_in_a_row:
            logger.warning("task journal commits succeed again after %d failures", self._failures_in_a_row)
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
