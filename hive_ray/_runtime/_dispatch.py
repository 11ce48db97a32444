"""Accepting tasks and dispatching them to agents (cancellation and timeouts: _endings.py).

A mixin of :class:`~hive_ray._runtime._orchestrator.Orchestrator`. A task is
routed to a pool (:meth:`Dispatch._route`), checked against the pool's queue
bound, recorded in the task store and the journal (:meth:`Dispatch._accept`),
then handed to agents in batches by :meth:`Dispatch._pump`. Outcomes come back
through :meth:`Dispatch._dispatch` and are settled exactly once.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any

from hive_ray._errors import (
    ConfigurationError,
    HiveError,
    JournalError,
    NoRouteError,
    TaskNotFoundError,
)
from hive_ray._results import PENDING, StoredResult
from hive_ray._runtime._contracts import AgentLost
from hive_ray._runtime._state import SharedState
from hive_ray._task import Envelope, Outcome, TaskEntry, TaskState, check_transition, new_task_ids
from hive_ray._usage import UsageLine, task_usage
from hive_ray._virtual import KEY_FIELD, scoped_message_id

if TYPE_CHECKING:
    from hive_ray._runtime._pools import Pool

logger = logging.getLogger("hive_ray.orchestrator")


class Dispatch(SharedState):
    """Accept, route, dispatch and settle tasks."""

    # Shared state: see _state.py. What only this part uses:
    _deadlines: list[tuple[float, int, str]]
    _deadline_sequence: itertools.count
    _waiters: dict[str, list[asyncio.Future[Any]]]
    _idempotency: dict[tuple[str, str], str]
    _dead_letters: OrderedDict[str, str]

    async def run(self, template: dict[str, Any], payload: Any = None, timeout: float | None = None,
                  task_id: str | None = None) -> tuple[str, tuple[str, Any, Any]]:
        """Accept one task and answer once it ended: one call instead of submit + wait.

        Returns ``(task_id, (state, result, error))``; the state is ``pending`` if
        ``timeout`` ran out first (the task keeps running).
        """
        ids, answers = await self.run_many(template, [payload], timeout, [task_id] if task_id else None)
        return ids[0], answers[0]

    async def run_many(self, template: dict[str, Any], payloads: list[Any], timeout: float | None = None,
                       task_ids: list[str] | None = None) -> tuple[list[str], list[tuple[str, Any, Any]]]:
        """Accept a batch and answer once every task in it ended: what ``map`` sends per chunk.

        The waits are registered as the tasks are accepted, so no answer is ever
        looked up after the task has left the in-memory retention.
        """
        await self._ensure_started()
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[Any]] = []

        def register_waits(ids: list[str]) -> None:
            # Runs inside the accept, before anything can yield: no task can end (and
            # leave the in-memory retention) before its waiter exists.
            for task_id in ids:
                future = loop.create_future()
                entry = self._tasks.get(task_id) or self._from_journal(task_id)
                if entry is None:
                    future.set_exception(TaskNotFoundError(task_id=task_id))
                elif entry.state.terminal:
                    future.set_result((entry.state.value, entry.result, entry.error))
                else:
                    self._waiters.setdefault(task_id, []).append(future)
                futures.append(future)

        ids, _ = await self._accept_durably(template, payloads, task_ids, register_waits)
        try:
            done = await asyncio.wait_for(asyncio.gather(*futures), timeout) if timeout else await asyncio.gather(*futures)
        except asyncio.TimeoutError:
            done = [f.result() if f.done() and not f.cancelled() else (PENDING, None, None) for f in futures]
        finally:
            self._forget_waits(ids, futures)
        return ids, list(done)

    def _forget_waits(self, ids: list[str], futures: list[asyncio.Future[Any]]) -> None:
        for task_id, future in zip(ids, futures, strict=False):
            waiters = self._waiters.get(task_id)
            if waiters is not None and future in waiters:
                waiters.remove(future)
                if not waiters:
                    del self._waiters[task_id]

    async def submit(self, template: dict[str, Any], payload: Any = None,
                     task_id: str | None = None) -> dict[str, Any]:
        """Accept one task; returns ``{"task_id", "state", "pool"}``."""
        [task_id] = await self.submit_many(template, [payload], [task_id] if task_id else None)
        entry = self._tasks.get(task_id) or self._entry(task_id)
        return {"task_id": task_id, "state": entry.state.value, "pool": entry.pool}

    async def submit_many(self, template: dict[str, Any], payloads: list[Any],
                          task_ids: list[str] | None = None) -> list[str]:
        """Accept tasks that share everything but their payload; durable when this returns."""
        await self._ensure_started()
        ids, _ = await self._accept_durably(template, payloads, task_ids)
        return ids

    async def _accept_durably(self, template: dict[str, Any], payloads: list[Any],
                              task_ids: list[str] | None,
                              on_accepted: Callable[[list[str]], None] | None = None) -> tuple[list[str], bool]:
        """Accept tasks, make the accept durable, and only then queue them for dispatch.

        Nothing runs before its accept is committed: if the commit fails, the
        tasks are withdrawn (never dispatched, never recovered) and the caller
        gets the :class:`~hive_ray._errors.JournalError`, so a retry cannot run
        a task twice. Returns ``(ids, fresh)``; ``fresh`` is False when an
        idempotency key found an earlier task.
        """
        try:
            pool, ids, entries = self._accept(template, payloads, task_ids)
        except HiveError as error:
            self._fail_early_waiters(task_ids or (), error)
            raise
        if on_accepted is not None:
            on_accepted(ids)
        if not entries:
            return ids, False
        if self._journal is not None:
            try:
                accepted = self._journal.accept_many(entries)  # buffered now, committed soon
            except HiveError as error:  # JournalError: a payload that cannot be written
                self._settle_accept(pool, entries, error)
                raise
            commit = asyncio.ensure_future(accepted)
            try:
                await asyncio.shield(commit)
            except asyncio.CancelledError:
                # The caller went away; the commit goes on and decides the tasks' fate.
                commit.add_done_callback(lambda done: self._settle_accept(pool, entries, _failure_of(done)))
                raise
            except Exception as error:  # noqa: BLE001 - JournalError: the accept did not happen
                self._settle_accept(pool, entries, error)
                raise
        self._settle_accept(pool, entries, None)
        return ids, True

    def _settle_accept(self, pool: Pool, entries: list[TaskEntry], error: BaseException | None) -> None:
        """Queue accepted tasks once durable, or withdraw them if their commit failed."""
        scheduler = pool.scheduler
        if error is not None:
            logger.error("accept of %d task(s) in pool %s was not committed: %s", len(entries), pool.name, error)
            failure = error if isinstance(error, HiveError) else JournalError(
                f"the journal could not commit {len(entries)} accepted task(s): {error}")
            for entry in entries:
                if self._tasks.get(entry.task_id) is entry:
                    del self._tasks[entry.task_id]
                self._streams.pop(entry.task_id, None)
                if entry.idempotency_key is not None:
                    self._idempotency.pop((entry.pool, entry.idempotency_key), None)
                for waiter in self._waiters.pop(entry.task_id, ()):
                    if not waiter.done():
                        waiter.set_exception(failure)
            scheduler.unreserve(len(entries))
            self._counters["submitted"] -= len(entries)
            return
        admitted = 0
        live = self._pools.get(pool.name) is pool
        for entry in entries:
            if live and entry.state == TaskState.QUEUED:
                scheduler.admit(entry)
                admitted += 1
                self._emit(entry, "queued")
        scheduler.unreserve(len(entries) - admitted)  # ended (cancelled, timed out) meanwhile
        self._signal_events()
        if admitted:
            # Dispatch right after this call has answered, not before.
            asyncio.get_running_loop().call_soon(self._pump, pool)

    def _fail_early_waiters(self, task_ids: Iterable[str], error: HiveError) -> None:
        """A client that sent ``wait`` beside its ``submit`` hears why the submit failed."""
        for task_id in task_ids:
            if task_id not in self._tasks:
                for waiter in self._waiters.pop(task_id, ()):
                    if not waiter.done():
                        waiter.set_exception(error)

    def _accept(self, template: dict[str, Any], payloads: list[Any],
                task_ids: list[str] | None) -> tuple[Pool, list[str], list[TaskEntry]]:
        """Route, check the bound and create the records; journal and queue nothing yet.

        Returns the pool, the ids and the new entries (none when an idempotency
        key matched an earlier task: its id is returned instead).
        """
        pool = self._route(template)
        key = template.get("idempotency_key")
        if key is not None and pool.info.virtual and template.get("affinity_key") is not None:
            key = scoped_message_id(template["affinity_key"], key)  # a message id is per agent
        if key is not None and len(payloads) == 1:
            existing = self._idempotency.get((pool.name, key))
            if existing is None and self._journal is not None:
                found = self._journal.find_idempotent(pool.name, key)
                existing = found.task_id if found is not None else None
            if existing is not None:
                return pool, [existing], []
        ids = task_ids or new_task_ids(len(payloads))
        if len(ids) != len(payloads):
            raise ConfigurationError("submit_many needs one task id per payload when ids are given")
        tasks = self._tasks
        taken = next((task_id for task_id in ids if task_id in tasks), None)
        if taken is not None or len(set(ids)) != len(ids):
            raise ConfigurationError(f"task id {taken or 'given twice'!r} is already in use; "
                                     "let hive-ray choose ids")
        metadata = dict(template.get("metadata") or {})
        keys = self._message_keys(pool, template, len(payloads))  # one key per task, or None
        pool.scheduler.reserve(len(payloads))  # raises OverloadedError when full
        now = time.time()
        priority = int(template.get("priority") or 0)
        timeout = template.get("timeout")
        max_attempts = template.get("max_attempts") or pool.retry.max_attempts
        affinity = template.get("affinity_key")
        trace_context = template.get("trace_context")
        agent_type = pool.spec["agent_type"]
        entries = []
        for index, (task_id, payload) in enumerate(zip(ids, payloads, strict=True)):
            if keys is not None:
                affinity = keys[index]
                if pool.info.virtual:  # the shard reads its agent's key from the metadata
                    metadata = {**metadata, KEY_FIELD: affinity}
            entry = TaskEntry(task_id=task_id, pool=pool.name, agent_type=agent_type, payload=payload,
                              priority=priority, timeout=timeout, affinity_key=affinity,
                              idempotency_key=key, metadata=metadata, max_attempts=max_attempts,
                              trace_context=trace_context, created_at=now, sequence=next(_ARRIVALS))
            tasks[task_id] = entry
            entries.append(entry)
            if timeout is not None:
                heapq.heappush(self._deadlines, (now + timeout, next(self._deadline_sequence), task_id))
        if self._task_sampling is not None:  # tracing on: each task outside a sampled trace decides
            self._task_sampling.sample(entries, trace_context)
        if key is not None:
            self._idempotency[(pool.name, key)] = ids[0]
        if template.get("stream"):
            self._expect_stream_readers(ids)  # see _streams.py
        if timeout is not None and self._wakeup is not None:
            self._wakeup.set()
        self._counters["submitted"] += len(ids)
        return pool, ids, entries

    def _route(self, template: dict[str, Any]) -> Pool:
        if template.get("pool"):
            return self._pool(template["pool"])
        agent_type, capability = template.get("agent_type"), template.get("capability")
        if agent_type:
            candidates = [p for p in self._pools.values() if p.spec["agent_type"] == agent_type]
            if not candidates:
                running = sorted({p.spec["agent_type"] for p in self._pools.values()})
                raise NoRouteError(
                    f"no pool runs agent type {agent_type!r}; running types: {', '.join(running) or '(none)'}. "
                    f"Spawn one first: hive.spawn({agent_type!r}) or `hive spawn {agent_type}`."
                )
        elif capability:
            candidates = [p for p in self._pools.values() if capability in p.info.capabilities]
            if not candidates:
                offered = sorted({c for p in self._pools.values() for c in p.info.capabilities})
                raise NoRouteError(
                    f"no pool offers capability {capability!r}; offered: {', '.join(offered) or '(none)'}"
                )
        else:
            raise ConfigurationError("a task needs one of agent_type, capability or pool")
        if len(candidates) == 1:
            return candidates[0]
        # Several pools qualify: the one with the least work per agent.
        return min(candidates, key=lambda p: (len(p.scheduler) + p.scheduler.statistics().inflight)
                   / max(1, len(p.agents)))

    async def resubmit(self, task_id: str) -> dict[str, Any]:
        """Submit a dead-lettered (or any ended) task again, as a new task."""
        entry = self._entry(task_id)
        template = {"pool": entry.pool, "priority": entry.priority, "timeout": entry.timeout,
                    "affinity_key": entry.affinity_key, "max_attempts": entry.max_attempts,
                    "metadata": {**entry.metadata, "resubmitted_from": task_id}}
        accepted = await self.submit(template, entry.payload)
        if self._dead_letters.pop(task_id, None) is not None and self._journal is not None:
            self._journal.forget_dead_letter(task_id)
        return accepted

    def _pump(self, pool: Pool) -> None:
        if self._pools.get(pool.name) is not pool:
            return
        isolation = pool.isolation
        if isolation.reserved is not None or isolation.waiting():
            self._isolate(pool)  # suspects of a host crash run alone (see _isolation.py)
        for agent_id, entries in pool.scheduler.assign():
            self._start_batch(pool, agent_id, entries)
        next_retry = pool.scheduler.next_retry_at()
        if next_retry is not None and self._wakeup is not None:
            self._wakeup.set()

    def _start_batch(self, pool: Pool, agent_id: str, entries: list[TaskEntry]) -> None:
        """Mark ``entries`` running on ``agent_id`` and send them as one batch."""
        record = pool.agents.get(agent_id)
        now = time.time()
        envelopes = []
        # Sampled tasks get queue spans and the context of their batch's dispatch span.
        traced = None if self._tracer is None else self._tracer.start_dispatch(pool.name, agent_id, entries, now)
        agent_type = pool.spec["agent_type"] if pool.info.virtual else None
        for entry in entries:
            check_transition(entry.state, TaskState.RUNNING)
            entry.state, entry.started_at, entry.agent_id = TaskState.RUNNING, now, agent_id
            entry.attempts += 1
            pool.queue_waits.append(now - entry.created_at)
            if record is not None:
                record.inflight.add(entry.task_id)
            envelopes.append(Envelope(task_id=entry.task_id, agent_id=agent_id, payload=entry.payload,
                                      attempt=entry.attempts, deadline=entry.deadline(),
                                      metadata=entry.metadata if agent_type is None else
                                      self._with_expected_state(agent_type, entry.metadata),
                                      trace_context=entry.trace_context if traced is None
                                      else traced.get(id(entry.trace_context))))
            self._emit(entry, "running", agent_id=agent_id)
        incarnation = record.restarts if record is not None else -1
        self._spawn_background(self._dispatch(pool, agent_id, entries, envelopes, incarnation))

    async def _dispatch(self, pool: Pool, agent_id: str, entries: list[TaskEntry],
                        envelopes: list[Envelope], incarnation: int = -1,
                        reclaimed: Awaitable[list[Outcome]] | None = None) -> None:
        """Run a batch and settle its outcomes; ``reclaimed`` awaits those of a batch an
        adopted host was already running (see _recovery.py) instead of sending it."""
        try:
            outcomes = await (reclaimed if reclaimed is not None else self._placement.run_batch(agent_id, envelopes))
        except AgentLost as lost:
            if self._tracer is not None:
                self._tracer.end_dispatch(envelopes, f"agent lost: {lost.cause}")
            if self._pools.get(pool.name) is not pool:
                self._release_batch(pool, agent_id, entries)
                return  # the pool was stopped (or the orchestrator is shutting down): nothing to redo
            record = pool.agents.get(agent_id)
            if record is not None and record.restarts != incarnation:
                return  # a batch of an incarnation restarted since: that failure was handled then
            # Everything the host held is judged together (who pays for the crash), before
            # anything can yield: see _isolation.py.
            failed, decision = self._host_lost(pool, self._placement.siblings(agent_id), lost.cause, lost.detail)
            self._release_batch(pool, agent_id, entries)
            for entry in entries:  # its agent was not ready (stopping, or already failed)
                if entry.state == TaskState.RUNNING and entry.agent_id == agent_id:
                    self._redeliver(pool, entry, f"agent {agent_id} lost ({lost.cause})", count_attempt=False)
            await self._restart_hosts(pool, failed, decision, lost.cause, lost.detail)
            return
        except Exception as error:  # noqa: BLE001 - e.g. a batch the host could not answer
            logger.exception("batch on %s failed", agent_id)
            outcomes = [Outcome(task_id=e.task_id, status="error",
                                error={"type": type(error).__name__, "message": str(error)[:2000]})
                        for e in envelopes]
        if self._tracer is not None:
            self._tracer.end_dispatch(envelopes)
        record = pool.agents.get(agent_id)
        isolation = pool.isolation if pool.isolation.active else None
        by_id = {entry.task_id: entry for entry in entries}
        for outcome in outcomes:
            entry = by_id.get(outcome.task_id)
            if entry is None:
                continue
            if record is not None:
                record.inflight.discard(entry.task_id)
                record.tasks_done += 1
            if isolation is not None:
                isolation.cleared(entry.task_id)  # it ran without crashing its host
            if outcome.finished_at:
                pool.scheduler.observe_handle_seconds(max(0.0, outcome.finished_at - outcome.started_at))
            if outcome.usage:
                self._account_usage(entry, outcome.usage)
            if outcome.state is not None and not self._settle_state(pool, entry, outcome.state) \
                    and entry.state == TaskState.RUNNING and entry.agent_id == agent_id:
                self._redeliver(pool, entry, "its agent's state was stale: it runs again on the current one")
                continue
            if entry.state != TaskState.RUNNING or entry.agent_id != agent_id:
                # It already ended (cancelled, timed out) or was delivered again elsewhere.
                self._counters["late_results"] += 1
                if outcome.status == "ok" and entry.state == TaskState.SUCCEEDED:
                    self._counters["duplicate_executions"] += 1
                self._discard_stored(agent_id, outcome)
                continue
            if type(outcome.value) is StoredResult and outcome.status == "ok":
                # Too large for the stream: settled once the value is safe in the object store.
                self._spawn_background(self._settle_stored(pool, agent_id, entry, outcome))
                continue
            self._settle(pool, entry, outcome)
        pool.scheduler.release(agent_id, len(entries))
        self._signal_events()
        self._pump(pool)

    def _settle(self, pool: Pool, entry: TaskEntry, outcome: Outcome) -> None:
        if outcome.status == "ok":
            self._end(entry, TaskState.SUCCEEDED, result=outcome.value)
        elif outcome.status == "cancelled":
            self._end(entry, TaskState.CANCELLED)
        elif outcome.status == "timed_out":
            self._end(entry, TaskState.TIMED_OUT, error=outcome.error)
        elif outcome.status == "lost":
            self._redeliver(pool, entry, "agent not active on its host")
        else:
            error = outcome.error or {}
            retry_exceptions = pool.spec["retry"]["retry_exceptions"]
            decision = pool.retry.decide(entry.attempts, str(error.get("type", "")), self._rng)
            if retry_exceptions and decision.retry and entry.attempts < (entry.max_attempts or 1):
                entry.error = error
                self._counters["retried"] += 1
                self._requeue(pool, entry, decision.delay_seconds, f"retry after {error.get('type')}")
            else:
                self._end(entry, TaskState.FAILED, error=error,
                          dead_letter=retry_exceptions and entry.attempts >= (entry.max_attempts or 1))

    def _account_usage(self, entry: TaskEntry, lines: list[UsageLine]) -> None:
        """Add a run's model calls to the task's record and the totals. Every attempt's count
        (a retried call was paid for too), even one that ends after its task was cancelled."""
        try:
            entry.usage = task_usage(entry.usage, lines, self._usage.prices)
        except (TypeError, ValueError):  # not lines a host of this hive-ray sends
            logger.warning("task %s: usage %r is not (endpoint, model, prompt, completion, requests) "
                           "lines; not counted", entry.task_id, lines[:3])
            return
        self._usage.add(entry.pool, lines)
        if entry.state.terminal and self._journal is not None:  # its ending is journaled already
            self._journal.record(entry, dead_letter=entry.metadata.get("dead_letter") == "true")

    def _release_batch(self, pool: Pool, agent_id: str, entries: list[TaskEntry]) -> None:
        record = pool.agents.get(agent_id)
        for entry in entries:
            if record is not None:
                record.inflight.discard(entry.task_id)
        pool.scheduler.release(agent_id, len(entries))

    def _redeliver(self, pool: Pool, entry: TaskEntry, reason: str, *, count_attempt: bool = True) -> None:
        """A running task's agent went away: queue it again, or dead-letter it."""
        if not count_attempt:
            entry.attempts = max(0, entry.attempts - 1)
        if entry.attempts >= (entry.max_attempts or 1):
            pool.isolation.forget(entry.task_id)
            self._end(entry, TaskState.FAILED, dead_letter=True, error={
                "type": "AgentLost", "message": f"{reason}; gave up after {entry.attempts} attempt(s)"})
            return
        self._counters["redelivered"] += 1
        # An attempt that does not count was not the task's doing: no backoff either.
        delay = pool.retry.decide(entry.attempts, "AgentLost", self._rng).delay_seconds if count_attempt else 0.0
        self._requeue(pool, entry, delay, reason)

    def _requeue(self, pool: Pool, entry: TaskEntry, delay: float, reason: str) -> None:
        if pool.info.virtual:
            delay = 0.0  # a virtual agent handles its messages in order: a retry goes first, now
        check_transition(entry.state, TaskState.QUEUED)
        entry.state, entry.agent_id = TaskState.QUEUED, None
        if pool.isolation.is_suspect(entry.task_id):
            # Suspects wait for an isolated host, not in the queue; the host's restart
            # (with the pool's backoff) paces them, so no retry delay applies.
            pool.isolation.push(entry)
            self._emit(entry, "queued", message=f"{reason}; it runs alone until cleared")
            return
        entry.not_before = time.monotonic() + delay
        pool.scheduler.requeue(entry)
        self._emit(entry, "queued", message=reason)
        if self._wakeup is not None:
            self._wakeup.set()

    async def admission(self, template: dict[str, Any]) -> dict[str, Any]:
        """Where ``template``'s tasks would go and how much that pool admits: for ``map``'s window."""
        await self._ensure_started()
        pool = self._route(template)
        stats = pool.scheduler.statistics()
        return {"pool": pool.name, "max_queue": pool.scheduler.max_queue, "backlog": pool.scheduler.backlog(),
                "concurrency": pool.info.concurrency * max(1, stats.agents)}

#: The order tasks were accepted in (a chunk shares its created_at): re-deliveries keep it.
_ARRIVALS = itertools.count()


def _failure_of(commit: asyncio.Future[Any]) -> BaseException | None:
    """Why a journal commit did not make its tasks durable, or None if it did."""
    if commit.cancelled():
        return JournalError("the journal commit was cancelled (the orchestrator is stopping)")
    return commit.exception()


__all__ = ["Dispatch"]
