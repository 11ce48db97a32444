import random
from dataclasses import dataclass

import pytest

from hive_ray._errors import ConfigurationError
from hive_ray._routing import KeyAffinity, LeastLoaded, PowerOfTwoChoices, RoundRobin, make_policy


@dataclass
class Load:
    agent_id: str
    inflight: int
    slots: int = 1


def test_least_loaded_picks_the_emptiest_relative_to_its_slots():
    agents = [Load("a", 3, 4), Load("b", 1, 4), Load("c", 1, 1)]
    assert LeastLoaded().choose(agents, None).agent_id == "b"


def test_power_of_two_never_picks_the_busier_of_its_two_draws():
    policy = PowerOfTwoChoices(random.Random(7))
    agents = [Load("a", 0), Load("b", 5), Load("c", 9)]
    picks = [policy.choose(agents, None).agent_id for _ in range(300)]
    assert "c" not in picks  # c is the busiest: it always loses its duel
    assert {"a", "b"} <= set(picks)


def test_round_robin_cycles_through_free_agents():
    policy = RoundRobin()
    agents = [Load("x", 0), Load("y", 0), Load("z", 0)]
    assert [policy.choose(agents, None).agent_id for _ in range(5)] == ["x", "y", "z", "x", "y"]


def test_affinity_places_keys_deterministically_and_spreads_them():
    policy = KeyAffinity()
    agents = [Load(f"agent-{i}", 0) for i in range(4)]
    first = {f"key-{k}": policy.choose(agents, f"key-{k}").agent_id for k in range(200)}
    again = {f"key-{k}": policy.choose(agents, f"key-{k}").agent_id for k in range(200)}
    assert first == again
    counts = {agent.agent_id: list(first.values()).count(agent.agent_id) for agent in agents}
    assert min(counts.values()) > 20  # 200 keys over 4 agents: roughly 50 each


def test_unknown_policy_lists_the_known_ones():
    with pytest.raises(ConfigurationError, match="unknown routing policy 'fastest'; choose one of: affinity, least_loaded, power_of_two, round_robin"):
        make_policy("fastest")
