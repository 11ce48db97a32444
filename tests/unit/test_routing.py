import random

import pytest

from hive_ray._errors import ConfigurationError
from hive_ray._routing import (
    AgentSlots,
    FreeAgents,
    KeyAffinity,
    LeastLoaded,
    PowerOfTwoChoices,
    RoundRobin,
    make_policy,
)


def index(*loads: tuple[str, int], slots: int = 4) -> FreeAgents:
    free = FreeAgents()
    for agent_id, inflight in loads:
        free.add_agent(AgentSlots(agent_id, concurrency=1, inflight=inflight, slots=slots))
    return free


def test_least_loaded_picks_the_emptiest_agent():
    assert LeastLoaded().choose(index(("a", 3), ("b", 1), ("c", 2)), None).agent_id == "b"


def test_full_agents_are_not_in_the_index_and_come_back_when_released():
    free = index(("a", 4), ("b", 0))
    assert len(free) == 1
    agent = free._all["a"]
    agent.inflight = 1
    free.update(agent)
    assert len(free) == 2
    assert LeastLoaded().choose(free, None).agent_id == "b"


def test_power_of_two_never_picks_the_busier_of_two_different_draws():
    policy = PowerOfTwoChoices(random.Random(7))
    free = index(("a", 0), ("b", 2), ("c", 3))
    picks = [policy.choose(free, None).agent_id for _ in range(600)]
    # c is the busiest: it wins only when drawn twice (1/9 of draws), never against another.
    assert picks.count("c") < 120
    assert {"a", "b"} <= set(picks)


def test_round_robin_cycles_through_free_agents():
    policy = RoundRobin()
    free = index(("x", 0), ("y", 0), ("z", 0))
    assert [policy.choose(free, None).agent_id for _ in range(5)] == ["x", "y", "z", "x", "y"]


def test_round_robin_skips_busy_agents():
    policy = RoundRobin()
    free = index(("x", 0), ("y", 4), ("z", 0))
    assert [policy.choose(free, None).agent_id for _ in range(3)] == ["x", "z", "x"]


def test_affinity_places_keys_deterministically_and_spreads_them():
    policy = KeyAffinity()
    free = index(*[(f"agent-{i}", 0) for i in range(4)])
    first = {f"key-{k}": policy.choose(free, f"key-{k}").agent_id for k in range(400)}
    again = {f"key-{k}": policy.choose(free, f"key-{k}").agent_id for k in range(400)}
    assert first == again
    counts = [list(first.values()).count(f"agent-{i}") for i in range(4)]
    assert min(counts) > 20


def test_decisions_do_not_scan_the_agents(monkeypatch: pytest.MonkeyPatch):
    # Counted, not timed: a decision may look at a handful of agents, never at all 5,000.
    import hive_ray._routing as routing

    looked_at = 0

    class CountingAgents(dict):
        def __getitem__(self, agent_id: str) -> routing.AgentSlots:
            nonlocal looked_at
            looked_at += 1
            return super().__getitem__(agent_id)

    original_free = routing.AgentSlots.free

    def counting_free(agent: routing.AgentSlots) -> int:
        nonlocal looked_at
        looked_at += 1
        return original_free.fget(agent)

    free = index(*[(f"agent-{i:05d}", i % 3) for i in range(5000)])
    free._all = CountingAgents(free._all)
    monkeypatch.setattr(routing.AgentSlots, "free", property(counting_free))
    for policy in [LeastLoaded(), PowerOfTwoChoices(random.Random(1)), RoundRobin(), KeyAffinity()]:
        looked_at = 0
        for key in range(200):
            assert policy.choose(free, f"k{key}") is not None
        assert looked_at <= 200 * 8, f"{type(policy).__name__} looked at {looked_at} agents for 200 decisions"


def test_unknown_policy_lists_the_known_ones():
    with pytest.raises(ConfigurationError, match="unknown routing policy 'fastest'; choose one of: affinity, least_loaded, power_of_two, round_robin"):
        make_policy("fastest")
