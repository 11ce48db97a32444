"""A 300 MB result arrives through ``hive.run`` and costs neither a host nor the stream.

The orchestrator's limit is raised far above the data plane's frame limit (256 MiB)
on purpose: a result that big once closed the host's stream and got the host killed.
Now the frame budget sends it through Ray's object store whatever the setting says,
and the value never enters the orchestrator's memory.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from hive_ray import Agent

pytestmark = [pytest.mark.slow, pytest.mark.ray]

SIZE = 300 * 1024 * 1024


@pytest.fixture
def hive_overrides() -> dict[str, object]:
    return {"max_result_bytes_in_memory": 1 << 40}


class Huge(Agent):
    agent_type = "huge-test"

    def handle(self, task):
        return b"h" * task.payload


def peak_rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmHWM for process {pid}")


def test_a_300_mb_result_arrives_and_costs_no_host(isolated_hive):
    hive = isolated_hive
    hive.spawn(Huge, count=1, pool="huge")
    orchestrator = hive.statistics()["pid"]
    before = peak_rss_bytes(orchestrator)
    value = hive.run(pool="huge", payload=SIZE, wait_timeout=600)
    assert len(value) == SIZE and value.count(b"h") == SIZE
    del value
    assert hive.pool("huge").restarts == 0
    assert hive.run(pool="huge", payload=10) == b"h" * 10  # the host and its stream still serve
    assert peak_rss_bytes(orchestrator) - before < 100 * 1024 * 1024  # never in the orchestrator's heap
