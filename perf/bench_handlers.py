"""What running a synchronous handler on a worker thread costs, against an async handler.

Synchronous handlers always run on a worker thread (a whole batch per hop); async
handlers run on the host's event loop, as quick sync handlers once did. Both echo
their payload, measured side by side in interleaved blocks of one run:

- ``sync_handler_run_latency_p50_ms``: ``hive.run`` on one sync echo agent,
  against the same on one async echo agent.
- ``sync_handler_throughput_tasks_per_s``: ``hive.map`` of 5,000 tasks over 8
  sync echo agents, against 8 async ones.

Starts its own local Ray (never a cluster some other run left behind).
"""

from __future__ import annotations

import logging
import tempfile
import time
from typing import Any

from _measure import percentile, row

from hive_ray import Agent


class SyncEcho(Agent):
    agent_type = "bench-sync-echo"

    def handle(self, task: Any) -> Any:
        return task.payload


class AsyncEcho(Agent):
    agent_type = "bench-async-echo"

    async def handle(self, task: Any) -> Any:
        return task.payload


def run(quick: bool = False) -> list[dict[str, Any]]:
    import ray

    from hive_ray import Hive

    blocks, per_block, tasks = (6, 100, 5000) if quick else (16, 200, 5000)
    state = tempfile.mkdtemp(prefix="hive-bench-handlers-")
    ray.init(address="local", include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False)
    try:
        hive = Hive.connect(settings={"state_dir": state, "journal_dir": f"{state}/journal"})
        kinds = {"sync": SyncEcho, "async": AsyncEcho}
        for name, cls in kinds.items():
            hive.spawn(cls, count=1, pool=f"{name}-1")
            hive.spawn(cls, count=8, pool=f"{name}-8")
            for i in range(300):  # warm up
                hive.run(pool=f"{name}-1", payload=i)
            hive.map(None, list(range(2000)), pool=f"{name}-8", progress=False)
        latency: dict[str, list[float]] = {name: [] for name in kinds}
        rates: dict[str, list[float]] = {name: [] for name in kinds}
        for _ in range(blocks):
            for name in kinds:
                for i in range(per_block):
                    started = time.perf_counter()
                    hive.run(pool=f"{name}-1", payload=i)
                    latency[name].append(time.perf_counter() - started)
                started = time.perf_counter()
                hive.map(None, list(range(tasks)), pool=f"{name}-8", progress=False)
                rates[name].append(tasks / (time.perf_counter() - started))
        hive.close()
    finally:
        ray.shutdown()
    return [
        row("sync_handler_run_latency_p50_ms", percentile(latency["sync"], 0.5) * 1000, "ms",
            "async handler", percentile(latency["async"], 0.5) * 1000),
        row("sync_handler_throughput_tasks_per_s", max(rates["sync"]), "tasks/s",
            "async handler", max(rates["async"]), goal="ratio >= 0.9"),
    ]
