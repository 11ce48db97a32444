"""The agent host actor: runs one agent (dedicated placement) or many (packed).

Each agent inside a host keeps actor semantics: its own instance and state, and
a mailbox served one task at a time in arrival order (an ``asyncio.Lock`` is
FIFO), unless its class declares itself ``concurrent``. Synchronous handlers run
on a worker thread, a whole batch per hop, so the event loop stays free for
cancellation and for health checks, which also have their own concurrency
group so that no handler can starve them.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import ray

from hive_ray._agent import Agent, AgentContext, current_task_id
from hive_ray._registry import materialize
from hive_ray._results import unwrap
from hive_ray._runtime._channel import serve_host
from hive_ray._task import Envelope, Outcome, Task

logger = logging.getLogger("hive_ray.host")

#: A synchronous handler whose every call so far took less than this runs on the
#: event loop instead of a worker thread (the hop costs about 0.1 ms).
QUICK_HANDLER_SECONDS = 0.0005


def describe_error(error: BaseException) -> dict[str, Any]:
    """A structured, picklable description of an exception raised by a handler."""
    cls = type(error)
    qualified = cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"
    return {
        "type": qualified,
        "message": str(error) or cls.__name__,
        "traceback": "".join(traceback.format_exception(cls, error, error.__traceback__))[-4000:],
    }


class _Resident:
    """One agent inside a host: its instance, mailbox and running tasks."""

    __slots__ = ("agent", "lock", "semaphore", "running", "is_async", "concurrency", "quick_sync")

    def __init__(self, agent: Agent, concurrency: int) -> None:
        self.agent = agent
        self.concurrency = concurrency
        self.lock = asyncio.Lock() if concurrency == 1 else None
        self.semaphore = asyncio.Semaphore(concurrency) if concurrency > 1 else None
        self.running: dict[str, asyncio.Task[Any]] = {}
        self.is_async = inspect.iscoroutinefunction(agent.handle)
        self.quick_sync = False  # proven quick after a first batch on a thread


class AgentHost:
    """A Ray actor hosting agents of one pool. Built by the placement layer."""

    def __init__(
        self,
        *,
        pool: str,
        agent_type: str,
        reference: str | bytes,
        orchestrator: Any,
        max_threads: int = 8,
    ) -> None:
        self._pool = pool
        self._agent_type = agent_type
        self._reference = reference
        self._orchestrator = orchestrator
        self._cls: type[Agent] | None = None
        self._residents: dict[str, _Resident] = {}
        self._executor = ThreadPoolExecutor(max_workers=max_threads, thread_name_prefix="hive-agent")
        self._started_at = time.time()
        self._handled = 0
        self._channel: asyncio.Task[None] | None = None

    # -- lifecycle --------------------------------------------------------------
    async def activate(self, agent_ids: list[str],
                       data_plane: tuple[tuple[str, int], str, str] | None = None) -> dict[str, Any]:
        """Create and set up agents; returns where this host runs.

        ``data_plane`` is ``(address, token, host_key)`` of the orchestrator's
        stream (see :mod:`hive_ray._runtime._channel`); without it, or when it
        cannot be reached, batches arrive as Ray calls instead.
        """
        if self._cls is None:
            self._cls = materialize(self._reference)
        if data_plane is not None and (self._channel is None or self._channel.done()):
            address, token, host_key = data_plane
            try:
                self._channel = await asyncio.wait_for(
                    serve_host(tuple(address), token, host_key, self.run_batch, self.cancel), 5)
            except (OSError, asyncio.TimeoutError) as error:
                logger.warning("data plane at %s unreachable (%s); using Ray calls", address, error)
        for agent_id in agent_ids:
            if agent_id in self._residents:
                continue
            context = AgentContext(
                agent_id=agent_id,
                pool=self._pool,
                agent_type=self._agent_type,
                submitter=self._delegate,
                progress_reporter=self._report_progress,
            )
            agent = self._cls(context)
            await _maybe_await(agent.setup())
            self._residents[agent_id] = _Resident(agent, self._cls.concurrency())
        return self.where()

    async def deactivate(self, agent_ids: list[str]) -> None:
        """Tear agents down (teardown hooks run) and forget them."""
        for agent_id in agent_ids:
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
        await self.deactivate(list(self._residents))
        if self._channel is not None:
            self._channel.cancel()
        self._executor.shutdown(wait=False, cancel_futures=True)

    def where(self) -> dict[str, Any]:
        context = ray.get_runtime_context()
        return {"node_id": context.get_node_id(), "pid": os.getpid(), "agents": list(self._residents)}

    # -- work -------------------------------------------------------------------
    async def run_batch(self, agent_id: str, envelopes: list[Envelope]) -> list[Outcome]:
        """Run envelopes for one agent, in order (or concurrently if it is concurrent)."""
        resident = self._residents.get(agent_id)
        if resident is None:
            error = {"type": "hive_ray.AgentNotHere", "message": f"agent {agent_id} is not active on this host"}
            return [Outcome(task_id=e.task_id, status="lost", error=error) for e in envelopes]
        if resident.lock is not None:
            async with resident.lock:
                if resident.is_async:
                    return [await self._run_async(resident, envelope) for envelope in envelopes]
                if resident.quick_sync:
                    # Handlers that have always been quick run on the loop: a thread hop
                    # would cost more than the handler. One slow call turns this off.
                    return self._run_sync_batch(resident, envelopes)
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
        token = current_task_id.set(envelope.task_id)
        try:
            running = asyncio.ensure_future(resident.agent.handle(_task_of(envelope)))
        finally:
            current_task_id.reset(token)
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
        return Outcome(task_id=envelope.task_id, status=status, value=value, error=error,
                       started_at=started, finished_at=time.time())

    def _run_sync_batch(self, resident: _Resident, envelopes: list[Envelope]) -> list[Outcome]:
        outcomes = []
        handle = resident.agent.handle
        cancelled = resident.agent.context.cancelled_tasks
        for envelope in envelopes:
            started = time.time()
            if envelope.task_id in cancelled:
                cancelled.discard(envelope.task_id)
                outcomes.append(Outcome(task_id=envelope.task_id, status="cancelled", started_at=started, finished_at=started))
                continue
            token = current_task_id.set(envelope.task_id)
            try:
                value = handle(_task_of(envelope))
                outcome = Outcome(task_id=envelope.task_id, status="ok", value=value,
                                  started_at=started, finished_at=time.time())
            except Exception as raised:  # noqa: BLE001 - every handler error becomes an outcome
                outcome = Outcome(task_id=envelope.task_id, status="error", error=describe_error(raised),
                                  started_at=started, finished_at=time.time())
            finally:
                current_task_id.reset(token)
                cancelled.discard(envelope.task_id)
            outcomes.append(outcome)
        self._handled += len(envelopes)
        slowest = max((o.finished_at - o.started_at for o in outcomes), default=0.0)
        resident.quick_sync = slowest < QUICK_HANDLER_SECONDS
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

    @ray.method(concurrency_group="health")
    async def health(self) -> dict[str, Any]:
        """Answered on its own concurrency group, so busy agents cannot starve it."""
        return {"pid": os.getpid(), "agents": len(self._residents), "handled": self._handled,
                "uptime_seconds": time.time() - self._started_at}

    # -- services given to agents -------------------------------------------------
    async def _delegate(self, template: dict[str, Any], payloads: list[Any]) -> list[Any]:
        task_ids = await self._orchestrator.submit_many.remote(template, payloads)
        answers = await self._orchestrator.wait_many.remote(task_ids, None)
        results = []
        for task_id, answer in zip(task_ids, answers, strict=True):
            results.append(unwrap(task_id, answer))
        return results

    def _report_progress(self, task_id: str, fraction: float, message: str | None) -> None:
        self._orchestrator.report_progress.remote(task_id, fraction, message)


def _task_of(envelope: Envelope) -> Task:
    return Task(task_id=envelope.task_id, payload=envelope.payload, attempt=envelope.attempt,
                deadline=envelope.deadline, metadata=envelope.metadata)


async def _maybe_await(value: Any) -> Any:
    if inspect.isawaitable(value):
        return await value
    return value


__all__ = ["AgentHost", "describe_error"]
