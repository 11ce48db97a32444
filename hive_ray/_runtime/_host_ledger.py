"""What a host ran, kept for an orchestrator that may die mid-batch.

An orchestrator killed while its hosts run tasks never receives those tasks'
outcomes: the stream (or Ray call) they would travel back on dies with it.
Hosts outlive it (they are detached actors), so each keeps an
:class:`OutcomeLedger`: the batches it is running, and the outcomes it produced
in the last few seconds. A restarted orchestrator adopting the host reads both
(:meth:`OutcomeLedger.snapshot`) and claims the running ones as they end
(:meth:`OutcomeLedger.claim`), so that a task in flight during the crash
finishes once, on the host that ran it, and is recorded once.

Why keep outcomes that were sent? One sent in the last moments before a crash
may not have reached the journal yet. The new orchestrator records it if the
journal still has the task unfinished, and ignores it otherwise. Outcomes are
dropped once a later batch shows the orchestrator alive ``keep_seconds`` after
they were produced (a crash stops batches, so nothing is dropped before the
next orchestrator looks), and beyond ``limit``, oldest first: memory stays
bounded.

Pure Python (no Ray): unit-tested on its own.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from hive_ray._runtime._contracts import KeptOutcome, RunningBatch
from hive_ray._task import Envelope, Outcome

#: Seconds an outcome is kept after a later batch proved the orchestrator alive.
KEEP_SECONDS = 2.0
#: Outcomes kept at most, oldest dropped first.
KEEP_LIMIT = 10_000


class _Batch:
    __slots__ = ("agent_id", "envelopes", "ended")

    def __init__(self, agent_id: str, envelopes: list[Envelope]) -> None:
        self.agent_id = agent_id
        self.envelopes = envelopes
        self.ended: asyncio.Future[list[Outcome] | None] | None = None  # made when someone claims


class OutcomeLedger:
    """Batches in progress and recent outcomes of one host."""

    def __init__(self, *, keep_seconds: float = KEEP_SECONDS, limit: int = KEEP_LIMIT,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._keep_seconds = keep_seconds
        self._limit = limit
        self._clock = clock
        self._running: dict[int, _Batch] = {}
        # task id -> (produced at, agent id, attempt, outcome), oldest first
        self._recent: OrderedDict[str, tuple[float, str, int, Outcome]] = OrderedDict()
        self.last_contact = clock()

    def contact(self) -> None:
        """The orchestrator was heard from: outcomes older than ``keep_seconds`` reached it."""
        now = self._clock()
        self.last_contact = now
        recent, horizon = self._recent, now - self._keep_seconds
        while recent and next(iter(recent.values()))[0] < horizon:
            recent.popitem(last=False)

    # -- the host's run path --------------------------------------------------------
    def begin(self, agent_id: str, envelopes: list[Envelope]) -> _Batch:
        self.contact()
        batch = _Batch(agent_id, envelopes)
        self._running[id(batch)] = batch
        return batch

    def end(self, batch: _Batch, outcomes: list[Outcome]) -> None:
        self._running.pop(id(batch), None)
        now = self._clock()
        attempts = {envelope.task_id: envelope.attempt for envelope in batch.envelopes}
        recent = self._recent
        agent_id = batch.agent_id
        for outcome in outcomes:  # a task seen again (a retry here) keeps its place in line
            recent[outcome.task_id] = (now, agent_id, attempts.get(outcome.task_id, 1), outcome)
        while len(recent) > self._limit:
            recent.popitem(last=False)
        if batch.ended is not None and not batch.ended.done():
            batch.ended.set_result(outcomes)

    def fail(self, batch: _Batch, error: BaseException) -> None:
        """The batch raised: its tasks end with that error (as its caller would have seen)."""
        if isinstance(error, asyncio.CancelledError | KeyboardInterrupt | SystemExit):
            self._running.pop(id(batch), None)  # not run to its end: its tasks are not here
            if batch.ended is not None and not batch.ended.done():
                batch.ended.set_result(None)
            return
        described = {"type": type(error).__name__, "message": str(error)[:2000]}
        self.end(batch, [Outcome(task_id=envelope.task_id, status="error", error=described)
                         for envelope in batch.envelopes])

    # -- a new orchestrator ---------------------------------------------------------
    def snapshot(self) -> tuple[list[RunningBatch], list[KeptOutcome]]:
        """The batches still running, and the outcomes kept, for an adopting orchestrator."""
        self.last_contact = self._clock()
        running = [RunningBatch(agent_id=batch.agent_id,
                                attempts={e.task_id: e.attempt for e in batch.envelopes})
                   for batch in self._running.values()]
        kept = [KeptOutcome(agent_id=agent_id, attempt=attempt, outcome=outcome)
                for _, agent_id, attempt, outcome in self._recent.values()]
        return running, kept

    async def claim(self, task_ids: list[str]) -> list[Outcome]:
        """Each task's outcome, once it ended; ``lost`` for a task this host does not hold."""
        self.last_contact = self._clock()
        waiting: dict[str, _Batch] = {}
        for batch in self._running.values():
            for envelope in batch.envelopes:
                waiting[envelope.task_id] = batch
        ended: dict[str, Outcome] = {}
        for task_id in task_ids:
            kept = self._recent.get(task_id)
            if kept is not None:
                ended[task_id] = kept[3]
                continue
            batch = waiting.get(task_id)
            if batch is None:
                continue
            if batch.ended is None:
                batch.ended = asyncio.get_running_loop().create_future()
            outcomes = await asyncio.shield(batch.ended)
            for outcome in outcomes or ():
                ended[outcome.task_id] = outcome
        return [ended.get(task_id) or _not_here(task_id) for task_id in task_ids]

    def statistics(self) -> dict[str, Any]:
        return {"running_batches": len(self._running), "kept_outcomes": len(self._recent)}


def _not_here(task_id: str) -> Outcome:
    return Outcome(task_id=task_id, status="lost", error={
        "type": "hive_ray.TaskNotOnHost",
        "message": f"task {task_id} is neither running on this host nor among its kept outcomes"})


__all__ = ["KEEP_LIMIT", "KEEP_SECONDS", "OutcomeLedger"]
