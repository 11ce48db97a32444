"""One bad task or handler cannot hurt its siblings, on a real local Ray.

A task that kills its process is dead-lettered without costing the other
tasks on its host an attempt; a synchronous handler that turns slow does not
hold up a sibling on the same host; a handler that blocks the host's event
loop fails the host's health check and the host is restarted.
"""

from __future__ import annotations

import asyncio
import os
import uuid

import pytest

from hive_ray import Agent, TaskFailedError, TaskState

pytestmark = pytest.mark.ray


@pytest.fixture
def hive_overrides() -> dict[str, object]:
    return {"health_check_interval_seconds": 0.5, "health_check_timeout_seconds": 2.0}


def _gate_class():
    import ray

    @ray.remote(num_cpus=0)
    class Gate:
        """An event other processes wait on, opened by the test."""

        def __init__(self) -> None:
            self._open = asyncio.Event()

        async def wait(self) -> bool:
            await self._open.wait()
            return True

        async def open(self) -> None:
            self._open.set()

    return Gate


@pytest.fixture
def gate(ray_session):
    import ray

    name = f"gate-{uuid.uuid4().hex}"
    actor = _gate_class().options(name=name, namespace="hive").remote()
    yield name
    ray.get(actor.open.remote())  # nothing stays blocked on it
    ray.kill(actor)


def open_gate(name: str) -> None:
    import ray

    ray.get(ray.get_actor(name, namespace="hive").open.remote(), timeout=60)


def wait_for_gate(name: str) -> None:
    """Blocks the calling thread (a worker thread, or the event loop) until the gate opens."""
    import ray

    ray.get(ray.get_actor(name, namespace="hive").wait.remote(), timeout=300)


class Poisonable(Agent):
    """Echoes its payload; the payload "poison" kills its whole process."""

    agent_type = "poisonable-test"

    def handle(self, task):
        if task.payload == "poison":
            os._exit(1)
        return task.payload


class TurnsSlow(Agent):
    """Quick, until a task asks it to wait for a gate (a sync handler that turns slow)."""

    agent_type = "turns-slow-test"

    def handle(self, task):
        if isinstance(task.payload, str):
            wait_for_gate(task.payload)
            return "released"
        return task.payload


class LoopBlocker(Agent):
    """An async handler that blocks its event loop until a gate opens (a bad handler)."""

    agent_type = "loop-blocker-gate-test"

    async def handle(self, task):
        wait_for_gate(task.payload)  # deliberately blocking: no await
        return "done"


def test_a_task_that_kills_its_process_is_dead_lettered_and_no_sibling_loses_an_attempt(isolated_hive):
    hive = isolated_hive
    hive.spawn(Poisonable, count=4, pool="packed", placement="packed", agents_per_host=4,
               retry={"max_attempts": 2},
               restart={"max_restarts": 10, "window_seconds": 60, "backoff_initial_seconds": 0.05})
    payloads = [*range(100), "poison", *range(100, 199)]
    handles = hive.submit_many(None, payloads, pool="packed")
    poison = handles[100]
    with pytest.raises(TaskFailedError, match="while this task ran alone"):
        poison.result(timeout=240)
    assert [handle.result(timeout=240) for handle in handles if handle is not poison] == \
        [p for p in payloads if p != "poison"]
    record = hive.task(poison.task_id)
    assert record.state == TaskState.FAILED and record.attempts == 2
    assert [r.task_id for r in hive.dead_letters()] == [poison.task_id]
    assert {hive.task(h.task_id).attempts for h in handles if h is not poison} == {1}
    pool = hive.pool("packed")
    assert pool.state == "ok" and pool.suspects == 0
    assert 2 <= pool.restarts <= 3  # two crashes alone, and perhaps one with company first


def test_a_sync_handler_that_turns_slow_does_not_hold_up_a_sibling_on_its_host(hive, unique_name, gate,
                                                                               wait_until):
    hive.spawn(TurnsSlow, count=2, pool=unique_name, placement="packed", agents_per_host=2)
    assert hive.map(None, list(range(200)), pool=unique_name, progress=False) == list(range(200))  # quick
    slow = hive.submit(pool=unique_name, payload=gate, affinity_key="slow")
    assert wait_until(lambda: hive.task(slow.task_id).state == TaskState.RUNNING, 60)
    # A new key goes to the least loaded agent: the sibling on the same host.
    assert hive.run(pool=unique_name, payload=7, affinity_key="quick", wait_timeout=60) == 7
    assert hive.task(slow.task_id).state == TaskState.RUNNING
    open_gate(gate)
    assert slow.result(timeout=60) == "released"


def test_a_handler_that_blocks_the_event_loop_fails_the_health_check_and_the_host_restarts(
        isolated_hive, gate, wait_until):
    hive = isolated_hive
    hive.spawn(LoopBlocker, count=1, pool="blocker")
    [before] = hive.agents("blocker")
    handle = hive.submit(pool="blocker", payload=gate)
    assert wait_until(lambda: hive.restarts("blocker"), 120)
    [restart] = hive.restarts("blocker")
    assert restart["cause"] == "health_check_failed" and "event loop has not run" in restart["detail"]
    open_gate(gate)
    assert handle.result(timeout=120) == "done"  # delivered again, alone: the gate is open now
    assert hive.task(handle.task_id).attempts == 2
    assert hive.agents("blocker")[0].pid != before.pid
