"""The orchestrator actor: a thin shell over its parts.

One async Ray actor, named ``orchestrator`` in the ``hive`` namespace, so that
every driver (a notebook kernel, the CLI, a Serve replica) finds the same one.
It runs on one event loop, so its state needs no locks; everything slow
(agent calls, journal commits, restarts) is awaited, never blocked on.

Its responsibilities live in their own modules, one each, combined here:

==========================  ==============================================================
part (module)               responsibility
==========================  ==============================================================
``_transport.py``           the data plane's start-up; calls arriving over it
``_pools.py``               pools: create, scale, stop, autoscale, describe
``_dispatch.py``            accept (route, queue bound, journal), dispatch, settle, usage
``_endings.py``             cancellation, timeouts, and waking pools whose retries are due
``_host_supervision.py``    health checks, failed hosts, who pays for a crash, restarts
``_large_results.py``       results too large for the stream: kept in the object store
``_task_store.py``          task records, endings, retention, waiters, events, dead letters
``_streams.py``             streaming tasks: parts from generators to their consumers
``_agent_states.py``        virtual agents: messages by key, their states and versions
``_topics.py``              topics: publish to subscribed agents, subscribe, follow
``_reminders.py``           virtual agents' durable reminders: kept, journaled, sent when due
``_recovery.py``            the journal: open, recover after a restart, prune
==========================  ==============================================================

The state they share is created in :meth:`Orchestrator.__init__` below, with
the part that owns each field named beside it. Clients call the methods named
in :mod:`hive_ray._operations`.

Delivery is at-least-once: a task running on an agent that dies is queued
again (up to its pool's ``retry.max_attempts``), and its result is recorded
exactly once (a late duplicate is counted, not recorded). Accepted tasks are
in the journal before ``submit`` answers. Host actors are detached, so they
outlive an orchestrator crash: a restarted orchestrator answers at once, adopts
the hosts (their agents keep their state, the tasks they run finish there)
and re-queues every other task that had not ended (see ``_recovery.py``).

The class runs without Ray in unit tests: give it a fake ``placement``.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from collections import OrderedDict, deque
from typing import Any

from hive_ray._gc_pauses import freeze_long_lived, gc_pauses
from hive_ray._runtime._agent_states import AgentStates
from hive_ray._runtime._dispatch import Dispatch
from hive_ray._runtime._endings import Endings
from hive_ray._runtime._host_supervision import HostSupervision
from hive_ray._runtime._large_results import LargeResults
from hive_ray._runtime._pools import AgentRecord, Pool, PoolManager
from hive_ray._runtime._recovery import Recovery
from hive_ray._runtime._reminders import Reminders
from hive_ray._runtime._streams import Streams
from hive_ray._runtime._task_store import DEAD_LETTER_LIMIT, TaskStore
from hive_ray._runtime._topics import Topics
from hive_ray._runtime._transport import Transport
from hive_ray._settings import Settings
from hive_ray._task import TaskEntry
from hive_ray._usage import Price, UsageTotals


class Orchestrator(Transport, Recovery, PoolManager, Dispatch, Endings, HostSupervision, LargeResults, Streams,
                   AgentStates, Topics, Reminders, TaskStore):
    """Owns pools of agents and every task's record; see the module docstring."""

    def __init__(self, settings: dict[str, Any] | None = None, placement: Any = None) -> None:
        self.settings = Settings(**(settings or {}))
        self._placement = placement
        # transport
        self._data_plane: Any = None  # _data_plane.DataPlane, None when off (or without Ray)
        # recovery (the journal), shared with the task store and dispatch
        self._journal: Any = None
        self._recovery_seconds: float | None = None
        # pools
        self._pools: dict[str, Pool] = {}
        self._last_demand: list[dict[str, float]] | None = None
        # task store
        self._tasks: dict[str, TaskEntry] = {}
        self._finished: OrderedDict[str, None] = OrderedDict()
        self._dead_letters: OrderedDict[str, str] = OrderedDict()
        self._idempotency: dict[tuple[str, str], str] = {}
        self._waiters: dict[str, list[asyncio.Future[Any]]] = {}
        self._events: deque[dict[str, Any]] = deque(maxlen=self.settings.event_buffer)
        self._event_sequence = itertools.count(1)
        self._event_signal: asyncio.Event | None = None
        self._init_streams()  # streaming tasks' unread parts
        self._counters = {"submitted": 0, "succeeded": 0, "failed": 0, "cancelled": 0,
                          "timed_out": 0, "redelivered": 0, "retried": 0, "late_results": 0,
                          "duplicate_executions": 0, "dead_lettered": 0, "recovered": 0,
                          "adopted_agents": 0, "reclaimed": 0, "states_saved": 0, "state_conflicts": 0,
                          "published": 0, "undeliverable": 0, "reminders_fired": 0}
        self._init_agent_states()  # virtual agents' states (see _agent_states.py)
        self._init_topics()  # subscriptions, recent message ids, topic logs (see _topics.py)
        self._init_reminders()  # virtual agents' reminders (see _reminders.py)
        # tokens spent at model endpoints, per pool, endpoint and model (hive_ray._usage)
        self._usage = UsageTotals({model: Price(price.prompt_per_million_usd, price.completion_per_million_usd)
                                   for model, price in self.settings.llm_prices.items()})
        # large results: task id -> size of each result kept in the object store, oldest first
        self._stored_results: OrderedDict[str, int] = OrderedDict()
        self._stored_bytes = 0
        # dispatch (timeouts and due retries)
        self._deadlines: list[tuple[float, int, str]] = []
        self._deadline_sequence = itertools.count()
        self._wakeup: asyncio.Event | None = None
        # the shell
        self._background: set[asyncio.Task[Any]] = set()
        self._started = False
        self._start_future: asyncio.Future[None] | None = None
        self._rng = random.Random()
        self._created_at = time.time()
        self._tracer: Any = None  # hive_ray._tracing.Tracer when settings.tracing is on
        self._task_sampling: Any = None  # hive_ray._task_sampling.TaskSampling, with the tracer
        self._analyzer: Any = None
        self._gc_pauses = gc_pauses()

    async def _ensure_started(self) -> None:
        if self._started:
            return
        if self._start_future is None:
            self._start_future = asyncio.ensure_future(self._start())
        await asyncio.shield(self._start_future)

    async def _start(self) -> None:
        began = time.monotonic()
        self._event_signal = asyncio.Event()
        self._wakeup = asyncio.Event()
        self._journal = self._open_journal()  # raises JournalError: start-up stops, clearly
        self._recover_subscriptions()
        self._recover_reminders()
        if self._placement is None:
            self._placement = await self._make_ray_placement()
            self._start_tracing()
        if self._journal is not None:
            # Quick (journal reads): pools adopt their hosts in the background. If it
            # raises, every call gets the error, rather than answers without the pools.
            self._recover()
            self._spawn_background(self._prune_loop())
        self._started = True
        self._spawn_background(self._timer_loop())
        self._spawn_background(self._reminder_loop())
        self._spawn_background(self._health_loop())
        self._spawn_background(self._autoscale_loop())
        self._spawn_background(self._stop_stray_hosts())
        self._recovery_seconds = time.monotonic() - began
        freeze_long_lived()

    def _spawn_background(self, coroutine: Any) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    async def health(self) -> dict[str, Any]:
        """Readiness: the orchestrator is started (journal open, recovery done) and answering."""
        await self._ensure_started()
        return {"status": "ok", "pools": len(self._pools), "tasks": len(self._tasks),
                "degraded_pools": sorted(p.name for p in self._pools.values() if p.supervisor.degraded),
                "recovering_pools": sorted(p.name for p in self._pools.values() if p.recovering),
                "uptime_seconds": time.time() - self._created_at}

    async def statistics(self) -> dict[str, Any]:
        import os

        return {
            "counters": dict(self._counters),
            "tasks_in_memory": len(self._tasks),
            "finished_in_memory": len(self._finished),
            "waiters": sum(len(w) for w in self._waiters.values()),
            "pools": {name: {"queued": len(p.scheduler), "inflight": p.scheduler.statistics().inflight,
                             "batch_size": p.scheduler.batch_size(), "restarts": p.supervisor.total_restarts,
                             "state": p.state}
                      for name, p in self._pools.items()},
            # Counting a large journal takes a while: off the event loop, beside the writer.
            "journal": await asyncio.to_thread(self._journal.statistics) if self._journal is not None else None,
            "journal_path": str(self._journal.path) if self._journal is not None else None,
            "recovery_seconds": self._recovery_seconds,
            "data_plane": self._data_plane.statistics() if self._data_plane is not None else None,
            "gc": self._gc_pauses.statistics(),
            "usage": self._usage.rows(),
            "pid": os.getpid(),
        }

    async def shutdown(self) -> None:
        """Stop every pool's agents (used by ``hive down`` and ``Hive.close``); keeps the journal."""
        pools = list(self._pools.values())
        self._pools.clear()  # from here on, a host that goes away is not restarted
        growing = []  # agents starting, and recoveries adopting hosts: they stop what they took
        for pool in pools:
            for starting in list(pool.growing):
                starting.cancel()
                growing.append(starting)
            for record in pool.agents.values():
                record.state = "stopping"
        await asyncio.gather(*growing, return_exceptions=True)
        # Running tasks stay unfinished in the journal: the next start runs them again.
        await asyncio.gather(*(self._placement.deactivate(list(pool.agents)) for pool in pools),
                             return_exceptions=True)
        if self._journal is not None:
            await self._journal.durable()
        if self._tracer is not None:
            await asyncio.to_thread(self._tracer.flush)

    def _start_tracing(self) -> None:
        """The orchestrator's tracer, and the analyzer it owns (with Ray only)."""
        from hive_ray._tracing import tracer_from_settings

        self._use_tracer(tracer_from_settings(self.settings, "orchestrator"))
        wanted = self.settings.analyzer
        if wanted or (wanted is None and self.settings.tracing):
            from hive_ray._runtime._analyzer_actor import get_or_create_analyzer

            self._analyzer = get_or_create_analyzer(self.settings)

    def _use_tracer(self, tracer: Any, draw: Any = None) -> None:
        """Trace with ``tracer`` (None: off), sampling each task without a sampled trace.

        ``draw`` replaces the random source of the per-task decisions (tests).
        """
        from hive_ray._task_sampling import TaskSampling

        self._tracer = tracer
        self._task_sampling = None if tracer is None else TaskSampling(tracer, draw=draw)

    async def tracing_config(self) -> dict[str, Any]:
        """What agent hosts need to trace (they ask once, when they start)."""
        from hive_ray._tracing import TracingConfig

        return TracingConfig.from_settings(self.settings).to_dict()

    async def analyzer(self) -> Any:
        """The analyzer actor's handle, started now if it does not run yet."""
        await self._ensure_started()
        if self._analyzer is None:
            from hive_ray._runtime._analyzer_actor import get_or_create_analyzer

            self._analyzer = get_or_create_analyzer(self.settings)
        return self._analyzer


__all__ = ["DEAD_LETTER_LIMIT", "AgentRecord", "Orchestrator", "Pool"]
