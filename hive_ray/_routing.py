"""Routing policies: which of several free agents takes the next task.

A policy only ever sees agents that have room for the task, so a queued task
never waits behind a busy agent while another agent could take it. Key
affinity is enforced by the pool scheduler for every policy; the ``affinity``
policy additionally places a *new* key on the agent that rendezvous hashing
picks, so keys spread evenly and deterministically.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence
from typing import Protocol


class AgentLoad(Protocol):
    """What a policy may look at."""

    agent_id: str
    inflight: int
    slots: int


class RoutingPolicy(Protocol):
    """Chooses one agent among ``candidates`` (never empty, all with free slots)."""

    name: str

    def choose(self, candidates: Sequence[AgentLoad], affinity_key: str | None) -> AgentLoad: ...


class LeastLoaded:
    """The agent with the fewest tasks in flight relative to its slots (the default)."""

    name = "least_loaded"

    def choose(self, candidates: Sequence[AgentLoad], affinity_key: str | None) -> AgentLoad:
        return min(candidates, key=lambda agent: agent.inflight / agent.slots)


class PowerOfTwoChoices:
    """Two agents drawn at random; the less loaded wins. O(1) per decision."""

    name = "power_of_two"

    def __init__(self, rng: random.Random | None = None) -> None:
        self._rng = rng or random.Random()

    def choose(self, candidates: Sequence[AgentLoad], affinity_key: str | None) -> AgentLoad:
        if len(candidates) == 1:
            return candidates[0]
        first, second = self._rng.sample(list(candidates), 2)
        return first if first.inflight / first.slots <= second.inflight / second.slots else second


class RoundRobin:
    """Free agents in turn, by agent id order."""

    name = "round_robin"

    def __init__(self) -> None:
        self._last: str | None = None

    def choose(self, candidates: Sequence[AgentLoad], affinity_key: str | None) -> AgentLoad:
        ordered = sorted(candidates, key=lambda agent: agent.agent_id)
        chosen = ordered[0]
        if self._last is not None:
            for agent in ordered:
                if agent.agent_id > self._last:
                    chosen = agent
                    break
        self._last = chosen.agent_id
        return chosen


class KeyAffinity:
    """New affinity keys go to their rendezvous-hash agent; tasks without a key, least loaded."""

    name = "affinity"

    def __init__(self) -> None:
        self._fallback = LeastLoaded()

    def choose(self, candidates: Sequence[AgentLoad], affinity_key: str | None) -> AgentLoad:
        if affinity_key is None:
            return self._fallback.choose(candidates, None)
        return max(candidates, key=lambda agent: _weight(affinity_key, agent.agent_id))


def _weight(key: str, agent_id: str) -> bytes:
    return hashlib.blake2b(f"{key}\x00{agent_id}".encode(), digest_size=8).digest()


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
