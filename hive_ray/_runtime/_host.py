"""The agent host actor: runs one agent (dedicated placement) or many (packed).

Each agent inside a host keeps actor semantics: its own instance and state, and
a mailbox served one task at a time in arrival order (an ``asyncio.Lock`` is
FIFO), unless its class declares itself ``concurrent``. Synchronous handlers
always run on worker threads, a whole batch per hop, so that a handler that
turns slow never holds up its siblings or the event loop (the hop costs about
0.1 ms per batch: measured in docs/ARCHITECTURE.md). Threads are made as
calls need them, up to :data:`SYNC_THREADS`, and reused.

Health checks answer on their own concurrency group, so that no handler can
starve them, and report how long ago the host's main event loop last ran (a
heartbeat): an async handler that blocks the loop shows up there, and the
orchestrator restarts a host whose loop stays blocked past the health timeout.

Results above ``max_result_bytes_in_memory`` stay here until the orchestrator
takes them into Ray's object store (:mod:`hive_ray._runtime._large_results`).

Hosts are detached actors: they outlive a crash of the orchestrator that
started them. A restarted orchestrator adopts them (:meth:`AgentHost.adopt`):
the agents keep their in-memory state, and what the host ran meanwhile is
handed over from its :class:`~hive_ray._runtime._host_ledger.OutcomeLedger`.
A host whose orchestrator is gone for good (dead and not restarting) stops
its agents and exits by itself (:meth:`AgentHost._watch_orchestrator`).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import os
import time
import traceback
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from types import MappingProxyType
from typing import Any

import ray

from hive_ray._agent import Agent, AgentContext, current_task_id
from hive_ray._gc_pauses import freeze_long_lived, gc_pauses
from hive_ray._registry import materialize
from hive_ray._results import describe_error, resolve_async, unwrap
from hive_ray._runtime._endpoint import Endpoint
from hive_ray._runtime._frames import MAX_FRAME_BYTES
from hive_ray._runtime._host_adoption import HostAdoption
from hive_ray._runtime._host_link import HostLink, connect_host
from hive_ray._runtime._host_streams import (
    PartMux,
    PartSender,
    delegated_parts,
    drain,
    is_streaming,
)
from hive_ray._runtime._host_virtual import (
    describe_identity,
    resident_agent,
    run_shard_batch,
    virtual_statistics,
)
from hive_ray._runtime._large_results import ResultStash
from hive_ray._task import Envelope, Outcome, task_of
from hive_ray._tracing import current_trace_context, end_handle_span, host_tracer
from hive_ray._virtual_shard import VirtualShard

logger = logging.getLogger("hive_ray.host")

#: Most worker threads a host makes for synchronous handlers. Threads are made only
#: when every existing one is busy, so a host has as many as it had calls in progress
#: at once (one per non-concurrent agent, ``max_concurrency`` per concurrent one).
SYNC_THREADS = 1024
#: How often the host's event loop proves it runs; health answers carry the silence.
LOOP_HEARTBEAT_SECONDS = 0.5
class _Resident:
    """One agent inside a host: its instance, mailbox and running tasks."""

    __slots__ = ("agent", "lock", "semaphore", "running", "is_async", "streams", "concurrency", "last_used",
                 "batches", "shard")

    def __init__(self, agent: Agent, concurrency: int) -> None:
        self.agent = agent
        self.concurrency = concurrency
        self.lock = asyncio.Lock() if concurrency == 1 else None
        self.semaphore = asyncio.Semaphore(concurrency) if concurrency > 1 else None
        self.running: dict[str, asyncio.Task[Any]] = {}
        self.streams = is_streaming(agent.handle)  # a generator: runs like async handlers (_host_streams.py)
        self.is_async = self.streams or inspect.iscoroutinefunction(agent.handle)
        self.last_used = time.monotonic()
        self.batches = 0  # batches in progress: a busy agent is never passivated
        self.shard = isinstance(agent, VirtualShard)  # a virtual pool's: its batches run inline


class AgentHost(HostAdoption):
    """A Ray actor hosting agents of one pool. Built by the placement layer."""

    def __init__(
        self,
        *,
        pool: str,
        agent_type: str,
        reference: str | bytes,
        orchestrator: Any,
        max_threads: int = SYNC_THREADS,
        passivate_after_seconds: float | None = None,
        orchestrator_name: str | None = None,
        namespace: str | None = None,
        orphan_exit_seconds: float | None = None,
        max_result_bytes: int = 64 * 1024,
        config: dict[str, Any] | None = None,
    ) -> None:
        self._pool = pool
        self._config = MappingProxyType(dict(config or {}))  # one for all its agents
        self._part_mux: PartMux | None = None  # streaming runs' parts, one call in flight
        self._agent_type = agent_type
        self._reference = reference
        self._orchestrator = orchestrator
        self._cls: type[Agent] | None = None
        self._residents: dict[str, _Resident] = {}
        self._executor = ThreadPoolExecutor(max_workers=max_threads, thread_name_prefix="hive-agent")
        self._started_at = time.time()
        self._handled = 0
        self._link: HostLink | None = None  # its data-plane stream, when connected
        self._link_error = "no data plane was offered"
        self._passivate_after = passivate_after_seconds
        self._passivated: dict[str, Any] = {}  # agent id -> what on_passivate saved
        self._sweeper: asyncio.Task[None] | None = None
        self._activations = 0
        self._tracer: Any = None  # hive_ray._tracing.Tracer when the orchestrator traces
        self._tracing_asked = False
        self._gc_pauses = gc_pauses()
        self._init_adoption(orchestrator_name, namespace, orphan_exit_seconds)
        self._results = ResultStash(max_result_bytes, MAX_FRAME_BYTES)
        self._heartbeat: asyncio.Task[None] | None = None
        self._loop_seen = time.monotonic()  # when the main event loop last ran (heartbeat)
        self._hooks_running = 0  # lifecycle hooks (setup) may block the loop: not a failure

    # -- lifecycle --------------------------------------------------------------
    async def activate(self, agent_ids: list[str], data_plane: Endpoint | None = None,
                       host_key: str = "") -> dict[str, Any]:
        """Create and set up agents; returns where this host runs and how its tasks travel.

        ``data_plane`` is the orchestrator's stream as chosen for this host's node (see
        :mod:`hive_ray._runtime._data_plane`), ``host_key`` the name it proves itself
        under. Without it, or when it cannot be reached or authenticated, batches
        arrive as Ray calls instead.
        """
        self._called()
        with self._activating():
            if self._cls is None:
                self._cls = materialize(self._reference)
            if not self._tracing_asked:
                self._tracing_asked = True
                self._tracer = await host_tracer(self._orchestrator)
            if data_plane is not None and (self._link is None or not self._link.open):
                await self._connect(data_plane, host_key)
            for agent_id in agent_ids:
                if agent_id not in self._residents:
                    await self._create(agent_id)
        self._start_heartbeat()
        if self._passivate_after is not None and self._sweeper is None:
            self._sweeper = asyncio.ensure_future(self._sweep())
        # The agents just built live as long as the host: keep them out of the garbage
        # collector's full passes, whose pauses otherwise grow with the number of agents
        # and show up in the tail latency of a host with a thousand of them.
        freeze_long_lived()
        return self.where()

    async def _connect(self, endpoint: Endpoint, host_key: str) -> None:
        try:
            self._link = await connect_host(endpoint, host_key, run_batch=self.run_batch, cancel=self.cancel)
        except Exception as error:  # noqa: BLE001 - unreachable, refused, TLS: Ray calls still work
            self._link = None
            self._link_error = f"{endpoint.address} unreachable: {type(error).__name__}: {error}"
            logger.warning("data plane at %s: %s; batches arrive as Ray calls", endpoint.address,
                           self._link_error)

    def _data_plane_status(self) -> dict[str, Any]:
        if self._link is not None:
            return self._link.status()
        return {"transport": "ray", "reason": self._link_error}

    async def _create(self, agent_id: str) -> _Resident:
        assert self._cls is not None
        context = AgentContext(
            agent_id=agent_id,
            pool=self._pool,
            agent_type=self._agent_type,
            submitter=self._delegate,
            streamer=self._delegate_stream,
            progress_reporter=self._report_progress,
            config=self._config,
            teller=self._tell,
            publisher=self._publish,
        )
        agent = resident_agent(self._cls, context, self._orchestrator)
        with self._hook_running():
            await _maybe_await(agent.setup())
        self._activations += 1
        resident = _Resident(agent, self._cls.concurrency())
        self._residents[agent_id] = resident
        return resident

    async def _reactivate(self, agent_id: str) -> _Resident:
        saved = self._passivated.pop(agent_id)
        resident = await self._create(agent_id)
        await _maybe_await(resident.agent.on_activate(saved))
        return resident

    async def _sweep(self) -> None:
        """Passivate agents idle for longer than the pool allows, to free their memory."""
        assert self._passivate_after is not None
        while True:
            await asyncio.sleep(max(0.05, self._passivate_after / 4))
            horizon = time.monotonic() - self._passivate_after
            for agent_id, resident in list(self._residents.items()):
                if resident.batches == 0 and not resident.running and resident.last_used < horizon:
                    await self._passivate(agent_id, resident)

    async def _passivate(self, agent_id: str, resident: _Resident) -> None:
        try:
            saved = await _maybe_await(resident.agent.on_passivate())
            await _maybe_await(resident.agent.teardown())
        except Exception:  # noqa: BLE001 - an agent that cannot be passivated stays active
            logger.exception("agent %s could not be passivated; it stays active", agent_id)
            resident.last_used = time.monotonic()
            return
        if self._residents.get(agent_id) is resident and resident.batches == 0:
            del self._residents[agent_id]
            self._passivated[agent_id] = saved

    async def deactivate(self, agent_ids: list[str]) -> None:
        """Tear agents down (teardown hooks run) and forget them."""
        self._ledger.contact()
        for agent_id in agent_ids:
            self._passivated.pop(agent_id, None)
            resident = self._residents.pop(agent_id, None)
            if resident is None:
                continue
            for running in resident.running.values():
                running.cancel()
            try:
                await _maybe_await(resident.agent.teardown())
            except Exception:  # noqa: BLE001 - a failing teardown must not stop the others
                traceback.print_exc()

    async def shutdown(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        self._stop_watching.set()
        await self.deactivate(list(self._residents) + list(self._passivated))
        if self._link is not None:
            self._link.close()
        self._executor.shutdown(wait=False, cancel_futures=True)
        if self._tracer is not None:
            await asyncio.to_thread(self._tracer.flush)  # no span lost when the host stops

    def where(self) -> dict[str, Any]:
        context = ray.get_runtime_context()
        return {"node_id": context.get_node_id(), "pid": os.getpid(), "agents": list(self._residents),
                "data_plane": self._data_plane_status()}

    # -- work -------------------------------------------------------------------
    async def run_batch(self, agent_id: str, envelopes: list[Envelope]) -> list[Outcome]:
        """Run envelopes for one agent, in order (or concurrently if it is concurrent).

        The ledger keeps the batch and its outcomes for an orchestrator that may
        die before they reach it (see :meth:`adopt`).
        """
        batch = self._ledger.begin(agent_id, envelopes)
        try:
            outcomes = await self._run_batch(agent_id, envelopes)
        except BaseException as error:
            self._ledger.fail(batch, error)
            raise
        self._ledger.end(batch, outcomes)
        return outcomes

    async def _run_batch(self, agent_id: str, envelopes: list[Envelope]) -> list[Outcome]:
        resident = self._residents.get(agent_id)
        if resident is None and agent_id in self._passivated:
            resident = await self._reactivate(agent_id)
        if resident is None:
            error = {"type": "hive_ray.AgentNotHere", "message": f"agent {agent_id} is not active on this host"}
            return [Outcome(task_id=e.task_id, status="lost", error=error) for e in envelopes]
        resident.batches += 1
        try:
            outcomes = await self._run_resident(resident, envelopes)
        finally:
            resident.batches -= 1
            resident.last_used = time.monotonic()
        return await self._results.prepare(outcomes)

    async def _run_resident(self, resident: _Resident, envelopes: list[Envelope]) -> list[Outcome]:
        if resident.shard:
            return await run_shard_batch(self, resident, envelopes)
        if resident.lock is not None:
            async with resident.lock:
                if resident.is_async:
                    return [await self._run_async(resident, envelope) for envelope in envelopes]
                return await asyncio.get_running_loop().run_in_executor(
                    self._executor, self._run_sync_batch, resident, envelopes
                )
        return list(await asyncio.gather(*(self._run_concurrent(resident, e) for e in envelopes)))

    async def _run_concurrent(self, resident: _Resident, envelope: Envelope) -> Outcome:
        assert resident.semaphore is not None
        async with resident.semaphore:
            if resident.is_async:
                return await self._run_async(resident, envelope)
            loop = asyncio.get_running_loop()
            [outcome] = await loop.run_in_executor(
                self._executor, self._run_sync_batch, resident, [envelope]
            )
            return outcome

    async def _run_async(self, resident: _Resident, envelope: Envelope) -> Outcome:
        started = time.time()
        if envelope.task_id in resident.agent.context.cancelled_tasks:
            resident.agent.context.cancelled_tasks.discard(envelope.task_id)
            return Outcome(task_id=envelope.task_id, status="cancelled", started_at=started, finished_at=started)
        span = None if envelope.trace_context is None or self._tracer is None else \
            self._tracer.start_handle_span(self._pool, self._agent_type, envelope)
        token = current_task_id.set(envelope.task_id)
        # Sub-tasks the handler delegates become children of its span (see _delegate).
        trace_token = None if span is None else current_trace_context.set(span.context())
        try:
            produced = resident.agent.handle(task_of(envelope))
            if resident.streams:
                if self._part_mux is None:
                    self._part_mux = PartMux(self._orchestrator, lambda: self._link)
                sender = PartSender(self._part_mux, envelope.task_id, envelope.agent_id, envelope.attempt)
                produced = drain(produced, sender, self._executor)
            running = asyncio.ensure_future(produced)
        finally:
            current_task_id.reset(token)
            if trace_token is not None:
                current_trace_context.reset(trace_token)
        resident.running[envelope.task_id] = running
        try:
            if envelope.deadline is not None:
                value = await asyncio.wait_for(running, max(0.0, envelope.deadline - started))
            else:
                value = await running
            status, error = "ok", None
        except asyncio.TimeoutError:
            value, status = None, "timed_out"
            error = {"type": "TaskTimeoutError",
                     "message": "the task did not finish within its timeout; its handler was cancelled"}
        except asyncio.CancelledError:
            if not running.cancelled():
                raise
            value, status, error = None, "cancelled", None
        except Exception as raised:  # noqa: BLE001 - every handler error becomes an outcome
            value, status, error = None, "error", describe_error(raised)
        finally:
            resident.running.pop(envelope.task_id, None)
            resident.agent.context.cancelled_tasks.discard(envelope.task_id)
        self._handled += 1
        if span is not None:
            end_handle_span(span, status, error)
        context = resident.agent.context
        return Outcome(task_id=envelope.task_id, status=status, value=value, error=error,
                       started_at=started, finished_at=time.time(), usage=context.take_usage(envelope.task_id),
                       state=context.take_state(envelope.task_id))

    def _run_sync_batch(self, resident: _Resident, envelopes: list[Envelope]) -> list[Outcome]:
        outcomes = []
        handle = resident.agent.handle
        context = resident.agent.context
        cancelled = context.cancelled_tasks
        tracer = self._tracer
        for envelope in envelopes:
            started = time.time()
            if envelope.task_id in cancelled:
                cancelled.discard(envelope.task_id)
                outcomes.append(Outcome(task_id=envelope.task_id, status="cancelled", started_at=started, finished_at=started))
                continue
            span = None if envelope.trace_context is None or tracer is None else \
                tracer.start_handle_span(self._pool, self._agent_type, envelope)
            token = current_task_id.set(envelope.task_id)
            try:
                value = handle(task_of(envelope))
                outcome = Outcome(task_id=envelope.task_id, status="ok", value=value,
                                  started_at=started, finished_at=time.time(),
                                  usage=context.take_usage(envelope.task_id))
            except Exception as raised:  # noqa: BLE001 - every handler error becomes an outcome
                outcome = Outcome(task_id=envelope.task_id, status="error", error=describe_error(raised),
                                  started_at=started, finished_at=time.time(),
                                  usage=context.take_usage(envelope.task_id))
            finally:
                current_task_id.reset(token)
                cancelled.discard(envelope.task_id)
            if span is not None:
                end_handle_span(span, outcome.status, outcome.error)
            outcomes.append(outcome)
        self._handled += len(envelopes)
        return outcomes

    async def cancel(self, agent_id: str, task_id: str) -> bool:
        """Cancel a task waiting in or running on ``agent_id``; sync handlers see a flag."""
        resident = self._residents.get(agent_id)
        if resident is None:
            return False
        running = resident.running.get(task_id)
        if running is not None:
            running.cancel()
            return True
        resident.agent.context.cancelled_tasks.add(task_id)
        return True

    @ray.method(concurrency_group="results", num_returns=2)
    async def take_result(self, key: str) -> tuple[int, Any]:
        """``(size, value)`` of a result kept here; its return value lands in the object store,
        owned by the caller (the orchestrator), so it outlives this host."""
        return self._results.take(key)

    @ray.method(concurrency_group="health")
    async def health(self) -> dict[str, Any]:
        """Answered on its own concurrency group, so busy agents cannot starve it.

        ``loop_silent_seconds`` is how long the main event loop has gone without
        running beyond its heartbeat interval (None before the first activation):
        the orchestrator fails a host whose loop stays silent past its health timeout.
        """
        self._ledger.last_contact = time.monotonic()
        return {"pid": os.getpid(), "active": len(self._residents), "passivated": len(self._passivated),
                "activations": self._activations, "handled": self._handled,
                "uptime_seconds": time.time() - self._started_at, "gc": self._gc_pauses.statistics(),
                "loop_silent_seconds": self._loop_silence(), "virtual": virtual_statistics(self._residents)}

    @ray.method(concurrency_group="health")
    async def describe_identity(self, agent_id: str, key: str) -> dict[str, Any] | None:
        """The activation of virtual agent ``key`` on shard ``agent_id``, or None if not active."""
        return describe_identity(self._residents, agent_id, key)

    def _start_heartbeat(self) -> None:
        if self._heartbeat is None:
            self._heartbeat = asyncio.ensure_future(self._beat())

    async def _beat(self) -> None:
        while True:
            self._loop_seen = time.monotonic()
            await asyncio.sleep(LOOP_HEARTBEAT_SECONDS)

    def _loop_silence(self) -> float | None:
        if self._heartbeat is None or self._hooks_running:
            return None
        return max(0.0, time.monotonic() - self._loop_seen - LOOP_HEARTBEAT_SECONDS)

    @contextlib.contextmanager
    def _hook_running(self) -> Iterator[None]:
        """A lifecycle hook (a model loading in ``setup``) may hold the loop: not a failure."""
        self._hooks_running += 1
        try:
            yield
        finally:
            self._hooks_running -= 1
            self._loop_seen = time.monotonic()  # the loop runs again: this is it

    # -- services given to agents -------------------------------------------------
    async def _delegate(self, template: dict[str, Any], payloads: list[Any]) -> list[Any]:
        trace_context = current_trace_context.get()
        if trace_context is not None:
            template = {**template, "trace_context": trace_context}
        task_ids = await self._orchestrator.submit_many.remote(template, payloads)
        answers = await self._orchestrator.wait_many.remote(task_ids, None)
        results = []
        for task_id, answer in zip(task_ids, answers, strict=True):
            results.append(await resolve_async(task_id, unwrap(task_id, answer), self._fetch_reference))
        return results

    async def _tell(self, template: dict[str, Any], payloads: list[Any]) -> list[str]:
        trace_context = current_trace_context.get()
        if trace_context is not None:
            template = {**template, "trace_context": trace_context}
        return await self._orchestrator.submit_many.remote(template, payloads)

    async def _publish(self, topic: str, message: Any, source: str | None, message_id: str | None) -> Any:
        return await self._orchestrator.publish.remote(topic, message, source, message_id,
                                                       current_trace_context.get())

    def _delegate_stream(self, template: dict[str, Any], payload: Any) -> Any:
        trace_context = current_trace_context.get()
        if trace_context is not None:
            template = {**template, "trace_context": trace_context}
        return delegated_parts(self._orchestrator, template, payload, self._fetch_reference)

    async def _fetch_reference(self, task_id: str) -> list[Any]:
        return await self._orchestrator.fetch_result.remote(task_id)

    def _report_progress(self, task_id: str, fraction: float, message: str | None) -> None:
        self._orchestrator.report_progress.remote(task_id, fraction, message)


async def _maybe_await(value: Any) -> Any:
    if inspect.isawaitable(value):
        return await value
    return value


__all__ = ["AgentHost"]
