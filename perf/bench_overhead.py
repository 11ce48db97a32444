"""What hive-ray costs on top of plain Ray, measured side by side in one run.

- ``single_task_latency_p50_ms``: ``hive.run("echo", x)`` (submit, queue, dispatch,
  record, result) on an idle system, against one plain actor call round trip.
- ``submit_result_latency_p50_ms``: ``hive.submit(...).result()``, the two-step
  form, against the same baseline.
- ``throughput_tasks_per_s``: 5,000 echo tasks over 8 echo agents with
  ``hive.map``, against ``ray.util.ActorPool.map`` over 8 plain actors.
- ``import_seconds``: ``import hive_ray`` in a fresh process, against ``import ray``.

Latency samples of both sides are taken in alternating blocks so that machine
noise hits both equally.
"""

from __future__ import annotations

import time
from typing import Any

from _measure import fresh_process_seconds, percentile, row


def run(quick: bool = False) -> list[dict[str, Any]]:
    import ray
    from ray.util import ActorPool

    from hive_ray import Hive

    rows = []
    import_hive = fresh_process_seconds("import hive_ray", repeats=5 if quick else 15)
    import_ray = fresh_process_seconds("import ray", repeats=5 if quick else 15)
    rows.append(row("import_seconds", import_hive, "s", "import ray", import_ray, goal="<= 0.15 s"))

    @ray.remote(num_cpus=0)
    class PlainEcho:
        def echo(self, value: Any) -> Any:
            return value

    blocks, per_block = (6, 50) if quick else (20, 100)
    with Hive.connect() as hive:
        hive.spawn("echo", count=1, pool="latency")
        plain = PlainEcho.remote()
        ray.get(plain.echo.remote(0))
        for i in range(200):  # warm both paths
            hive.run(pool="latency", payload=i)
            ray.get(plain.echo.remote(i))
        run_samples: list[float] = []
        submit_samples: list[float] = []
        plain_samples: list[float] = []
        for _ in range(blocks):
            for i in range(per_block):
                started = time.perf_counter()
                ray.get(plain.echo.remote(i))
                plain_samples.append(time.perf_counter() - started)
            for i in range(per_block):
                started = time.perf_counter()
                hive.run(pool="latency", payload=i)
                run_samples.append(time.perf_counter() - started)
            for i in range(per_block):
                started = time.perf_counter()
                hive.submit(pool="latency", payload=i).result()
                submit_samples.append(time.perf_counter() - started)
        plain_p50 = percentile(plain_samples, 0.5) * 1000
        rows.append(row("single_task_latency_p50_ms", percentile(run_samples, 0.5) * 1000, "ms",
                        "plain actor call round trip", plain_p50, goal="ratio <= 2"))
        rows.append(row("submit_result_latency_p50_ms", percentile(submit_samples, 0.5) * 1000, "ms",
                        "plain actor call round trip", plain_p50))
        rows.append(row("single_task_latency_p95_ms", percentile(run_samples, 0.95) * 1000, "ms",
                        "plain actor call round trip p95", percentile(plain_samples, 0.95) * 1000))

        tasks = 5000
        hive.spawn("echo", count=8, pool="throughput")
        actors = [PlainEcho.remote() for _ in range(8)]
        ray.get([actor.echo.remote(0) for actor in actors])
        hive.map(None, list(range(1000)), pool="throughput", progress=False)  # warm up
        hive_rates, pool_rates = [], []
        for _ in range(2 if quick else 5):
            started = time.perf_counter()
            results = hive.map(None, list(range(tasks)), pool="throughput", progress=False)
            hive_rates.append(tasks / (time.perf_counter() - started))
            assert results[-1] == tasks - 1
            started = time.perf_counter()
            results = list(ActorPool(actors).map(lambda actor, value: actor.echo.remote(value), range(tasks)))
            pool_rates.append(tasks / (time.perf_counter() - started))
            assert results[-1] == tasks - 1
        rows.append(row("throughput_tasks_per_s", max(hive_rates), "tasks/s",
                        "ray.util.ActorPool.map over 8 plain actors", max(pool_rates), goal="ratio >= 1"))
    return rows
