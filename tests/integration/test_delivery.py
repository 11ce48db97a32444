"""Delivery at the edges on a real local Ray: queue bounds, capacity, map, idempotency."""

from __future__ import annotations

import pytest

from hive_ray import CapacityError, OverloadedError

pytestmark = pytest.mark.ray


def test_a_burst_never_admits_more_than_concurrency_plus_the_queue_bound(hive, unique_name):
    # The review's burst: one agent of concurrency 100, max_queue 50, a pool whose first
    # tasks were quick (so batching hands the agent more than its concurrency).
    hive.spawn("sleep", count=1, pool=unique_name, max_queue=50)
    hive.map(None, [{"seconds": 0}] * 200, pool=unique_name, progress=False)
    admitted, refusals = [], []
    for _ in range(750):
        try:
            admitted.append(hive.submit(pool=unique_name, payload={"seconds": 30}))
        except OverloadedError as error:
            refusals.append(error)
    try:
        assert len(admitted) == 150, len(admitted)
        info = hive.pool(unique_name)
        assert info.running <= 100 and info.running + info.queued == 150
        assert all(error.retry_after >= 0.1 for error in refusals)
    finally:
        hive.stop(unique_name)


def test_map_over_a_small_queue_finishes_without_overloading_it(hive, unique_name):
    hive.spawn("echo", count=1, pool=unique_name, max_queue=20)
    assert hive.map(None, range(500), pool=unique_name, chunk_size=64, progress=False) == list(range(500))
    hive.stop(unique_name)


def test_cancel_many_cancels_the_unfinished_and_skips_the_rest(hive, unique_name):
    hive.spawn("sleep", count=1, pool=unique_name)
    done = hive.submit(pool=unique_name, payload={"seconds": 0})
    done.result(timeout=30)
    running = [hive.submit(pool=unique_name, payload={"seconds": 60}) for _ in range(3)]
    assert hive._call("cancel_many", [done.task_id, "no-such-task", *[h.task_id for h in running]]) == 3
    assert {h.status().state.value for h in running} == {"cancelled"}
    assert done.status().state.value == "succeeded"
    hive.stop(unique_name)


def test_a_pool_size_the_cluster_cannot_hold_is_refused_and_the_orchestrator_keeps_answering(
        hive, unique_name):
    hive.spawn("echo", count=1, pool=unique_name)
    with pytest.raises(CapacityError, match="cannot have 22,605 agents"):
        hive.scale(unique_name, 22_605)
    assert hive.pool(unique_name).desired == 1
    assert hive._call("health")["status"] == "ok"
    hive.stop(unique_name)


@pytest.fixture
def hive_overrides() -> dict[str, object]:
    return {"finished_retention_count": 100}


def test_an_idempotent_run_answers_from_the_journal_once_its_task_left_memory(isolated_hive, unique_name):
    hive = isolated_hive
    hive.spawn("echo", count=1, pool=unique_name)
    first = hive.run(pool=unique_name, payload={"n": 1}, idempotency_key="once")
    hive.map(None, range(300), pool=unique_name, progress=False)  # pushes it out of memory
    before = hive.statistics()["counters"]["submitted"]
    again = hive.run(pool=unique_name, payload={"n": 1}, idempotency_key="once", wait_timeout=10)
    assert again == first == {"n": 1}
    assert hive.statistics()["counters"]["submitted"] == before  # answered, not run again
