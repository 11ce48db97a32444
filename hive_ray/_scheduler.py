"""One pool's dispatch logic: queue, agents' free slots, affinity and batch size.

Pure Python (no Ray), so it is unit-tested in milliseconds; the orchestrator
actor owns one :class:`PoolScheduler` per pool and performs the remote calls
that :meth:`PoolScheduler.assign` decides on.

Batching: when a pool's tasks are short (their mean handling time, tracked as
an exponentially weighted moving average, is well under
``target_batch_seconds``), each agent gets room for several tasks and receives
them in one Ray call; long tasks are sent one at a time so a task never waits
behind another on a busy agent while a second agent sits idle.

The batch size moves in powers of two, with hysteresis: it doubles (or more)
once the ideal size (``target_batch_seconds`` over the mean handling time)
reaches the next power, and drops only once the ideal falls below half the
current size. A change re-files every agent of the pool (their slots depend on
it), which costs milliseconds for a thousand agents; when the size followed
every wobble of the mean, an echo pool changed it on almost every task and
those re-filings were the p99 of a pool of 1,000 agents.

What counts as queued: a batch hands an agent more tasks than its concurrency
(they wait in its mailbox on the host, so the next batch is there when one
ends). Those tasks are *prefetched*: they count as queued, not running, both in
the statistics and against ``max_queue``, so a pool never admits more than its
agents' concurrency plus its queue bound. Accepts whose journal commit is still
in flight hold a *reservation* against the bound, so concurrent submissions
cannot overshoot it while they wait to become durable.

``retry_after`` (the back-off an :class:`~hive_ray._errors.OverloadedError`
suggests) comes from the pool's measured drain rate: completions per second
over the last few seconds.
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass

from hive_ray._errors import OverloadedError
from hive_ray._queue import PriorityTaskQueue
from hive_ray._routing import AgentSlots, FreeAgents, OwnerRing, RoutingPolicy, make_policy
from hive_ray._task import TaskEntry

#: Affinity bindings kept per pool; the least recently used key is forgotten first.
MAX_AFFINITY_KEYS = 100_000
#: The drain rate is measured over about this many seconds of completions.
DRAIN_WINDOW_SECONDS = 8.0
_DRAIN_SAMPLE_SECONDS = 0.25


@dataclass(frozen=True, slots=True)
class SchedulerStatistics:
    queued: int
    inflight: int
    agents: int
    accepting_agents: int
    batch_size: int
    handle_seconds_ewma: float | None


class PoolScheduler:
    """Queue, routing and batch sizing for one pool."""

    def __init__(
        self,
        name: str,
        *,
        policy: str | RoutingPolicy = "least_loaded",
        max_queue: int = 100_000,
        max_batch: int = 64,
        target_batch_seconds: float = 0.002,
        clock: Callable[[], float] = time.monotonic,
        owners: bool = False,
    ) -> None:
        self.name = name
        self.policy = make_policy(policy) if isinstance(policy, str) else policy
        self.max_queue = max_queue
        self.max_batch = max_batch
        self.target_batch_seconds = target_batch_seconds
        self._clock = clock
        self._queue: PriorityTaskQueue[TaskEntry] = PriorityTaskQueue()
        # Tasks parked behind their affinity agent, by agent; only non-empty queues are kept,
        # and _parked counts their tasks, so that neither a submission (which checks the
        # queue bound) nor a dispatch walks every agent that ever had parked work.
        self._affinity_queues: dict[str, PriorityTaskQueue[TaskEntry]] = {}
        self._parked = 0
        self._bindings: OrderedDict[str, str] = OrderedDict()
        # A virtual agents' pool: every key goes to its owner (set_members), never elsewhere.
        self._owners = OwnerRing() if owners else None
        self._agents: dict[str, AgentSlots] = {}
        self._free = FreeAgents()
        self._handle_ewma: float | None = None
        self._batch = 1
        self._delayed: list[TaskEntry] = []  # retries waiting for their backoff
        self._prefetched = 0  # tasks handed to agents beyond their concurrency (queued there)
        self._reserved = 0  # accepted tasks whose journal commit is still in flight
        self._completed = 0
        self._drain_samples: deque[tuple[float, int]] = deque(
            maxlen=int(DRAIN_WINDOW_SECONDS / _DRAIN_SAMPLE_SECONDS) + 1)

    # -- agents ---------------------------------------------------------------
    def add_agent(self, agent_id: str, *, concurrency: int = 1) -> None:
        agent = AgentSlots(agent_id, concurrency=max(1, concurrency))
        agent.slots = self._slots_for(agent)
        self._agents[agent_id] = agent
        self._free.add_agent(agent)

    def set_members(self, agent_ids: list[str]) -> None:
        """The agents that own keys in a virtual agents' pool (ready or not: a key waits for its
        owner). Tasks parked on an agent that is no longer one are routed again."""
        assert self._owners is not None, "set_members is for pools created with owners=True"
        if self._owners.set_members(agent_ids):
            for agent_id in [a for a in self._affinity_queues if a not in self._owners.members]:
                self._unpark(agent_id)

    def owner_of(self, key: str) -> str | None:
        """The agent that owns ``key`` in a virtual agents' pool (None in other pools)."""
        return self._owners.owner(key) if self._owners is not None else None

    def remove_agent(self, agent_id: str) -> None:
        """Forget an agent; tasks pinned to it by affinity go back to the main queue (unless it
        owns their keys: then they wait for it to come back)."""
        agent = self._agents.pop(agent_id, None)
        if agent is not None:
            self._prefetched -= _excess(agent)
        self._free.remove_agent(agent_id)
        if self._owners is not None and agent_id in self._owners.members:
            return
        self._unpark(agent_id)
        for key in [key for key, owner in self._bindings.items() if owner == agent_id]:
            del self._bindings[key]

    def _unpark(self, agent_id: str) -> None:
        pinned = self._affinity_queues.pop(agent_id, None)
        if pinned is not None:
            self._parked -= len(pinned)
            while len(pinned):
                entry, sequence = pinned.pop()
                entry.parked_on = None
                self._queue.push(entry, sequence=sequence)

    def set_accepting(self, agent_id: str, accepting: bool) -> None:
        agent = self._agents.get(agent_id)
        if agent is not None:
            agent.accepting = accepting
            self._free.update(agent)

    def agent(self, agent_id: str) -> AgentSlots | None:
        return self._agents.get(agent_id)

    @property
    def agent_ids(self) -> list[str]:
        return list(self._agents)

    # -- tasks ----------------------------------------------------------------
    def __len__(self) -> int:
        """Tasks waiting here for an agent (not counting those prefetched by agents)."""
        return len(self._queue) + self._parked + len(self._delayed)

    def backlog(self) -> int:
        """What counts against ``max_queue``: waiting here, prefetched by agents, or reserved."""
        return len(self) + self._prefetched + self._reserved

    def enqueue(self, entry: TaskEntry) -> None:
        """Queue a newly accepted task, or raise :class:`OverloadedError` when full."""
        self.check_room(1)
        self._queue.push(entry)

    def check_room(self, count: int) -> None:
        """Raise :class:`OverloadedError` unless ``count`` more tasks fit in the queue."""
        if self.backlog() + count > self.max_queue:
            raise OverloadedError(pool=self.name, retry_after=self.retry_after_hint())

    def reserve(self, count: int) -> None:
        """Hold room for ``count`` accepted tasks until they are durable (or refuse them)."""
        self.check_room(count)
        self._reserved += count

    def admit(self, entry: TaskEntry) -> None:
        """Queue a task whose room was reserved (its accept is now durable)."""
        self._reserved = max(0, self._reserved - 1)
        self._queue.push(entry)

    def unreserve(self, count: int) -> None:
        """Give back reserved room (the accept failed, or its task ended before admission)."""
        self._reserved = max(0, self._reserved - count)

    def requeue(self, entry: TaskEntry, *, front: bool = True) -> None:
        """Put a task back, not subject to the queue bound.

        A re-delivered task (``front``) goes before new work of its priority; a
        recovered one (after an orchestrator restart) takes a normal place in line.
        """
        if entry.not_before > self._clock():
            self._delayed.append(entry)
            return
        self._queue.push(entry, sequence=-1 if front else None)

    def discard(self, entry: TaskEntry) -> bool:
        """Remove a queued task (cancel, timeout); False if it was not queued here."""
        if entry in self._delayed:
            self._delayed.remove(entry)
            return True
        if not entry.queued:
            return False
        if entry.parked_on is not None:
            agent_id, entry.parked_on = entry.parked_on, None
            pinned = self._affinity_queues.get(agent_id)
            if pinned is None or not pinned.discard(entry):
                return False
            self._parked -= 1
            if not len(pinned):
                del self._affinity_queues[agent_id]
            return True
        return self._queue.discard(entry)

    def release(self, agent_id: str, count: int = 1) -> None:
        """``count`` tasks on ``agent_id`` ended; their slots are free again."""
        agent = self._agents.get(agent_id)
        if agent is not None:
            before = _excess(agent)
            agent.inflight = max(0, agent.inflight - count)
            self._prefetched += _excess(agent) - before
            self._free.update(agent)
        self._completed += count
        now = self._clock()
        samples = self._drain_samples
        if not samples or now - samples[-1][0] >= _DRAIN_SAMPLE_SECONDS:
            samples.append((now, self._completed))

    def occupy(self, agent_id: str, count: int) -> None:
        """``count`` tasks already running on ``agent_id`` (found on a host adopted after an
        orchestrator restart) take its slots; :meth:`release` frees them as usual."""
        agent = self._agents.get(agent_id)
        if agent is not None:
            before = _excess(agent)
            agent.inflight += count
            self._prefetched += _excess(agent) - before
            self._free.update(agent)

    def observe_handle_seconds(self, seconds: float) -> None:
        """Feed one task's handling time into the batch-size estimate."""
        if self._handle_ewma is None:
            self._handle_ewma = seconds
        else:
            self._handle_ewma += 0.1 * (seconds - self._handle_ewma)
        batch = self._next_batch_size(self._handle_ewma)
        if batch != self._batch:
            self._batch = batch
            self._resize_slots()

    def _next_batch_size(self, ewma: float) -> int:
        ideal = self.target_batch_seconds / max(ewma, 1e-9)
        current = self._batch
        if current * 2 <= ideal or ideal < current / 2 or ideal < 2:
            # A power of two: a tenth of a wobble no longer crosses a boundary.
            size = 1 if ideal < 2 else 1 << (int(ideal).bit_length() - 1)
            return max(1, min(self.max_batch, size))
        return current

    def batch_size(self) -> int:
        return self._batch

    def drain_rate(self) -> float | None:
        """Tasks this pool completed per second over the last few seconds, if measured."""
        samples = self._drain_samples
        if not samples:
            return None
        now = self._clock()
        start_time, start_count = samples[0]
        for sample_time, sample_count in samples:  # the oldest sample inside the window
            if now - sample_time <= DRAIN_WINDOW_SECONDS:
                start_time, start_count = sample_time, sample_count
                break
        span = now - start_time
        if span < 1.0 or self._completed == start_count:
            return None  # too short a window, or nothing ended in it: no measurement
        return (self._completed - start_count) / span

    def retry_after_hint(self) -> float:
        """Seconds until a tenth of the backlog has likely drained: a client's back-off.

        From the measured drain rate; before there is one, from the mean handling
        time and the agents' concurrency (a pool that was never measured says 1 s).
        """
        needed = max(1.0, 0.1 * self.backlog())
        rate = self.drain_rate()
        if rate is None and self._handle_ewma is not None:
            capacity = sum(agent.concurrency for agent in self._agents.values()) or 1
            rate = capacity / max(self._handle_ewma, 1e-6)
        seconds = needed / rate if rate else 1.0
        return round(min(60.0, max(0.1, seconds)), 2)

    def assign(self) -> list[tuple[str, list[TaskEntry]]]:
        """Hand queued tasks to agents with free slots.

        Returns ``(agent_id, entries)`` pairs, each to be sent as one batch. The
        entries' slots are counted as taken; call :meth:`release` when they end.
        """
        self._promote_due_retries()
        free = self._free
        if not len(free):
            return []
        batches: dict[str, list[TaskEntry]] = {}
        queue = self._queue
        pinned_queues = self._affinity_queues
        while len(free):
            source, source_agent = queue, None
            best = queue.peek_key()
            if pinned_queues:
                for agent_id, pinned in pinned_queues.items():
                    agent = self._agents.get(agent_id)  # an owner may be away (restarting)
                    if agent is not None and agent.free > 0:
                        key = pinned.peek_key()
                        if key is not None and (best is None or key < best):
                            best, source, source_agent = key, pinned, agent_id
            if best is None:
                break
            entry, sequence = source.pop()
            entry.parked_on = None
            if source_agent is not None:
                self._parked -= 1
                if not len(source):
                    del pinned_queues[source_agent]
            target = self._target_for(entry, free, sequence)
            if target is None:
                continue  # parked on its affinity agent's queue
            batches.setdefault(target.agent_id, []).append(entry)
            target.inflight += 1
            if target.inflight > target.concurrency:
                self._prefetched += 1
            free.update(target)
        return list(batches.items())

    def statistics(self) -> SchedulerStatistics:
        return SchedulerStatistics(
            queued=len(self) + self._prefetched,
            inflight=sum(min(agent.inflight, agent.concurrency) for agent in self._agents.values()),
            agents=len(self._agents),
            accepting_agents=sum(1 for agent in self._agents.values() if agent.accepting),
            batch_size=self.batch_size(),
            handle_seconds_ewma=self._handle_ewma,
        )

    # -- internals --------------------------------------------------------------
    def _target_for(self, entry: TaskEntry, free: FreeAgents, sequence: int) -> AgentSlots | None:
        key = entry.affinity_key
        if key is None:
            return self.policy.choose(free, None)
        if self._owners is not None:
            return self._to_owner(entry, key, sequence)
        owner_id = self._bindings.get(key)
        owner = self._agents.get(owner_id) if owner_id is not None else None
        if owner is not None:
            self._bindings.move_to_end(key)
            if owner.free > 0:
                return owner
            pinned = self._affinity_queues.setdefault(owner.agent_id, PriorityTaskQueue())
            pinned.push(entry, sequence=sequence)
            self._parked += 1
            entry.parked_on = owner.agent_id
            return None
        chosen = self.policy.choose(free, key)
        self._bindings[key] = chosen.agent_id
        if len(self._bindings) > MAX_AFFINITY_KEYS:
            self._bindings.popitem(last=False)
        return chosen

    def _to_owner(self, entry: TaskEntry, key: str, sequence: int) -> AgentSlots | None:
        assert self._owners is not None
        owner_id = self._owners.owner(key)
        if owner_id is None:
            owner_id = ""  # no members yet: parked until there are
        owner = self._agents.get(owner_id)
        if owner is not None and owner.free > 0:
            return owner
        self._affinity_queues.setdefault(owner_id, PriorityTaskQueue()).push(entry, sequence=sequence)
        self._parked += 1
        entry.parked_on = owner_id
        return None

    def _promote_due_retries(self) -> None:
        if not self._delayed:
            return
        now = self._clock()
        due = [entry for entry in self._delayed if entry.not_before <= now]
        if due:
            self._delayed = [entry for entry in self._delayed if entry.not_before > now]
            for entry in due:
                self._queue.push(entry, sequence=-1)

    def next_retry_at(self) -> float | None:
        return min((entry.not_before for entry in self._delayed), default=None)

    def _slots_for(self, agent: AgentSlots) -> int:
        # With batching, room for two batches keeps an agent busy while the next
        # batch is on its way; without it, one task per unit of concurrency.
        batch = self.batch_size()
        return agent.concurrency if batch == 1 else agent.concurrency * batch * 2

    def _resize_slots(self) -> None:
        for agent in self._agents.values():
            agent.slots = self._slots_for(agent)
            self._free.update(agent)


def _excess(agent: AgentSlots) -> int:
    """Tasks an agent holds beyond its concurrency: prefetched, waiting in its mailbox."""
    return max(0, agent.inflight - agent.concurrency)
