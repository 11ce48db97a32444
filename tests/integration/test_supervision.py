"""Supervision and durability on a real local Ray: every accepted task reaches an end."""

from __future__ import annotations

import os
import signal
import time

import pytest

from hive_ray import Agent, OverloadedError, TaskState

pytestmark = pytest.mark.ray


@pytest.fixture
def hive_overrides() -> dict[str, object]:
    return {"health_check_interval_seconds": 0.5, "health_check_timeout_seconds": 2.0}


class Suicidal(Agent):
    """Kills its own process on every task: a crash loop."""

    agent_type = "suicidal-test"

    def handle(self, task):
        os.kill(os.getpid(), signal.SIGKILL)


class Stubborn(Agent):
    """A synchronous handler that ignores cancellation for a long time."""

    agent_type = "stubborn-test"

    def handle(self, task):
        time.sleep(task.payload)
        return "finally"


class Busy(Agent):
    """A synchronous handler busy for a while: on a worker thread, it leaves the loop free."""

    agent_type = "busy-test"

    def handle(self, task):
        time.sleep(task.payload)
        return "done"


class Napper(Agent):
    agent_type = "napper-test"
    concurrent = True
    max_concurrency = 50

    async def handle(self, task):
        import asyncio

        await asyncio.sleep(task.payload)
        return task.payload




def test_crash_looping_agent_is_given_up_and_its_pool_reported_degraded(isolated_hive, wait_until):
    hive = isolated_hive
    hive.spawn(Suicidal, count=1, pool="loop",
               restart={"max_restarts": 2, "window_seconds": 60, "backoff_initial_seconds": 0.05},
               retry={"max_attempts": 10})
    handle = hive.submit(pool="loop", payload=1)
    assert wait_until(lambda: hive.pool("loop").state == "degraded", 60)
    pool = hive.pool("loop")
    assert pool.restarts == 2 and pool.agents[0].state == "failed"
    causes = [event["cause"] for event in hive.restarts("loop")]
    assert causes == ["process_killed"] * 3
    assert hive.task(handle.task_id).state == TaskState.QUEUED  # not lost: waiting for an agent


def test_a_timed_out_task_on_an_unresponsive_agent_restarts_the_agent(isolated_hive, wait_until):
    hive = isolated_hive
    hive.spawn(Stubborn, count=1, pool="stubborn")
    [before] = hive.agents("stubborn")
    handle = hive.submit(pool="stubborn", payload=60, timeout=0.5)
    assert hive.task(handle.task_id).state in (TaskState.QUEUED, TaskState.RUNNING)
    assert wait_until(lambda: hive.agents("stubborn")[0].restarts == 1, 30)
    assert hive.task(handle.task_id).state == TaskState.TIMED_OUT
    assert [event["cause"] for event in hive.restarts("stubborn")] == ["timeout_unresponsive"]
    assert hive.agents("stubborn")[0].pid != before.pid
    assert hive.submit(pool="stubborn", payload=0).result(timeout=30) == "finally"


def test_a_busy_agent_does_not_fail_its_health_checks(isolated_hive):
    hive = isolated_hive
    hive.spawn(Busy, count=1, pool="busy")
    # Busy for 4 s, longer than the 2 s health timeout: health checks run on their own
    # concurrency group, and the handler's thread leaves the event loop's heartbeat alone.
    # (An async handler that blocks the loop that long is restarted: see test_poison.py.)
    assert hive.submit(pool="busy", payload=4).result(timeout=30) == "done"
    assert hive.restarts("busy") == []


def test_an_orchestrator_killed_mid_run_recovers_every_accepted_task(isolated_hive):
    import ray

    hive = isolated_hive
    hive.spawn(Napper, count=2, pool="nap")
    handles = [hive.submit(pool="nap", payload=0.5) for _ in range(40)]
    done_before = hive.submit(pool="nap", payload=0).result(timeout=30)
    assert done_before == 0
    os.kill(hive.statistics()["pid"], signal.SIGKILL)  # Ray restarts it (max_restarts=-1)
    results = [handle.result(timeout=120) for handle in handles]  # clients keep waiting
    assert results == [0.5] * 40
    stats = hive.statistics()
    assert stats["counters"]["recovered"] >= 1
    assert stats["recovery_seconds"] < 10
    assert hive.pool("nap").size == 2  # re-created at its declared size
    assert ray.get_actor(hive.settings.orchestrator_name, namespace="hive") is not None


def test_idempotent_resubmission_returns_the_first_task(isolated_hive):
    hive = isolated_hive
    hive.spawn("echo", count=1, pool="idem")
    first = hive.submit(pool="idem", payload=1, idempotency_key="order-42")
    again = hive.submit(pool="idem", payload=1, idempotency_key="order-42")
    assert again.task_id == first.task_id
    assert first.result(timeout=30) == 1


def test_overload_fails_fast_with_a_retry_hint(isolated_hive, wait_until):
    hive = isolated_hive
    hive.spawn(Stubborn, count=1, pool="small", max_queue=5)
    hive.submit(pool="small", payload=3)
    assert wait_until(lambda: hive.pool("small").running == 1)
    hive.submit_many(None, [0] * 5, pool="small")  # the queue is now full
    started = time.monotonic()
    with pytest.raises(OverloadedError, match="pool 'small' is overloaded") as raised:
        hive.submit(pool="small", payload=0)
    assert time.monotonic() - started < 2
    assert raised.value.retry_after > 0


def test_a_journal_directory_that_cannot_be_used_stops_start_up(ray_session, tmp_path):
    from hive_ray import Hive, JournalError

    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the journal directory should be")
    with pytest.raises(JournalError, match="set HIVE_JOURNAL_DIR to a writable directory"):
        Hive.connect(settings={"orchestrator_name": "broken-journal", "journal_dir": str(blocker / "j")})
    import ray

    ray.kill(ray.get_actor("broken-journal", namespace="hive"), no_restart=True)
