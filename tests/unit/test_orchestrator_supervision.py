"""Supervision, retries, dead letters and journal recovery, against a fake placement."""

import asyncio
import itertools
import sqlite3

import pytest

from hive_ray._errors import JournalError
from hive_ray._runtime._orchestrator import Orchestrator
from tests.unit.fake_placement import FakePlacement


def orchestrator(tmp_path, placement, journal=True, **settings):
    base = {"state_dir": str(tmp_path / "state"), "journal": journal,
            "journal_dir": str(tmp_path / "journal"), "health_check_interval_seconds": 3600}
    return Orchestrator({**base, **settings}, placement=placement)


POOL = {"name": "p", "agent_type": "echo", "count": 1,
        "restart": {"max_restarts": 2, "window_seconds": 60, "backoff_initial_seconds": 0.0,
                    "backoff_max_seconds": 0.0}}


async def make_pool(orch, spec=None):
    return await orch.create_pool(spec or POOL, "hive_ray.actors.echo:EchoAgent", ["echo"], 1)


async def until_recovered(orch, name, timeout=5.0):
    """Wait until a pool recovering after a restart is ok or degraded again."""
    deadline = asyncio.get_running_loop().time() + timeout
    while (info := await orch.pool(name))["state"] == "recovering":
        assert asyncio.get_running_loop().time() < deadline, f"pool {name} still recovering"
        await asyncio.sleep(0.01)
    return info


def test_a_crash_looping_agent_stops_being_restarted_and_the_pool_is_degraded(tmp_path):
    async def scenario():
        placement = FakePlacement()
        orch = orchestrator(tmp_path, placement, journal=False)
        await make_pool(orch)
        placement.crashing.add("p-0")
        ids = await orch.submit_many({"pool": "p", "max_attempts": 10}, [1])
        for _ in range(100):
            await asyncio.sleep(0.01)
            if (await orch.pool("p"))["state"] == "degraded":
                break
        info = await orch.pool("p")
        assert info["state"] == "degraded"
        assert info["agents"][0]["state"] == "failed"
        assert info["restarts"] == 2  # the intensity limit: 2 restarts, the third failure degrades
        assert [e["cause"] for e in info["recent_restarts"]] == ["process_killed"] * 3
        assert (await orch.health())["degraded_pools"] == ["p"]
        # An operator's scale clears the degraded state and starts a fresh agent.
        placement.crashing.clear()
        info = await orch.scale("p", 1)
        assert info["state"] == "ok" and info["size"] == 1
        assert (await orch.wait(ids[0], 5))[0] == "succeeded"
    asyncio.run(scenario())


def test_handler_errors_are_retried_when_asked_then_dead_lettered_and_resubmittable(tmp_path):
    async def scenario():
        orch = orchestrator(tmp_path, FakePlacement(), journal=False)
        spec = {**POOL, "retry": {"max_attempts": 3, "retry_exceptions": True,
                                  "backoff_initial_seconds": 0.001, "backoff_max_seconds": 0.001}}
        await make_pool(orch, spec)
        task_id, answer = await orch.run({"pool": "p"}, "bad")
        assert answer[0] == "failed"
        record = await orch.task(task_id)
        assert record["attempts"] == 3 and record["metadata"]["dead_letter"] == "true"
        assert [r["task_id"] for r in await orch.dead_letters()] == [task_id]
        again = await orch.resubmit(task_id)
        assert again["task_id"] != task_id and await orch.dead_letters() == []
        stats = (await orch.statistics())["counters"]
        assert stats["retried"] == 2 and stats["dead_lettered"] == 1
    asyncio.run(scenario())


def test_never_retry_types_fail_at_once(tmp_path):
    async def scenario():
        orch = orchestrator(tmp_path, FakePlacement(), journal=False)
        spec = {**POOL, "retry": {"max_attempts": 5, "retry_exceptions": True, "never_retry": ["ValueError"]}}
        await make_pool(orch, spec)
        task_id, answer = await orch.run({"pool": "p"}, "bad")
        assert answer[0] == "failed" and (await orch.task(task_id))["attempts"] == 1
    asyncio.run(scenario())


def test_a_restarted_orchestrator_recovers_pools_and_unfinished_tasks(tmp_path):
    async def first_life():
        placement = FakePlacement()
        placement.gate = asyncio.Event()  # nothing finishes: the orchestrator "dies" mid-run
        orch = orchestrator(tmp_path, placement)
        await make_pool(orch, {**POOL, "count": 2})
        done = await orch.submit_many({"pool": "p"}, ["early"])
        placement.gate.set()
        assert (await orch.wait(done[0], 5))[0] == "succeeded"
        placement.gate.clear()
        pending = await orch.submit_many({"pool": "p", "idempotency_key": "k1"}, ["x"])
        pending += await orch.submit_many({"pool": "p"}, ["y", "z"])
        await orch._journal.durable()
        return done[0], pending

    done, pending = asyncio.run(first_life())

    async def second_life():
        placement = FakePlacement()
        orch = orchestrator(tmp_path, placement)
        health = await orch.health()  # answers at once: the pool recovers in the background
        assert health["pools"] == 1 and health["recovering_pools"] == ["p"]
        await until_recovered(orch, "p")
        assert placement.activations == 2  # its hosts did not survive: agents started anew
        answers = await orch.wait_many(pending, 5)
        assert [a[:2] for a in answers] == [("succeeded", "x"), ("succeeded", "y"), ("succeeded", "z")]
        assert (await orch.statistics())["counters"]["recovered"] == 3
        # Finished before the crash: still known, with its result.
        assert (await orch.task(done))["result"] == "early"
        # The idempotency key still returns the first task.
        again = await orch.submit({"pool": "p", "idempotency_key": "k1"}, "x")
        assert again["task_id"] == pending[0]
    asyncio.run(second_life())


def test_a_corrupt_journal_stops_start_up_with_a_clear_error(tmp_path):
    journal_dir = tmp_path / "journal"
    journal_dir.mkdir()
    (journal_dir / "journal.sqlite3").write_bytes(b"this is not a database" * 100)

    async def scenario():
        orch = orchestrator(tmp_path, FakePlacement())
        with pytest.raises(JournalError, match="journal.sqlite3.*(corrupt|not a readable SQLite)"):
            await orch.health()
    asyncio.run(scenario())


def test_finished_tasks_are_pruned_from_the_journal(tmp_path):
    async def scenario():
        orch = orchestrator(tmp_path, FakePlacement(), journal_retention_count=1000)
        await make_pool(orch)
        ids = await orch.submit_many({"pool": "p"}, list(range(1500)))
        await orch.wait_many(ids)
        await orch._journal.durable()
        removed = orch._journal.prune(max_age_seconds=3600, max_finished=1000)
        assert removed == 500
        count = sqlite3.connect(orch._journal.path).execute("SELECT COUNT(*) FROM tasks").fetchone()[0]
        assert count == 1000
    asyncio.run(scenario())


def test_health_pings_are_spread_over_the_interval_not_sent_in_one_burst(tmp_path):
    async def scenario():
        placement = FakePlacement()
        placement.report_hosts = True
        orch = orchestrator(tmp_path, placement, journal=False, health_check_interval_seconds=0.4)
        await make_pool(orch, {**POOL, "count": 4})
        for _ in range(500):  # two rounds of four hosts
            await asyncio.sleep(0.01)
            if len(placement.health_pings) >= 8:
                break
        times = [at for at, _ in placement.health_pings[:8]]
        # asyncio.sleep never returns early: each ping waits a quarter of the interval.
        assert min(later - earlier for earlier, later in itertools.pairwise(times)) >= 0.09
        assert sorted(key for _, key in placement.health_pings[:4]) == [f"host-p-{i}" for i in range(4)]
    asyncio.run(scenario())
