"""The core runtime on a real local Ray: spawn, submit, map, delegation, cancel, timeouts."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time

import pytest
from hive_ray.actors.compute import expected_digest

from hive_ray import (
    Agent,
    NoRouteError,
    TaskCancelledError,
    TaskFailedError,
    TaskState,
    TaskTimeoutError,
    UnknownAgentTypeError,
)

pytestmark = pytest.mark.ray

#: Tests of the paths a call takes run twice: over the data plane and over Ray calls alone
#: (an orchestrator with ``data_plane: false``), so that the fallback is proven too.
both_transports = pytest.mark.parametrize("hive", ["stream", "ray-calls"], indirect=True)


@pytest.fixture(scope="module")
def ray_calls_hive(private_hive, tmp_path_factory):
    """A client of a private orchestrator whose data plane is off: everything is a Ray call."""
    state = tmp_path_factory.mktemp("ray-calls")
    settings = {"orchestrator_name": "orchestrator-ray-calls", "data_plane": False,
                "state_dir": str(state), "journal_dir": str(state / "journal")}
    with private_hive(settings) as client:
        assert client._channel is None and client.statistics()["data_plane"] is None
        yield client


@pytest.fixture
def hive(request, hive):
    """The session's client, or (``ray-calls``) one whose every call and task is a Ray call."""
    if getattr(request, "param", "stream") == "ray-calls":
        return request.getfixturevalue("ray_calls_hive")
    assert hive._channel is not None, "the session's client should use the data plane"
    return hive


class Counter(Agent):
    """Keeps state across tasks and records its hooks: proves actor semantics."""

    agent_type = "counter-test"
    capabilities = frozenset({"counting"})

    def setup(self):
        self.state["count"] = 0
        self.state["pid"] = os.getpid()

    def handle(self, task):
        self.state["count"] += 1
        if task.payload == "fail":
            raise ValueError("asked to fail")
        return {"count": self.state["count"], "agent": self.context.agent_id, "pid": self.state["pid"]}


class AsyncSleeper(Agent):
    agent_type = "async-sleeper-test"

    async def handle(self, task):
        await asyncio.sleep(task.payload)
        return "woke"


def wait_for_state(hive, task_id, states, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        record = hive.task(task_id)
        if record.state.value in states:
            return record
        time.sleep(0.02)
    raise AssertionError(f"task {task_id} never reached {states}: {hive.task(task_id)}")


@both_transports
def test_spawn_submit_and_agent_state(hive, unique_name):
    pool = hive.spawn(Counter, count=1, pool=unique_name)
    assert pool.size == 1 and pool.agents[0].state == "ready"
    results = [hive.submit(pool=unique_name, payload=i).result(timeout=30) for i in range(3)]
    assert [r["count"] for r in results] == [1, 2, 3]  # one instance, state kept between tasks
    assert results[0]["pid"] != os.getpid()  # it runs in its own process
    [host] = hive.hosts(unique_name)
    assert host["data_plane"]["transport"] == ("stream" if hive.settings.data_plane else "ray")
    assert "Pool" in repr(pool) and "<table>" in pool._repr_html_()


@both_transports
def test_map_keeps_input_order_over_many_agents(hive, unique_name):
    hive.spawn("echo", count=4, pool=unique_name)
    items = list(range(3000))
    assert hive.map(None, items, pool=unique_name, chunk_size=250, progress=False) == items


def test_compute_results_are_checkable(hive, unique_name):
    hive.spawn("compute", count=2, pool=unique_name)
    jobs = [{"rounds": 500 + i, "seed": f"s{i}"} for i in range(6)]
    for job, result in zip(jobs, hive.map(None, jobs, pool=unique_name, progress=False), strict=True):
        assert result["digest"] == expected_digest(job["rounds"], job["seed"])


def test_coordinator_delegates_to_other_agents(hive, unique_name):
    hive.spawn("compute", count=2, pool=f"{unique_name}-workers")
    hive.spawn("coordinator", count=1, pool=unique_name)
    job = {"items": [{"rounds": 10 * (i + 1)} for i in range(10)], "agent_type": "compute", "reduce": "sum"}
    summary = hive.submit(pool=unique_name, payload=job).result(timeout=60)
    assert summary == {"sub_tasks": 10, "agent_type": "compute", "result": 550}
    children = [r for r in hive.tasks(limit=200) if r.metadata.get("parent_task_id")]
    assert len(children) >= 10


@both_transports
def test_handler_errors_cross_processes_with_their_type(hive, unique_name):
    hive.spawn(Counter, count=1, pool=unique_name)
    handle = hive.submit(pool=unique_name, payload="fail")
    with pytest.raises(TaskFailedError, match="ValueError: asked to fail") as raised:
        handle.result(timeout=30)
    assert raised.value.error["type"] == "ValueError"
    assert "Traceback" in raised.value.error["traceback"]
    record = hive.task(handle.task_id)
    assert record.state == TaskState.FAILED and record.error["message"] == "asked to fail"


@both_transports
def test_errors_raised_in_the_orchestrator_reach_the_client_intact(hive):
    with pytest.raises(UnknownAgentTypeError, match="no agent type 'no-such-type'; known types: .*echo"):
        hive.spawn("no-such-type")
    with pytest.raises(NoRouteError, match="no pool offers capability 'teleport'"):
        hive.submit(capability="teleport", payload=1)


@both_transports
def test_cancel_queued_and_running_tasks(hive, unique_name):
    hive.spawn(AsyncSleeper, count=1, pool=unique_name)
    running = hive.submit(pool=unique_name, payload=30)
    queued = hive.submit(pool=unique_name, payload=30)
    wait_for_state(hive, running.task_id, {"running"})
    assert queued.cancel().state == TaskState.CANCELLED
    assert running.cancel().state == TaskState.CANCELLED
    with pytest.raises(TaskCancelledError):
        running.result(timeout=10)
    # The agent is free again at once: its async handler was really cancelled.
    assert hive.submit(pool=unique_name, payload=0).result(timeout=10) == "woke"


@both_transports
def test_timeout_ends_a_task_that_runs_too_long(hive, unique_name):
    hive.spawn(AsyncSleeper, count=1, pool=unique_name)
    handle = hive.submit(pool=unique_name, payload=30, timeout=0.3)
    with pytest.raises(TaskTimeoutError, match="did not finish within its timeout"):
        handle.result(timeout=10)
    assert hive.task(handle.task_id).state == TaskState.TIMED_OUT


@both_transports
def test_result_timeout_leaves_the_task_running(hive, unique_name):
    hive.spawn(AsyncSleeper, count=1, pool=unique_name)
    handle = hive.submit(pool=unique_name, payload=0.5)
    with pytest.raises(TaskTimeoutError, match="keeps running"):
        handle.result(timeout=0.01)
    assert handle.result(timeout=10) == "woke"


def test_affinity_keeps_a_key_on_one_agent(hive, unique_name):
    hive.spawn(Counter, count=3, pool=unique_name, policy="affinity")
    agents = {hive.submit(pool=unique_name, payload=i, affinity_key="user-7").result(timeout=30)["agent"]
              for i in range(8)}
    assert len(agents) == 1
    spread = {hive.submit(pool=unique_name, payload=i, affinity_key=f"user-{i}").result(timeout=30)["agent"]
              for i in range(12)}
    assert len(spread) > 1


def test_routing_by_capability(hive, unique_name):
    capability = f"skill-{unique_name}"
    skilled = type("Skilled", (Counter,), {"capabilities": frozenset({capability})})
    hive.spawn(skilled, count=1, pool=f"{unique_name}-skilled")
    hive.spawn(Counter, count=1, pool=f"{unique_name}-plain")
    results = [hive.submit(capability=capability, payload=i).result(timeout=30) for i in range(5)]
    assert {r["agent"] for r in results} == {f"{unique_name}-skilled-0"}


def test_priority_orders_the_backlog(hive, unique_name):
    hive.spawn(AsyncSleeper, count=1, pool=unique_name)
    blocker = hive.submit(pool=unique_name, payload=0.5)
    wait_for_state(hive, blocker.task_id, {"running"})
    low = hive.submit(pool=unique_name, payload=0, priority=0)
    high = hive.submit(pool=unique_name, payload=0, priority=10)
    low.result(timeout=10)
    assert hive.task(high.task_id).started_at <= hive.task(low.task_id).started_at


@both_transports
def test_await_works_in_async_code(hive, unique_name):
    hive.spawn("echo", count=1, pool=unique_name)

    async def main():
        handle = hive.submit(pool=unique_name, payload="awaited")
        return await handle, await hive.run_async(pool=unique_name, payload="run")

    assert asyncio.run(main()) == ("awaited", "run")


def test_scale_and_stop(hive, unique_name):
    hive.spawn("echo", count=1, pool=unique_name)
    assert hive.scale(unique_name, 3).size == 3
    assert len(hive.agents(unique_name)) == 3
    assert hive.scale(unique_name, 1).size == 1
    hive.stop(unique_name)
    assert unique_name not in {p.name for p in hive.pools()}


def test_a_second_driver_finds_the_same_orchestrator(hive, unique_name):
    import ray

    hive.spawn("echo", count=1, pool=unique_name)
    handle = hive.submit(pool=unique_name, payload="from the first driver")
    handle.result(timeout=30)
    script = (
        "import sys\n"
        "from hive_ray import Hive\n"
        f"hive = Hive.connect(settings={{'state_dir': {str(hive.settings.state_dir)!r}}})\n"
        f"record = hive.task({handle.task_id!r})\n"
        f"print(record.result, [p.name for p in hive.pools()].count({unique_name!r}))\n"
        f"print(hive.submit(pool={unique_name!r}, payload='from the second').result(timeout=30))\n"
    )
    env = dict(os.environ, RAY_ADDRESS=ray.get_runtime_context().gcs_address)
    output = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert output.returncode == 0, output.stderr[-2000:]
    lines = output.stdout.strip().splitlines()
    assert lines[-2] == "from the first driver 1"
    assert lines[-1] == "from the second"


@both_transports
def test_killed_agent_process_is_restarted_and_its_task_completes(hive, unique_name):
    import signal

    hive.spawn(AsyncSleeper, count=1, pool=unique_name)
    handle = hive.submit(pool=unique_name, payload=1.0)
    wait_for_state(hive, handle.task_id, {"running"})
    [agent] = hive.agents(unique_name)
    os.kill(agent.pid, signal.SIGKILL)
    assert handle.result(timeout=60) == "woke"
    record = hive.task(handle.task_id)
    assert record.attempts == 2
    [restarted] = hive.agents(unique_name)
    assert restarted.restarts == 1 and restarted.pid != agent.pid
