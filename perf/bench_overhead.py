"""What hive-ray costs on top of plain Ray, measured side by side in one run.

- ``single_task_latency_p50_ms``: ``hive.run("echo", x)`` (submit, queue, dispatch,
  record, result) on an idle system, against one plain actor call round trip.
- ``submit_result_latency_p50_ms``: ``hive.submit(...).result()``, the two-step
  form, against the same baseline.
- ``relay_call_latency_p50_ms`` and ``relay_cpu_us_per_call``: a plain async actor
  forwarding each call to another one (what an orchestrator that relays tasks as
  Ray calls would pay), against the plain call: why hive-ray has a data plane.
- ``throughput_tasks_per_s@...``: 20,000 echo items over 8 agents with ``hive.map``,
  one row per baseline, the strongest first: batched pipelined actor calls,
  ``ray.util.multiprocessing.Pool.map``, pipelined plain calls and
  ``ray.util.ActorPool.map``; then ``hive.map`` with the data plane off and with the
  journal off, and CPU microseconds per task of the driver, the orchestrator and
  the agent hosts (see ``_throughput.py``).
- ``import_seconds``: ``import hive_ray`` in a fresh process, against ``import ray``.

Latency samples of every side are taken in alternating blocks, and the
throughput configurations in rotating order, so that machine noise hits all
alike.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from typing import Any

from _measure import (
    WAIT_SECONDS,
    cpu_seconds,
    fresh_process_seconds,
    isolated_settings,
    local_ray,
    percentile,
    progress,
    row,
)
from _throughput import ThroughputComparison, plain_echo_class

TASKS = 20_000


def run(quick: bool = False) -> list[dict[str, Any]]:
    rows = []
    import_hive = fresh_process_seconds("import hive_ray", repeats=5 if quick else 15)
    import_ray = fresh_process_seconds("import ray", repeats=5 if quick else 15)
    rows.append(row("import_seconds", import_hive, "s", "import ray", import_ray, goal="<= 0.15 s"))
    state = tempfile.mkdtemp(prefix="hive-bench-overhead-")
    try:
        with local_ray():
            rows.extend(_measure(quick, state))
    finally:
        shutil.rmtree(state, ignore_errors=True)
    return rows


def _measure(quick: bool, state: str) -> list[dict[str, Any]]:
    import ray

    from hive_ray import Hive

    rows = []
    plain_class = plain_echo_class()

    @ray.remote(num_cpus=0)
    class Relay:
        """Forwards each call to another actor, as a relaying orchestrator would."""

        def __init__(self, target: Any) -> None:
            self.target = target

        async def echo(self, value: Any) -> Any:
            return await self.target.echo.remote(value)

        async def pid(self) -> int:
            return os.getpid()

    blocks, per_block = (6, 50) if quick else (20, 100)
    with Hive.connect(settings=isolated_settings("overhead", state)) as hive:
        hive.spawn("echo", count=1, pool="latency")
        plain = plain_class.remote()
        relay = Relay.remote(plain_class.remote())
        ray.get([plain.echo.remote(0), relay.echo.remote(0)], timeout=WAIT_SECONDS)
        plain_pid, relay_pid = ray.get([plain.pid.remote(), relay.pid.remote()], timeout=WAIT_SECONDS)
        for i in range(200):  # warm every path
            hive.run(pool="latency", payload=i, wait_timeout=WAIT_SECONDS)
            ray.get(plain.echo.remote(i), timeout=WAIT_SECONDS)
            ray.get(relay.echo.remote(i), timeout=WAIT_SECONDS)
        # What the two actor processes burn while idle (Ray's own threads), so that the CPU
        # per call below counts the calls and not the time they took on a busy machine.
        idle_seconds = 2.0 if quick else 5.0
        idle_before = {pid: cpu_seconds([pid]) for pid in (plain_pid, relay_pid)}
        time.sleep(idle_seconds)
        idle_rate = {pid: (cpu_seconds([pid]) - idle_before[pid]) / idle_seconds for pid in idle_before}
        samples: dict[str, list[float]] = {"plain": [], "relay": [], "run": [], "submit": []}
        cpu = {"plain": 0.0, "relay": 0.0}
        for _ in range(blocks):
            for side, actor, pid in (("plain", plain, plain_pid), ("relay", relay, relay_pid)):
                before, block_started = cpu_seconds([pid]), time.perf_counter()
                for i in range(per_block):
                    started = time.perf_counter()
                    ray.get(actor.echo.remote(i), timeout=WAIT_SECONDS)
                    samples[side].append(time.perf_counter() - started)
                idle = idle_rate[pid] * (time.perf_counter() - block_started)
                cpu[side] += cpu_seconds([pid]) - before - idle
            for i in range(per_block):
                started = time.perf_counter()
                hive.run(pool="latency", payload=i, wait_timeout=WAIT_SECONDS)
                samples["run"].append(time.perf_counter() - started)
            for i in range(per_block):
                started = time.perf_counter()
                hive.submit(pool="latency", payload=i).result(timeout=WAIT_SECONDS)
                samples["submit"].append(time.perf_counter() - started)
        p50 = {side: percentile(values, 0.5) * 1000 for side, values in samples.items()}
        plain_name = "plain actor call round trip"
        rows.append(row("single_task_latency_p50_ms", p50["run"], "ms", plain_name, p50["plain"],
                        goal="ratio <= 2"))
        rows.append(row("submit_result_latency_p50_ms", p50["submit"], "ms", plain_name, p50["plain"]))
        rows.append(row("single_task_latency_p95_ms", percentile(samples["run"], 0.95) * 1000, "ms",
                        "plain actor call round trip p95", percentile(samples["plain"], 0.95) * 1000))
        rows.append(row("relay_call_latency_p50_ms", p50["relay"], "ms", plain_name, p50["plain"],
                        note="an async actor forwarding each call to a plain actor"))
        calls = blocks * per_block
        rows.append(row("relay_cpu_us_per_call", cpu["relay"] / calls * 1e6, "µs CPU/call",
                        "the plain actor's CPU per call", cpu["plain"] / calls * 1e6,
                        note="CPU of the relaying actor's process per forwarded call, its idle rate "
                             "(measured first, per process) taken off",
                        idle_cpu_percent={"plain": round(idle_rate[plain_pid] * 100, 2),
                                          "relay": round(idle_rate[relay_pid] * 100, 2)}))
        for actor in (plain, relay):
            ray.kill(actor)
        hive.stop("latency")

        progress("overhead: latency measured; starting the throughput configurations")
        with ThroughputComparison(hive, variants=True, state_dir=state) as comparison:
            measured = comparison.measure(TASKS, rounds=3 if quick else 7)
            rows.extend(comparison.rows(measured, actor_pool_goal="ratio >= 1"))
    return rows
