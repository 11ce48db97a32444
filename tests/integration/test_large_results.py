"""Results above max_result_bytes_in_memory travel through Ray's object store, on a real local Ray.

The limit is lowered to 1 KiB here so that a few megabytes exercise the path;
the 300 MB result is the slow end-to-end test in tests/e2e/test_large_results.py.
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading

import pytest

from hive_ray import Agent, ResultLostError, TaskFailedError, TaskState
from hive_ray._results import StoredResult

pytestmark = pytest.mark.ray

LIMIT = 1024


@pytest.fixture
def hive_overrides() -> dict[str, object]:
    return {"max_result_bytes_in_memory": LIMIT}


class Inflate(Agent):
    """Returns ``payload`` bytes; the payload "lock" returns something that cannot be pickled."""

    agent_type = "inflate-test"

    def handle(self, task):
        if task.payload == "lock":
            return threading.Lock()
        return bytes(range(256)) * (task.payload // 256)


def test_a_result_above_the_limit_arrives_through_every_way_of_reading_it(isolated_hive):
    hive = isolated_hive
    hive.spawn(Inflate, count=2, pool="big")
    size = 5 * 1024 * 1024
    expected = bytes(range(256)) * (size // 256)
    assert hive.run(pool="big", payload=size) == expected
    handle = hive.submit(pool="big", payload=size)
    assert handle.result(timeout=60) == expected
    assert hive.task(handle.task_id).result == expected
    assert hive.map(None, [size, 256, 2 * size], pool="big", progress=False) == \
        [expected, bytes(range(256)), expected * 2]
    assert asyncio.run(hive.run_async(pool="big", payload=size)) == expected
    assert hive.pool("big").restarts == 0


def test_a_result_that_cannot_be_pickled_fails_its_own_task_only(isolated_hive):
    hive = isolated_hive
    hive.spawn(Inflate, count=1, pool="locks")
    handles = hive.submit_many(None, [256, "lock", 512], pool="locks")
    with pytest.raises(TaskFailedError, match="UnpicklableResult: the handler returned a lock that cannot be "
                                              "pickled"):
        handles[1].result(timeout=60)
    assert handles[0].result(timeout=60) == bytes(range(256))
    assert handles[2].result(timeout=60) == bytes(range(256)) * 2
    assert hive.pool("locks").restarts == 0


def test_a_large_result_is_gone_after_an_orchestrator_restart_and_says_so(isolated_hive):
    hive = isolated_hive
    hive.spawn(Inflate, count=1, pool="gone")
    handle = hive.submit(pool="gone", payload=64 * 1024)
    assert len(handle.result(timeout=60)) == 64 * 1024
    hive.submit(pool="gone", payload=1)  # durable when it answers: so is the ending recorded before it
    os.kill(hive.statistics()["pid"], signal.SIGKILL)  # Ray restarts it; the journal has the marker
    with pytest.raises(ResultLostError, match=r"succeeded, but its result \([\d,]+ bytes, kept in Ray's object "
                                              r"store.*max_result_bytes_in_memory.*run the task again"):
        hive.result(handle.task_id, timeout=120)
    record = hive.task(handle.task_id)
    assert record.state == TaskState.SUCCEEDED and type(record.result) is StoredResult
    assert record.result.size >= 64 * 1024
