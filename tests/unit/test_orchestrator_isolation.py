"""Poison isolation, blocked event loops and large results, against a fake placement (no Ray)."""

import asyncio

import pytest

from hive_ray._errors import ResultLostError
from hive_ray._results import StoredResult
from hive_ray._runtime._durability import encode_entry
from hive_ray._runtime._orchestrator import Orchestrator
from tests.unit.fake_placement import FakePlacement

POISON = "poison"
RESTART = {"max_restarts": 10, "window_seconds": 60, "backoff_initial_seconds": 0.0, "backoff_max_seconds": 0.0}


def orchestrator(tmp_path, placement, journal=False, **settings):
    base = {"state_dir": str(tmp_path / "state"), "journal": journal,
            "journal_dir": str(tmp_path / "journal"), "health_check_interval_seconds": 3600}
    return Orchestrator({**base, **settings}, placement=placement)


async def packed_pool(orch, placement, count=4, name="p"):
    placement.agents_per_host = count
    spec = {"name": name, "agent_type": "echo", "count": count, "restart": RESTART,
            "retry": {"max_attempts": 3, "backoff_initial_seconds": 0.0, "backoff_max_seconds": 0.0}}
    await orch.create_pool(spec, "hive_ray.actors.echo:EchoAgent", ["echo"], 1)


async def settled(orch, task_ids, timeout=10.0):
    return await asyncio.wait_for(orch.wait_many(task_ids), timeout)


def test_a_poison_task_among_many_on_a_packed_host_is_dead_lettered_and_costs_no_sibling_an_attempt(tmp_path):
    async def scenario():
        placement = FakePlacement()
        placement.poison.add(POISON)
        orch = orchestrator(tmp_path, placement)
        await packed_pool(orch, placement)
        # The poison is first in line, so its batch starts (and kills the host) while the
        # host holds three other tasks.
        ids = await orch.submit_many({"pool": "p"}, [POISON, *range(39)])
        answers = await settled(orch, ids)
        poison, others = ids[0], ids[1:]
        assert answers[0][0] == "failed" and "while this task ran alone" in answers[0][2]["message"]
        assert [state for state, _, _ in answers[1:]] == ["succeeded"] * 39
        records = {task_id: await orch.task(task_id) for task_id in ids}
        assert records[poison]["attempts"] == 3 and records[poison]["metadata"]["dead_letter"] == "true"
        assert {records[t]["attempts"] for t in others} == {1}
        assert [r["task_id"] for r in await orch.dead_letters()] == [poison]
        # One crash with company, then three alone: the pool's restart policy saw four failures.
        info = await orch.pool("p")
        assert info["restarts"] == 4 and info["state"] == "ok" and info["suspects"] == 0
        first_crash = next(i for i, (_, tasks, _) in enumerate(placement.log) if poison in tasks)
        crashed_with = [task for _, tasks, _ in placement.log[: first_crash + 4] for task in tasks]
        suspects = set(crashed_with) - {poison}
        assert suspects, "the poison should have crashed a host holding other tasks"
        for _, tasks, others_on_host in placement.log[first_crash + 4:]:
            if suspects & set(tasks) or poison in tasks:
                assert len(tasks) == 1 and others_on_host == 0  # suspects ran alone
    asyncio.run(scenario())


def test_suspects_run_one_at_a_time_on_a_host_kept_free_of_other_work(tmp_path):
    async def scenario():
        placement = FakePlacement()
        placement.agents_per_host = 2  # two hosts of two agents
        orch = orchestrator(tmp_path, placement)
        await orch.create_pool({"name": "q", "agent_type": "echo", "count": 4, "restart": RESTART},
                               "hive_ray.actors.echo:EchoAgent", ["echo"], 1)
        placement.gate = asyncio.Event()
        ids = await orch.submit_many({"pool": "q"}, list(range(4)))
        await asyncio.sleep(0.01)
        pool = orch._pools["q"]
        crashed_host = placement.host_of["q-0"]
        suspects = {t for t in ids if orch._tasks[t].agent_id in ("q-0", "q-1")}
        await orch._on_host_failed(pool, ["q-0", "q-1"], "process_killed", "segfault")
        assert pool.isolation.suspects() == 2
        logged = len(placement.log)
        more = await orch.submit_many({"pool": "q"}, list(range(4, 12)))
        placement.gate.set()
        answers = await settled(orch, ids + more)
        assert [state for state, _, _ in answers] == ["succeeded"] * 12
        assert {(await orch.task(t))["attempts"] for t in ids + more} == {1}
        assert pool.isolation.suspects() == 0 and pool.isolation.reserved is None
        on_crashed_host = [(tasks, busy) for agent, tasks, busy in placement.log[logged:]
                           if placement.host_of[agent] == crashed_host]
        # The crashed host, once back, ran the two suspects first, each alone, then other work.
        assert {task for tasks, _ in on_crashed_host[:2] for task in tasks} == suspects
        assert all(len(tasks) == 1 and busy == 0 for tasks, busy in on_crashed_host[:2])
    asyncio.run(scenario())


def test_a_lost_node_costs_no_attempt_and_makes_no_suspects(tmp_path):
    async def scenario():
        placement = FakePlacement()
        orch = orchestrator(tmp_path, placement)
        await packed_pool(orch, placement, count=2)
        placement.gate = asyncio.Event()
        ids = await orch.submit_many({"pool": "p"}, [1, 2])
        await asyncio.sleep(0.01)
        pool = orch._pools["p"]
        await orch._on_host_failed(pool, ["p-0", "p-1"], "node_lost", "node died")
        assert pool.isolation.suspects() == 0
        placement.gate.set()
        assert [a[0] for a in await settled(orch, ids)] == ["succeeded", "succeeded"]
        assert {(await orch.task(t))["attempts"] for t in ids} == {1}
    asyncio.run(scenario())


def test_a_host_whose_event_loop_stays_silent_past_the_health_timeout_is_restarted(tmp_path):
    async def scenario():
        placement = FakePlacement()
        placement.report_hosts = True
        orch = orchestrator(tmp_path, placement, health_check_interval_seconds=0.01,
                            health_check_timeout_seconds=1.0)
        await orch.create_pool({"name": "p", "agent_type": "echo", "count": 1, "restart": RESTART},
                               "hive_ray.actors.echo:EchoAgent", ["echo"], 1)
        placement.health_answers["host-p-0"] = {"loop_silent_seconds": 0.5}  # within the timeout
        await asyncio.sleep(0.1)
        assert (await orch.pool("p"))["restarts"] == 0
        placement.health_answers["host-p-0"] = {"loop_silent_seconds": 3.0}
        for _ in range(200):
            await asyncio.sleep(0.01)
            if (await orch.pool("p"))["restarts"]:
                break
        placement.health_answers.clear()
        [event] = (await orch.pool("p"))["recent_restarts"]
        assert event["cause"] == "health_check_failed" and "event loop has not run for 3.0 s" in event["detail"]
    asyncio.run(scenario())


def test_a_large_result_is_settled_once_in_the_object_store_and_the_journal_keeps_only_a_marker(tmp_path):
    async def scenario():
        placement = FakePlacement()
        orch = orchestrator(tmp_path, placement, journal=True)
        await orch.create_pool({"name": "p", "agent_type": "echo", "count": 1, "restart": RESTART},
                               "hive_ray.actors.echo:EchoAgent", ["echo"], 1)
        task_id, (state, value, _) = await orch.run({"pool": "p"}, ("big", 300_000_000))
        assert state == "succeeded" and type(value) is StoredResult and value.size == 300_000_000
        assert await orch.fetch_result(task_id) == [("ref", value.key)]
        entry = orch._tasks[task_id]
        assert len(encode_entry(entry)) < 1000  # the journal row holds the marker, not the value
        await orch._journal.durable()
        await orch.shutdown()
        # A restarted orchestrator reads the marker; the value (owned by the old one) is gone.
        again = orchestrator(tmp_path, FakePlacement(), journal=True)
        record = await again.task(task_id)
        assert record["state"] == "succeeded" and record["result"] == value
        with pytest.raises(ResultLostError, match="300,000,000 bytes.*max_result_bytes_in_memory"):
            await again.fetch_result(task_id)
    asyncio.run(scenario())


def test_a_large_result_lost_with_its_host_before_it_was_kept_is_delivered_again(tmp_path):
    async def scenario():
        placement = FakePlacement()
        placement.lose_results = True
        orch = orchestrator(tmp_path, placement)
        await orch.create_pool({"name": "p", "agent_type": "echo", "count": 1, "restart": RESTART},
                               "hive_ray.actors.echo:EchoAgent", ["echo"], 1)
        [task_id] = await orch.submit_many({"pool": "p"}, [("big", 1_000_000)])
        for _ in range(100):
            await asyncio.sleep(0.01)
            if len(placement.batches) >= 2:
                break
        placement.lose_results = False
        state, value, _ = await asyncio.wait_for(orch.wait(task_id), 10)
        assert state == "succeeded" and type(value) is StoredResult
        assert (await orch.task(task_id))["attempts"] >= 2
    asyncio.run(scenario())


def test_a_late_large_result_is_taken_off_its_host_and_dropped(tmp_path):
    async def scenario():
        placement = FakePlacement()
        orch = orchestrator(tmp_path, placement)
        await orch.create_pool({"name": "p", "agent_type": "echo", "count": 1, "restart": RESTART},
                               "hive_ray.actors.echo:EchoAgent", ["echo"], 1)
        placement.gate = asyncio.Event()
        [task_id] = await orch.submit_many({"pool": "p"}, [("big", 1_000_000)])
        await asyncio.sleep(0.01)
        await orch.cancel(task_id)
        placement.gate.set()
        for _ in range(100):
            await asyncio.sleep(0.01)
            if not placement.kept and len(placement.batches) == 1:
                break
        assert placement.kept == {} and (await orch.task(task_id))["state"] == "cancelled"
    asyncio.run(scenario())


def test_stored_results_beyond_their_total_budget_are_released_oldest_first(tmp_path):
    async def scenario():
        placement = FakePlacement()
        orch = orchestrator(tmp_path, placement, max_stored_result_bytes=2_500_000)
        await orch.create_pool({"name": "p", "agent_type": "echo", "count": 1, "restart": RESTART},
                               "hive_ray.actors.echo:EchoAgent", ["echo"], 1)
        ids = [(await orch.run({"pool": "p"}, ("big", 1_000_000)))[0] for _ in range(3)]
        with pytest.raises(ResultLostError, match="max_stored_result_bytes"):
            await orch.fetch_result(ids[0])
        for task_id in ids[1:]:
            assert (await orch.fetch_result(task_id))[0][0] == "ref"
        assert orch._stored_bytes == 2_000_000
    asyncio.run(scenario())
