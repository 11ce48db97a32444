"""What a host needs for virtual agents: the shard it runs instead, and the store it loads from.

A host whose pool runs a :class:`~hive_ray._virtual.VirtualAgent` type runs one
:class:`~hive_ray._virtual.VirtualShard` per agent id instead of an instance
of the type; the shard loads states through :class:`OrchestratorStateStore`
(the orchestrator keeps them and their journal rows). Loads of many
identities at once (a shard coming back after its host died, a burst of
first messages) share one call.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from hive_ray._agent import Agent, AgentContext, current_task_id
from hive_ray._journal_states import StateRow
from hive_ray._results import describe_error
from hive_ray._task import Envelope, Outcome, task_of
from hive_ray._virtual import StateSave, Verdict
from hive_ray._virtual_shard import VirtualShard

#: Keys one load call asks for at most.
LOAD_BATCH = 512
#: Longest wait for the orchestrator's answer to a load or a save.
STORE_TIMEOUT_SECONDS = 60.0


def resident_agent(cls: type[Agent], context: AgentContext, orchestrator: Any) -> Agent:
    """The agent a host keeps for ``cls``: an instance, or a shard of a virtual type."""
    is_virtual = getattr(cls, "is_virtual", None)
    if is_virtual is not None and is_virtual():
        return VirtualShard(context, cls, OrchestratorStateStore(orchestrator, cls.type_name()))  # type: ignore[arg-type]
    return cls(context)


class OrchestratorStateStore:
    """Loads and forced saves of one virtual type's states, as Ray calls to the orchestrator."""

    def __init__(self, orchestrator: Any, agent_type: str) -> None:
        self._orchestrator = orchestrator
        self._agent_type = agent_type
        self._wanted: dict[str, asyncio.Future[StateRow | None]] = {}
        self._flush_scheduled = False

    async def load(self, key: str) -> StateRow | None:
        future = self._wanted.get(key)
        if future is None:
            future = self._wanted[key] = asyncio.get_running_loop().create_future()
            if not self._flush_scheduled:
                self._flush_scheduled = True
                asyncio.get_running_loop().call_soon(self._flush)
        return await asyncio.shield(future)

    def _flush(self) -> None:
        self._flush_scheduled = False
        wanted, self._wanted = self._wanted, {}
        keys = list(wanted)
        for start in range(0, len(keys), LOAD_BATCH):
            chunk = {key: wanted[key] for key in keys[start:start + LOAD_BATCH]}
            asyncio.ensure_future(self._load_chunk(chunk))

    async def _load_chunk(self, chunk: dict[str, asyncio.Future[StateRow | None]]) -> None:
        try:
            rows = await asyncio.wait_for(
                self._orchestrator.load_agent_states.remote(self._agent_type, list(chunk)), STORE_TIMEOUT_SECONDS)
        except BaseException as error:  # noqa: BLE001 - every waiter gets the reason
            for future in chunk.values():
                if not future.done():
                    future.set_exception(RuntimeError(
                        f"could not load the state of a {self._agent_type!r} agent from the orchestrator: "
                        f"{type(error).__name__}: {error}"))
                    future.exception()
            return
        for future, row in zip(chunk.values(), rows, strict=True):
            if not future.done():
                future.set_result(None if row is None else StateRow(*row))

    async def save(self, save: StateSave) -> Verdict:
        verdict = await asyncio.wait_for(self._orchestrator.save_agent_state.remote(self._agent_type, save),
                                         STORE_TIMEOUT_SECONDS)
        return Verdict(verdict)

    async def set_reminder(self, key: str, name: str, due_in: float, period: float | None) -> None:
        await asyncio.wait_for(
            self._orchestrator.set_reminder.remote(self._agent_type, key, name, due_in, period), STORE_TIMEOUT_SECONDS)

    async def cancel_reminder(self, key: str, name: str) -> bool:
        return await asyncio.wait_for(
            self._orchestrator.cancel_reminder.remote(self._agent_type, key, name), STORE_TIMEOUT_SECONDS)


def describe_identity(residents: dict[str, Any], agent_id: str, key: str) -> dict[str, Any] | None:
    """The activation of ``key`` on shard ``agent_id`` of this host, or None."""
    resident = residents.get(agent_id)
    shard = getattr(resident, "agent", None)
    return shard.describe(key) if isinstance(shard, VirtualShard) else None


def virtual_statistics(residents: dict[str, Any]) -> dict[str, int] | None:
    """Activations on this host's shards, summed; None when it runs no virtual type."""
    totals: dict[str, int] | None = None
    for resident in residents.values():
        shard = resident.agent
        if isinstance(shard, VirtualShard):
            totals = totals or {}
            for name, value in shard.statistics().items():
                totals[name] = totals.get(name, 0) + value
    return totals


# ---------------------------------------------------------------------- a shard's batches
class _Resumed:
    """Awaiting it continues a coroutine that was started by hand and has yielded ``first``.

    What a task does for a coroutine, from its second step on: the future the
    coroutine waits for is handed up to the task running this, and what comes
    back (a value, or an exception thrown in, such as a cancellation) is passed
    down to the coroutine.
    """

    __slots__ = ("_coro", "_first")

    def __init__(self, coro: Any, first: Any) -> None:
        self._coro = coro
        self._first = first

    def __await__(self) -> Any:
        coro, yielded = self._coro, self._first
        while True:
            try:
                sent = yield yielded
            except GeneratorExit:
                coro.close()
                raise
            except BaseException as error:  # noqa: BLE001 - thrown in (a cancellation): passed down
                try:
                    yielded = coro.throw(error)
                except StopIteration as done:
                    return done.value
            else:
                try:
                    yielded = coro.send(sent)
                except StopIteration as done:
                    return done.value


async def _resumed(coro: Any, first: Any) -> Any:
    return await _Resumed(coro, first)


async def run_shard_batch(host: Any, resident: Any, envelopes: list[Envelope]) -> list[Outcome]:
    """A shard's batch: each message's turn runs at once, inline, as far as it can without
    waiting; only one that has to wait (for its agent's lock, a load, an ``await`` in the
    handler) goes on as a task. A shard's turns are short and most never wait, and a task per
    message cost more than the turn (measured: half a host's CPU went to making them).

    Messages with a deadline or a trace take the host's ordinary path (``_run_async``).
    """
    shard = resident.agent
    context = shard.context
    outcomes: list[Any] = [None] * len(envelopes)
    pending: list[tuple[int, asyncio.Future[Outcome]]] = []
    ordinary = 0  # counted by _run_async itself
    for index, envelope in enumerate(envelopes):
        if envelope.deadline is not None or envelope.trace_context is not None:
            pending.append((index, asyncio.ensure_future(host._run_async(resident, envelope))))
            ordinary += 1
            continue
        started = time.time()
        task_id = envelope.task_id
        if task_id in context.cancelled_tasks:
            context.cancelled_tasks.discard(task_id)
            outcomes[index] = Outcome(task_id=task_id, status="cancelled", started_at=started, finished_at=started)
            continue
        token = current_task_id.set(task_id)
        try:
            coro = shard.handle(task_of(envelope))
            try:
                yielded = coro.send(None)
            except StopIteration as done:
                outcomes[index] = _ended(context, task_id, "ok", done.value, None, started)
                continue
            except Exception as raised:  # noqa: BLE001 - every handler error becomes an outcome
                outcomes[index] = _ended(context, task_id, "error", None, describe_error(raised), started)
                continue
            running = asyncio.ensure_future(_resumed(coro, yielded))  # the task copies the context
        finally:
            current_task_id.reset(token)
        resident.running[task_id] = running
        pending.append((index, asyncio.ensure_future(_awaited(resident, context, task_id, running, started))))
    for index, future in pending:
        outcomes[index] = await future
    host._handled += len(envelopes) - ordinary
    return outcomes


async def _awaited(resident: Any, context: AgentContext, task_id: str, running: asyncio.Future[Any],
                   started: float) -> Outcome:
    try:
        value = await running
        status, error = "ok", None
    except asyncio.CancelledError:
        if not running.cancelled():
            raise
        value, status, error = None, "cancelled", None
    except Exception as raised:  # noqa: BLE001
        value, status, error = None, "error", describe_error(raised)
    finally:
        resident.running.pop(task_id, None)
        context.cancelled_tasks.discard(task_id)
    return _ended(context, task_id, status, value, error, started)


def _ended(context: AgentContext, task_id: str, status: str, value: Any, error: dict[str, Any] | None,
           started: float) -> Outcome:
    return Outcome(task_id=task_id, status=status, value=value, error=error, started_at=started,
                   finished_at=time.time(), usage=context.take_usage(task_id), state=context.take_state(task_id))
