"""Routing policies: which of a pool's free agents takes the next task.

A policy only ever sees agents with a free slot, so a queued task never waits
behind a busy agent while another agent could take it. Pools hold thousands
of packed agents, so the free agents are kept in an index (:class:`FreeAgents`)
on which every policy decides in O(1) or O(log n), never by scanning.

Key affinity is enforced by the pool scheduler for every policy; the
``affinity`` policy additionally places a *new* key on the agent a consistent
hash ring picks, so keys spread evenly and deterministically.
"""

from __future__ import annotations

import bisect
import hashlib
import random
from dataclasses import dataclass
from typing import Protocol

#: Points per agent on the affinity hash ring: more points, more even spread.
RING_POINTS = 32
#: Points per shard on a virtual pool's owner ring: shards are few and each key stays on its
#: owner, so the spread matters more (with 8 shards over 100,000 keys the busiest shard got
#: 1.22x an even share with 32 points, 1.04x with 1,024).
OWNER_RING_POINTS = 1024


@dataclass(slots=True)
class AgentSlots:
    """The scheduler's view of one agent: how many tasks it may hold at once."""

    agent_id: str
    concurrency: int
    inflight: int = 0
    slots: int = 1
    accepting: bool = True

    @property
    def free(self) -> int:
        return self.slots - self.inflight if self.accepting else 0


class FreeAgents:
    """The agents of one pool that have a free slot, indexed by load, position and hash."""

    def __init__(self) -> None:
        self._by_load: dict[int, dict[str, AgentSlots]] = {}
        self._members: list[AgentSlots] = []
        self._position: dict[str, int] = {}
        self._ring: list[tuple[bytes, str]] = []   # every agent, free or not, by hash
        self._order: list[str] = []                # every agent, by id, for round robin
        self._all: dict[str, AgentSlots] = {}
        self._ring_stale = False

    # -- membership ---------------------------------------------------------------
    def add_agent(self, agent: AgentSlots) -> None:
        self._all[agent.agent_id] = agent
        self._ring_stale = True  # rebuilt when next needed: adding 5,000 agents stays linear
        self.update(agent)

    def remove_agent(self, agent_id: str) -> None:
        agent = self._all.pop(agent_id, None)
        if agent is None:
            return
        self._drop(agent)
        self._ring_stale = True

    def update(self, agent: AgentSlots) -> None:
        """Re-file ``agent`` after its inflight count or accepting flag changed."""
        self._drop(agent)
        if agent.agent_id in self._all and agent.free > 0:
            self._by_load.setdefault(agent.inflight, {})[agent.agent_id] = agent
            self._position[agent.agent_id] = len(self._members)
            self._members.append(agent)

    def _drop(self, agent: AgentSlots) -> None:
        index = self._position.pop(agent.agent_id, None)
        if index is None:
            return
        last = self._members.pop()
        if last is not agent:
            self._members[index] = last
            self._position[last.agent_id] = index
        for load, bucket in list(self._by_load.items()):
            if bucket.pop(agent.agent_id, None) is not None:
                if not bucket:
                    del self._by_load[load]
                break

    # -- questions the policies ask ---------------------------------------------------
    def __len__(self) -> int:
        return len(self._members)

    def least_loaded(self) -> AgentSlots:
        bucket = self._by_load[min(self._by_load)]
        return next(iter(bucket.values()))

    def random(self, rng: random.Random) -> AgentSlots:
        return self._members[rng.randrange(len(self._members))]

    def next_after(self, agent_id: str | None) -> AgentSlots:
        """The first free agent after ``agent_id`` in id order, wrapping around."""
        order = self._sorted()[1]
        start = bisect.bisect_right(order, agent_id) if agent_id is not None else 0
        for offset in range(len(order)):
            candidate = self._all[order[(start + offset) % len(order)]]
            if candidate.agent_id in self._position:
                return candidate
        raise LookupError("no free agent")

    def _sorted(self) -> tuple[list[tuple[bytes, str]], list[str]]:
        if self._ring_stale:
            self._ring = sorted((_hash(f"{agent_id}#{point}"), agent_id)
                                for agent_id in self._all for point in range(RING_POINTS))
            self._order = sorted(self._all)
            self._ring_stale = False
        return self._ring, self._order

    def on_ring(self, key: str) -> AgentSlots:
        """The free agent at or after ``key``'s place on the consistent hash ring."""
        ring = self._sorted()[0]
        start = bisect.bisect_left(ring, (_hash(key), ""))
        for offset in range(len(ring)):
            candidate = self._all[ring[(start + offset) % len(ring)][1]]
            if candidate.agent_id in self._position:
                return candidate
        raise LookupError("no free agent")


class RoutingPolicy(Protocol):
    """Chooses one agent among the free ones (there is always at least one)."""

    name: str

    def choose(self, free: FreeAgents, affinity_key: str | None) -> AgentSlots: ...


class LeastLoaded:
    """The agent with the fewest tasks in flight (the default)."""

    name = "least_loaded"

    def choose(self, free: FreeAgents, affinity_key: str | None) -> AgentSlots:
        return free.least_loaded()


class PowerOfTwoChoices:
    """Two free agents drawn at random; the less loaded wins. O(1) per decision."""

    name = "power_of_two"

    def __init__(self, rng: random.Random | None = None) -> None:
        self._rng = rng or random.Random()

    def choose(self, free: FreeAgents, affinity_key: str | None) -> AgentSlots:
        first, second = free.random(self._rng), free.random(self._rng)
        return first if first.inflight <= second.inflight else second


class RoundRobin:
    """Free agents in turn, by agent id order."""

    name = "round_robin"

    def __init__(self) -> None:
        self._last: str | None = None

    def choose(self, free: FreeAgents, affinity_key: str | None) -> AgentSlots:
        chosen = free.next_after(self._last)
        self._last = chosen.agent_id
        return chosen


class KeyAffinity:
    """New affinity keys go to their place on a hash ring; tasks without a key, least loaded."""

    name = "affinity"

    def choose(self, free: FreeAgents, affinity_key: str | None) -> AgentSlots:
        if affinity_key is None:
            return free.least_loaded()
        return free.on_ring(affinity_key)


def _hash(text: str) -> bytes:
    return hashlib.blake2b(text.encode(), digest_size=8).digest()


class OwnerRing:
    """Which member owns a key: a consistent hash ring over a fixed set of member ids.

    Virtual agents' pools route every message of a key to its owner, free or
    not, alive or restarting, so that one identity has one activation. The
    answer depends only on the members, so it is the same after an
    orchestrator restart; a change of members moves only the keys of the
    points that changed.
    """

    def __init__(self, members: list[str] | None = None) -> None:
        self._ring: list[tuple[bytes, str]] = []
        self._members: frozenset[str] = frozenset()
        self.set_members(members or [])

    def set_members(self, members: list[str]) -> bool:
        """Make ``members`` the owners; True when that changed who they are."""
        new = frozenset(members)
        if new == self._members:
            return False
        self._members = new
        self._ring = sorted((_hash(f"{member}#{point}"), member) for member in new
                            for point in range(OWNER_RING_POINTS))
        return True

    @property
    def members(self) -> frozenset[str]:
        return self._members

    def owner(self, key: str) -> str | None:
        """The member owning ``key``, or None when there are no members."""
        ring = self._ring
        if not ring:
            return None
        index = bisect.bisect_left(ring, (_hash(key), ""))
        return ring[index % len(ring)][1]


POLICIES = {
    LeastLoaded.name: LeastLoaded,
    PowerOfTwoChoices.name: PowerOfTwoChoices,
    RoundRobin.name: RoundRobin,
    KeyAffinity.name: KeyAffinity,
}


def make_policy(name: str) -> RoutingPolicy:
    """Build the policy called ``name``; unknown names list the known ones."""
    try:
        return POLICIES[name]()
    except KeyError:
        from hive_ray._errors import ConfigurationError

        raise ConfigurationError(
            f"unknown routing policy {name!r}; choose one of: {', '.join(sorted(POLICIES))}"
        ) from None
