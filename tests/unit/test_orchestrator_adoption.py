"""After a restart the orchestrator adopts the hosts that outlived it (fake placement, no Ray).

Each test runs two lives of an orchestrator on one journal and one placement: the
placement's hosts outlive the first life as detached host actors outlive a crash.
"""

import asyncio

from hive_ray._runtime._contracts import KeptOutcome
from hive_ray._runtime._orchestrator import Orchestrator
from hive_ray._task import Outcome
from tests.unit.fake_placement import FakePlacement
from tests.unit.test_orchestrator_supervision import POOL, make_pool, until_recovered


def orchestrator(tmp_path, placement, **settings):
    base = {"state_dir": str(tmp_path / "state"), "journal_dir": str(tmp_path / "journal"),
            "health_check_interval_seconds": 3600}
    return Orchestrator({**base, **settings}, placement=placement)


async def until(predicate, timeout=5.0):
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached"
        await asyncio.sleep(0.01)


def first_life(tmp_path, placement, count=1, hold=()):
    """Create pool ``p``; tasks with a payload in ``hold`` are still running when it 'dies'."""
    async def life():
        orch = orchestrator(tmp_path, placement)
        await make_pool(orch, {**POOL, "count": count})
        assert (await orch.run({"pool": "p"}, "before"))[1][0] == "succeeded"
        held = []
        if hold:
            placement.gate = asyncio.Event()
            held = await orch.submit_many({"pool": "p"}, list(hold))
            await until(lambda: all(placement.executions[t] for t in held))
        await orch._journal.durable()
        return held
        # asyncio.run ends here: the orchestrator is gone, its placement's hosts are not
    held = asyncio.run(life())
    placement.gate = None
    return held


def test_surviving_hosts_are_adopted_with_their_agents_instead_of_started_again(tmp_path):
    placement = FakePlacement()
    first_life(tmp_path, placement, count=2)
    assert placement.activations == 2

    async def second_life():
        orch = orchestrator(tmp_path, placement)
        info = await until_recovered(orch, "p")
        assert placement.activations == 2  # nothing started: both agents were adopted
        assert sorted(placement.adopted) == ["p-0", "p-1"]
        assert info["state"] == "ok" and sorted(a["agent_id"] for a in info["agents"]) == ["p-0", "p-1"]
        assert {a["state"] for a in info["agents"]} == {"ready"}
        assert (await orch.statistics())["counters"]["adopted_agents"] == 2
        assert (await orch.run({"pool": "p"}, "after"))[1][:2] == ("succeeded", "after")
        # New agents are numbered after the adopted ones.
        info = await orch.scale("p", 3)
        assert sorted(a["agent_id"] for a in info["agents"]) == ["p-0", "p-1", "p-2"]
    asyncio.run(second_life())


def test_a_task_running_on_an_adopted_host_finishes_there_and_is_recorded_once(tmp_path):
    placement = FakePlacement()
    [held] = first_life(tmp_path, placement, hold=["slow"])
    assert placement.running["p-0"].keys() == {held}

    async def second_life():
        placement.release = asyncio.Event()
        orch = orchestrator(tmp_path, placement)
        await until_recovered(orch, "p")
        record = await orch.task(held)
        assert (record["state"], record["agent_id"], record["attempts"]) == ("running", "p-0", 1)
        assert (await orch.pool("p"))["running"] == 1  # its slot is taken: nothing else goes there
        placement.release.set()
        assert (await orch.wait(held, 5))[:2] == ("succeeded", "slow")
        record = await orch.task(held)
        assert record["attempts"] == 1
        counters = (await orch.statistics())["counters"]
        assert counters["reclaimed"] == 1 and counters["duplicate_executions"] == 0
    asyncio.run(second_life())
    assert placement.executions[held] == 1  # never handed to an agent again


def test_an_outcome_a_host_kept_is_recorded_without_running_the_task_again(tmp_path):
    placement = FakePlacement()
    [held] = first_life(tmp_path, placement, hold=["kept"])
    # The host finished the batch after its orchestrator died; the outcome never arrived.
    envelope = placement.running["p-0"].pop(held)
    placement.kept["p-0"] = [KeptOutcome(agent_id="p-0", attempt=envelope.attempt,
                                         outcome=Outcome(task_id=held, status="ok", value="from the host"))]

    async def second_life():
        orch = orchestrator(tmp_path, placement)
        await until_recovered(orch, "p")
        assert (await orch.wait(held, 5))[:2] == ("succeeded", "from the host")
        assert (await orch.task(held))["attempts"] == 1
    asyncio.run(second_life())
    assert placement.executions[held] == 1


def test_tasks_of_a_host_that_did_not_survive_run_again_on_a_new_agent(tmp_path):
    placement = FakePlacement()
    [held] = first_life(tmp_path, placement, hold=["again"])
    placement.active.discard("p-0")  # its host died with the orchestrator

    async def second_life():
        orch = orchestrator(tmp_path, placement)
        info = await until_recovered(orch, "p")
        assert [a["agent_id"] for a in info["agents"]] == ["p-0"] and placement.activations == 2
        assert (await orch.wait(held, 5))[:2] == ("succeeded", "again")
    asyncio.run(second_life())
    assert placement.executions[held] == 2  # at-least-once: the first run died with its host


def test_a_host_that_does_not_answer_adoption_is_stopped_and_its_tasks_run_elsewhere(tmp_path):
    placement = FakePlacement()
    [held] = first_life(tmp_path, placement, hold=["stuck"])
    placement.unadoptable.add("host-p-0")

    async def second_life():
        orch = orchestrator(tmp_path, placement)
        await until_recovered(orch, "p")
        assert placement.stopped_hosts == ["host-p-0"] and placement.adopted == []
        assert (await orch.wait(held, 5))[:2] == ("succeeded", "stuck")
        assert [e["state"] for e in (await orch.events())["events"] if e["state"] == "host_lost"] == ["host_lost"]
        await orch._journal.durable()
        assert list(orch._journal.hosts()) == ["host-p-0"]  # the replacement's record, under the same key
    asyncio.run(second_life())


def test_calls_are_answered_while_a_pool_is_still_recovering(tmp_path):
    placement = FakePlacement()
    first_life(tmp_path, placement)

    async def second_life():
        placement.adopt_gate = asyncio.Event()  # its host takes its time to answer
        orch = orchestrator(tmp_path, placement)
        health = await orch.health()
        assert health["recovering_pools"] == ["p"]
        assert (await orch.pool("p"))["state"] == "recovering"
        accepted = await orch.submit({"pool": "p"}, "queued meanwhile")
        assert accepted["state"] == "queued"
        scaling = asyncio.ensure_future(orch.scale("p", 2))  # waits for the adoption, then counts it
        await asyncio.sleep(0.05)
        assert not scaling.done()
        placement.adopt_gate.set()
        info = await scaling
        assert sorted(a["agent_id"] for a in info["agents"]) == ["p-0", "p-1"]
        assert (await orch.wait(accepted["task_id"], 5))[:2] == ("succeeded", "queued meanwhile")
        assert (await until_recovered(orch, "p"))["state"] == "ok"
    asyncio.run(second_life())


def test_stopping_a_recovering_pool_stops_the_hosts_being_adopted(tmp_path):
    placement = FakePlacement()
    first_life(tmp_path, placement)

    async def second_life():
        placement.adopt_gate = asyncio.Event()
        orch = orchestrator(tmp_path, placement)
        await orch.health()
        await orch.stop_pool("p")
        await until(lambda: placement.stopped_hosts == ["host-p-0"])
        await orch._journal.durable()
        assert placement.active == set() and orch._journal.hosts() == {}
    asyncio.run(second_life())


def test_hosts_recorded_for_a_pool_that_no_longer_exists_are_stopped(tmp_path):
    placement = FakePlacement()

    async def first_life():
        orch = orchestrator(tmp_path, placement)
        await orch.health()
        # A host whose pool's declaration is gone (e.g. stopped just before the crash).
        orch._journal.record_host("host-x-0", {"name": "host-x-0", "pool": "x", "number": 0, "agent": "x-0"})
        await orch._journal.durable()
    asyncio.run(first_life())

    async def second_life():
        orch = orchestrator(tmp_path, placement)
        await orch.health()
        await until(lambda: placement.stopped_hosts == ["host-x-0"])
        await orch._journal.durable()
        assert orch._journal.hosts() == {}
    asyncio.run(second_life())
