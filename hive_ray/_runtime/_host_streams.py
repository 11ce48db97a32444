"""Running a generator handler on a host: its parts go to the orchestrator as they come.

An agent whose ``handle`` is a generator (``async def handle(...): yield ...``
or a plain ``def`` with ``yield``) streams its result. The host drains the
generator (:func:`drain`), keeps every part for the task's combined result
(:func:`~hive_ray._stream_buffer.combine`), and sends them to the orchestrator
in batches through a :class:`PartSender`: one call in flight per task, so parts
arrive in order, and whatever the generator yields meanwhile goes in the next
call. The senders of all runs on a host share one call in flight
(:class:`PartMux`), which never waits: a run whose buffer is full asks again
after a pause (2 ms, doubling up to 100 ms) until its consumer has read. When
:data:`HOST_PENDING_PARTS` are waiting to be sent, the generator waits:
together with the orchestrator's bounded buffer, that is the back-pressure a
slow consumer applies.

A plain generator runs on the host's worker threads one step at a time, so a
slow step blocks neither the event loop nor the other agents.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import logging
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Executor
from typing import Any

from hive_ray._results import resolve_async, unwrap
from hive_ray._stream_buffer import PART, combine
from hive_ray._streaming import STREAM_POLL_SECONDS, StreamCursor, StreamRestart

logger = logging.getLogger("hive_ray.host")

#: Parts a host holds for one task while its previous batch is on the way.
HOST_PENDING_PARTS = 256

#: A run whose buffer is full asks again after this, doubling up to the maximum.
FULL_RETRY_FIRST_SECONDS, FULL_RETRY_MAX_SECONDS = 0.002, 0.1
#: How long a run asks an unreachable orchestrator again (it restarts in seconds), and the
#: longest pause between two tries; parts per call when it replays a run.
OUTAGE_SECONDS, OUTAGE_RETRY_MAX_SECONDS, REPLAY_BATCH_PARTS = 60.0, 1.0, 1000
#: The longest wait for the orchestrator to answer a batch of parts (it never waits itself).
PARTS_ANSWER_SECONDS = 30.0

_DONE = object()


def is_streaming(handle: Any) -> bool:
    """Is ``handle`` a generator function (async or plain)?"""
    return inspect.isasyncgenfunction(handle) or inspect.isgeneratorfunction(handle)


class PartMux:
    """Every streaming run of a host sends its parts through this: one call in flight for
    the whole host (``report_parts_many``), carrying the batches of every run that had parts
    meanwhile. Streaming 250 completions at once, that is one Ray call per few dozen parts
    instead of one per part; a run's own order is kept by its :class:`PartSender`.
    """

    def __init__(self, orchestrator: Any, link: Callable[[], Any] = lambda: None) -> None:
        self._orchestrator = orchestrator
        self._link = link  # the host's data-plane stream when it is open (else a Ray call)
        self._queue: list[tuple[tuple[str, str, int, list[Any], bool], asyncio.Future[bool | None]]] = []
        self._sending: asyncio.Task[None] | None = None

    async def send(self, task_id: str, agent_id: str, attempt: int, parts: list[Any],
                   opening: bool) -> bool | None:
        """True: buffered; False: the run no longer streams; None: its buffer is full (the
        caller offers the batch again after a pause). Raises what the call raised."""
        answer: asyncio.Future[bool | None] = asyncio.get_running_loop().create_future()
        self._queue.append(((task_id, agent_id, attempt, parts, opening), answer))
        if self._sending is None or self._sending.done():
            self._sending = asyncio.ensure_future(self._run())
        return await answer

    async def _run(self) -> None:
        while self._queue:
            batch, self._queue = self._queue, []
            items = [item for item, _ in batch]
            try:
                link = self._link()
                sent = link.report_parts_many(items) if link is not None and link.open \
                    else self._orchestrator.report_parts_many.remote(items)
                # It answers at once; one that does not (wedged) counts as away, like one that died.
                answers = await asyncio.wait_for(sent, PARTS_ANSWER_SECONDS)
            except Exception as error:  # noqa: BLE001 - each sender decides what it means
                for _, answer in batch:
                    if not answer.done():
                        answer.set_exception(error)
                continue
            for (_, answer), accepted in zip(batch, answers, strict=True):
                if not answer.done():  # its sender may have been cancelled meanwhile
                    answer.set_result(accepted)


class PartSender:
    """Sends one run's parts to the orchestrator, in order, one call in flight.

    If the orchestrator cannot be reached (it is restarting), the run keeps going and its
    parts are kept; the sender asks again with backoff for :data:`OUTAGE_SECONDS`, and
    the first call that gets through replays the run from its start (an opening and every
    part so far): the restarted orchestrator's consumers are told to start over
    (a ``restart`` item, see ``Streams.stream_parts``), so no part is lost to them.
    """

    def __init__(self, mux: PartMux, task_id: str, agent_id: str, attempt: int,
                 most_pending: int = HOST_PENDING_PARTS) -> None:
        self._mux = mux
        self._task_id = task_id
        self._agent_id = agent_id
        self._attempt = attempt
        self._most_pending = most_pending
        self._pending: list[Any] = []
        self._sending: asyncio.Task[None] | None = None
        self._opening = True
        self._outage_since: float | None = None  # the orchestrator is unreachable since then
        self._finishing = False
        self.live = True  # False once the orchestrator refused (the run was cancelled) or stayed away
        self.parts: list[Any] = []

    def open(self) -> None:
        """Tell the orchestrator a run starts (a restart, for a consumer that saw an earlier one).

        Does not wait: the generator starts meanwhile, and its parts follow the opening call.
        """
        self._kick()

    async def add(self, part: Any) -> None:
        """Keep ``part`` and send it; waits while too many parts wait to be sent."""
        self.parts.append(part)
        if not self.live or self._outage_since is not None:
            return  # during an outage, the replay sends every part
        self._pending.append(part)
        if self._sending is None or self._sending.done():
            self._kick()
        elif len(self._pending) >= self._most_pending:
            await asyncio.shield(self._sending)

    async def flush(self) -> None:
        """Wait until every part added so far was sent (or sending stopped). A run that ends
        while the orchestrator is away is not replayed: its outcome carries the result."""
        self._finishing = True
        while self._sending is not None and not self._sending.done():
            await asyncio.shield(self._sending)

    def _kick(self) -> None:
        self._sending = asyncio.ensure_future(self._send())

    async def _send(self) -> None:
        while self.live and (self._pending or self._opening):
            parts, self._pending = self._pending[:REPLAY_BATCH_PARTS], self._pending[REPLAY_BATCH_PARTS:]
            opening, self._opening = self._opening, False
            try:
                accepted = await self._deliver(parts, opening)
            except Exception as error:  # noqa: BLE001 - the orchestrator is gone or restarting
                if not await self._outage(error):
                    return
                continue
            if self._outage_since is not None:
                logger.info("task %s streams again (its parts from the start)", self._task_id)
                self._outage_since = None
            if not accepted:
                self.live = False
                self._pending.clear()

    async def _deliver(self, parts: list[Any], opening: bool) -> bool:
        accepted = await self._mux.send(self._task_id, self._agent_id, self._attempt, parts, opening)
        pause = FULL_RETRY_FIRST_SECONDS
        while accepted is None:  # the buffer is full: the consumer has yet to read
            # Asked again rather than waiting in a call: a call that waits holds one of the
            # orchestrator's call slots per slow consumer.
            await asyncio.sleep(pause)
            pause = min(pause * 2, FULL_RETRY_MAX_SECONDS)
            accepted = await self._mux.send(self._task_id, self._agent_id, self._attempt, parts, opening)
        return bool(accepted)

    async def _outage(self, error: Exception) -> bool:
        """The orchestrator did not answer: wait and set up a replay; False to give up."""
        now = time.monotonic()
        if self._outage_since is None:
            self._outage_since = now
            logger.warning("parts of task %s could not reach the orchestrator (%s: %s); asking again "
                           "for %g s, then the stream starts over", self._task_id, type(error).__name__,
                           error, OUTAGE_SECONDS)
        if self._finishing or now - self._outage_since > OUTAGE_SECONDS:
            # Its consumers get the whole result when the task's end reaches them.
            self.live = False
            self._pending.clear()
            return False
        await asyncio.sleep(min(OUTAGE_RETRY_MAX_SECONDS, 0.05 * 2 ** min(10, int(now - self._outage_since))))
        self._pending, self._opening = list(self.parts), True  # replay the run from its start
        return True


async def drain(produced: Any, sender: PartSender, executor: Executor | None) -> Any:
    """Run a generator handler's generator to its end, streaming each part; its combined result.

    The parts it yielded before raising reach the orchestrator before its error does.
    """
    sender.open()
    try:
        if inspect.isasyncgen(produced):
            try:
                async for part in produced:
                    await sender.add(part)
            finally:
                await produced.aclose()
        else:
            loop = asyncio.get_running_loop()
            context = contextvars.copy_context()  # the task id and trace context of this run
            try:
                while True:
                    part = await loop.run_in_executor(executor, context.run, next, produced, _DONE)
                    if part is _DONE:
                        break
                    await sender.add(part)
            finally:
                _close_quietly(produced)
    except Exception:
        await sender.flush()
        raise
    await sender.flush()
    return combine(sender.parts)


async def delegated_parts(orchestrator: Any, template: dict[str, Any], payload: Any,
                          fetch_reference: Any) -> AsyncIterator[Any]:
    """A sub-task's parts for the agent that delegated it (``context.delegate_stream``)."""
    [task_id] = await orchestrator.submit_many.remote({**template, "stream": True}, [payload])
    cursor = StreamCursor()
    try:
        while cursor.answer is None:
            reply = await orchestrator.stream_parts.remote(task_id, cursor.after, STREAM_POLL_SECONDS)
            for _, kind, value in cursor.take(reply):
                yield value if kind == PART else StreamRestart(attempt=value)
        if cursor.needs_result():
            value = await resolve_async(task_id, unwrap(task_id, cursor.answer), fetch_reference)  # raises
            if cursor.result_is_the_part():
                yield value  # not a generator: its result is its one part
    finally:
        if cursor.answer is None:  # the delegating task stopped reading (or was cancelled)
            orchestrator.cancel_many.remote([task_id])


def _close_quietly(generator: Any) -> None:
    try:
        generator.close()
    except ValueError:
        pass  # still running a step on a worker thread (cancelled mid-step): that step ends by itself


__all__ = ["HOST_PENDING_PARTS", "PartMux", "PartSender", "delegated_parts", "drain", "is_streaming"]
