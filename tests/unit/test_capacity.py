"""Pool sizes the cluster cannot hold are refused before anything starts (no Ray)."""

from __future__ import annotations

import pickle

import pytest

from hive_ray._capacity import CapacityLimits, check_pool_size, room_for
from hive_ray._errors import CapacityError, ConfigurationError
from tests.unit.test_orchestrator_logic import make, pool, run

GIB = 2**30


def test_the_budget_comes_from_the_admin_setting_or_half_the_clusters_memory():
    assert CapacityLimits(100_000, None, 16 * GIB).host_budget() == 128
    assert CapacityLimits(100_000, 40, 16 * GIB).host_budget() == 40
    assert CapacityLimits(100_000, None, None).host_budget() is None
    assert CapacityLimits(100_000, None, 0.1 * GIB).host_budget() == 8  # never below a few


def test_the_reviews_22605_dedicated_agents_are_refused_with_the_limit_and_the_fix():
    limits = CapacityLimits(100_000, None, 16 * GIB)
    with pytest.raises(CapacityError) as refused:
        check_pool_size(limits, pool="echo", wanted=22_605, agents_per_host=1, other_hosts=3)
    message = str(refused.value)
    assert "pool 'echo' cannot have 22,605 agents: that needs 22,605 host processes" in message
    assert "room for 128" in message and "Ask for at most 125." in message
    assert "placement: packed" in message
    assert isinstance(refused.value, ConfigurationError)
    assert pickle.loads(pickle.dumps(refused.value)).details["limit"] == 125


def test_packed_agents_share_host_processes_and_the_admin_maximum_still_applies():
    limits = CapacityLimits(10_000, None, 16 * GIB)
    check_pool_size(limits, pool="p", wanted=10_000, agents_per_host=250, other_hosts=0)  # 40 hosts
    assert room_for(limits, agents_per_host=250, other_hosts=0) == 10_000
    with pytest.raises(CapacityError, match="max_agents_per_pool is 10,000"):
        check_pool_size(limits, pool="p", wanted=10_001, agents_per_host=250, other_hosts=0)


def test_the_orchestrator_refuses_a_scale_it_cannot_hold_and_keeps_the_pool_as_it_was():
    async def scenario():
        orchestrator, placement = make({"max_host_processes": 10})
        await pool(orchestrator, count=2)
        with pytest.raises(CapacityError, match="Ask for at most 10"):
            await orchestrator.scale("echo", 22_605)
        info = await orchestrator.pool("echo")
        assert (info["size"], info["desired"]) == (2, 2)
        assert placement.activations == 2
        with pytest.raises(CapacityError):
            await pool(orchestrator, name="other", count=9)  # 2 + 9 host processes > 10
        assert "other" not in {p["name"] for p in await orchestrator.pools()}
        assert (await orchestrator.health())["status"] == "ok"
    run(scenario())


def test_a_large_pool_starts_in_waves_of_a_few_hosts():
    async def scenario():
        orchestrator, placement = make({"max_host_processes": 100})
        await pool(orchestrator, count=20)
        assert [len(wave) for wave in placement.activate_calls] == [8, 8, 4]
        assert (await orchestrator.pool("echo"))["size"] == 20
    run(scenario())
