"""Scale: throughput, thousands of packed agents, the latency curve, and memory.

Every figure is measured in this run, beside its baseline:

- ``throughput_tasks_per_s``: 20,000 echo tasks over 8 agents (``hive.map``)
  against ``ray.util.ActorPool.map`` over 8 plain actors.
- ``spawn_seconds@1000``: 1,000 packed agents ready, against starting plain
  actors one per agent (extrapolated from 20, since 1,000 would not fit here).
- ``idle_agent_kib``: memory (USS) per idle packed agent, against the USS of
  one plain Ray actor.
- the curve: the same open-loop load (a fixed rate of echo tasks spread over
  every agent, round robin) on N packed agents (up to 1,000 per host), ``latency_p50_ms@N``, ``latency_p99_ms@N``,
  ``throughput_tasks_per_s@N``, and ``degradation_pct@N``: how much worse the
  p99 is than with 50 agents. Every size is spawned first, then measured in
  many short interleaved rounds (each size's latencies pooled over them), so
  that whatever else the machine does falls on every size alike. This process
  is the load generator: its own full GC passes (50-80 ms in a process that
  imported Ray) would land in the measured latencies, so its heap is frozen and
  its collector paused during each measured window (the system under test
  keeps its collectors). ``degradation_pct@N`` carries ``ci95_pct``, a 95%
  interval from resampling whole rounds. The same for dedicated agents, with their spawn
  time and memory per agent, so the cost of not packing is visible.
- ``orchestrator_rss_growth_mb``: the orchestrator's RSS after 100,000 more
  tasks, once its bounded buffers are full, against its RSS before.
"""

from __future__ import annotations

import gc
import time
from typing import Any

from _measure import percentile, row

LOAD_RATE = 400  # tasks/s offered at every point of the curve


def run(quick: bool = False) -> list[dict[str, Any]]:
    import psutil
    import ray
    from ray.util import ActorPool

    from hive_ray import Hive

    rows: list[dict[str, Any]] = []

    @ray.remote(num_cpus=0)
    class PlainEcho:
        def echo(self, value: Any) -> Any:
            return value

        def pid(self) -> int:
            import os

            return os.getpid()

    with Hive.connect() as hive:
        # -- the curve, packed -------------------------------------------------------------
        # First, on a fresh cluster: the tail is the most noise-sensitive figure here, and
        # the phases below leave processes (killed actors, idle workers) behind.
        sizes = [50, 100, 250, 1000] if quick else [50, 100, 250, 500, 1000, 5000]
        seconds, rounds = (2.5, 12) if quick else (4.0, 12)
        for size in sizes:
            # Light agents: up to 1,000 per host, so the curve shows what the number of
            # agents costs (more host processes on 2 cores would cost on their own).
            hive.spawn("echo", count=size, pool=f"curve-{size}", placement="packed", agents_per_host=1000,
                       policy="round_robin")
            hive.map(None, list(range(2 * size)), pool=f"curve-{size}", progress=False)  # every agent warm
        gc.freeze()  # the load generator's long-lived heap: out of its collector's way
        windows: dict[int, list[list[float]]] = {size: [] for size in sizes}  # latencies per round
        rates: dict[int, list[float]] = {size: [] for size in sizes}
        for number in range(rounds):
            for size in (sizes if number % 2 == 0 else sizes[::-1]):  # alternate the order
                measured = _measured_window(hive, f"curve-{size}", seconds)
                windows[size].append(measured["latencies"])
                rates[size].append(measured["throughput"])
        curve = {}
        for size in sizes:
            pooled = [latency for window in windows[size] for latency in window]
            curve[size] = {"p50": percentile(pooled, 0.5) * 1000, "p99": percentile(pooled, 0.99) * 1000,
                           "throughput": sorted(rates[size])[len(rates[size]) // 2], "samples": len(pooled),
                           "p99_ratio_ci95": _p99_ratio_interval(windows[size], windows[sizes[0]])}
        for size in sizes:
            hive.stop(f"curve-{size}")
        rows.extend(_curve_rows(curve, "packed agents"))

        # -- throughput ---------------------------------------------------------------
        tasks = 20_000
        hive.spawn("echo", count=8, pool="throughput")
        actors = [PlainEcho.remote() for _ in range(8)]
        ray.get([actor.echo.remote(0) for actor in actors])
        hive.map(None, list(range(2000)), pool="throughput", progress=False)
        hive_rates, pool_rates = [], []
        for _ in range(3):  # best of three each, alternating
            started = time.perf_counter()
            assert hive.map(None, list(range(tasks)), pool="throughput", progress=False)[-1] == tasks - 1
            hive_rates.append(tasks / (time.perf_counter() - started))
            started = time.perf_counter()
            list(ActorPool(actors).map(lambda actor, value: actor.echo.remote(value), range(tasks)))
            pool_rates.append(tasks / (time.perf_counter() - started))
        rows.append(row("throughput_tasks_per_s", max(hive_rates), "tasks/s",
                        "ray.util.ActorPool.map over 8 plain actors", max(pool_rates),
                        goal="ratio >= 3 and >= 10,000/s"))
        plain_uss = [psutil.Process(pid).memory_full_info().uss for pid in ray.get([a.pid.remote() for a in actors])]
        for actor in actors:
            ray.kill(actor)
        hive.stop("throughput")

        # -- spawning 1,000 packed agents, and their memory ---------------------------------
        started = time.perf_counter()
        pool = hive.spawn("echo", count=1000, pool="packed-1000", placement="packed", agents_per_host=250)
        spawn_seconds = time.perf_counter() - started
        assert pool.size == 1000
        started = time.perf_counter()
        plain = [PlainEcho.remote() for _ in range(20)]
        ray.get([actor.echo.remote(0) for actor in plain])
        plain_per_actor = (time.perf_counter() - started) / 20
        for actor in plain:
            ray.kill(actor)
        rows.append(row("spawn_seconds@1000", spawn_seconds, "s",
                        "plain actors, one per agent (1,000 x the per-actor time of 20)",
                        plain_per_actor * 1000, goal="<= 10 s"))
        hive.spawn("echo", count=1, pool="packed-1", placement="packed", agents_per_host=250)
        time.sleep(1.0)
        one_host = _uss([host["pid"] for host in hive.hosts("packed-1")])
        hosts = hive.hosts("packed-1000")
        thousand = _uss([host["pid"] for host in hosts])
        idle_kib = (thousand - len(hosts) * one_host) / 1000 / 1024
        rows.append(row("idle_agent_kib", idle_kib, "KiB", "one plain Ray actor (USS)",
                        sorted(plain_uss)[len(plain_uss) // 2] / 1024))
        hive.stop("packed-1000")
        hive.stop("packed-1")

        # -- the curve, dedicated (one process per agent) ---------------------------------------
        dedicated_sizes = [10, 50] if quick else [10, 25, 50]
        dedicated: dict[int, dict[str, float]] = {}
        for size in dedicated_sizes:
            name = f"dedicated-{size}"
            started = time.perf_counter()
            hive.spawn("echo", count=size, pool=name, policy="round_robin")
            spawned = time.perf_counter() - started
            for i in range(200):  # every path warm
                hive.run(pool=name, payload=i)
            pooled = [latency for _ in range(2) for latency in _measured_window(hive, name, seconds)["latencies"]]
            dedicated[size] = {"p99": percentile(pooled, 0.99) * 1000, "spawn": spawned,
                               "uss_mib": _uss([a.pid for a in hive.agents(name)]) / size / 2**20}
            hive.stop(name)
        base = dedicated[dedicated_sizes[0]]
        for size, point in dedicated.items():
            rows.append(row(f"dedicated_latency_p99_ms@{size}", point["p99"], "ms",
                            f"same load on {dedicated_sizes[0]} dedicated agents", base["p99"]))
            rows.append(row(f"dedicated_spawn_seconds@{size}", point["spawn"], "s",
                            "the same number of packed agents", _packed_spawn(hive, size)))
            rows.append(row(f"dedicated_agent_mib@{size}", point["uss_mib"], "MiB",
                            "per idle packed agent", idle_kib / 1024))

        # -- memory over 100,000 tasks --------------------------------------------------------
        hive.spawn("echo", count=8, pool="memory")
        pid = hive.statistics()["pid"]
        orchestrator = psutil.Process(pid)
        warm = hive.settings.finished_retention_count + 10_000
        for start in range(0, warm, 20_000):
            hive.map(None, list(range(min(20_000, warm - start))), pool="memory", progress=False)
        before = orchestrator.memory_info().rss
        total = 100_000
        for _ in range(total // 20_000):
            hive.map(None, list(range(20_000)), pool="memory", progress=False)
        after = orchestrator.memory_info().rss
        rows.append(row("orchestrator_rss_growth_mb", (after - before) / 2**20, "MB",
                        "orchestrator RSS before (MB)", before / 2**20,
                        goal="<= 20 MB over 100,000 tasks", tasks=total))
    return rows


def _packed_spawn(hive: Any, size: int) -> float:
    started = time.perf_counter()
    hive.spawn("echo", count=size, pool=f"packed-spawn-{size}", placement="packed", agents_per_host=250)
    seconds = time.perf_counter() - started
    hive.stop(f"packed-spawn-{size}")
    return seconds


def _uss(pids: list[int]) -> float:
    import psutil

    total = 0
    for pid in set(pids):
        try:
            total += psutil.Process(pid).memory_full_info().uss
        except psutil.Error:
            pass
    return float(total)


def _p99_ratio_interval(windows: list[list[float]], base_windows: list[list[float]],
                        resamples: int = 200) -> list[float]:
    """A 95% interval for p99(windows) / p99(base_windows), by resampling whole rounds.

    Rounds, not single tasks, are resampled (the same rounds for both sizes, which
    ran side by side): a stall delays many neighbouring tasks together, so single
    tasks are not independent samples and would give too narrow an interval.
    """
    import random

    rng = random.Random(0)
    rounds = len(windows)
    ratios = []
    for _ in range(resamples):
        chosen = [rng.randrange(rounds) for _ in range(rounds)]
        sample = [latency for index in chosen for latency in windows[index]]
        base = [latency for index in chosen for latency in base_windows[index]]
        ratios.append(percentile(sample, 0.99) / percentile(base, 0.99))
    ratios.sort()
    return [round(ratios[int(0.025 * resamples)], 3), round(ratios[int(0.975 * resamples) - 1], 3)]


def _measured_window(hive: Any, pool: str, seconds: float) -> dict[str, Any]:
    """LOAD_RATE tasks/s offered for ``seconds`` without waiting (open loop), after an
    unmeasured lead-in of the same load; every task's latency, and the rate achieved."""
    template = hive._template(None, {"pool": pool})
    _paced(hive, template, 0.3, [])
    latencies: list[float] = []
    gc.collect()
    gc.disable()  # this process generates the load; its pauses are not the system's
    try:
        pending, elapsed = _paced(hive, template, seconds, latencies)
    finally:
        gc.enable()
    return {"latencies": latencies or [float("nan")], "throughput": len(pending) / elapsed}


def _paced(hive: Any, template: dict[str, Any], seconds: float, latencies: list[float]) -> tuple[list[Any], float]:
    """LOAD_RATE tasks/s for ``seconds``, open loop; each answer's latency goes to ``latencies``."""
    pending = []
    interval = 0.01
    per_tick = max(1, int(LOAD_RATE * interval))
    started = time.perf_counter()
    next_tick = started
    while time.perf_counter() - started < seconds:
        for _ in range(per_tick):
            sent = time.perf_counter()
            future = hive._fire("run", template, sent, None)
            if hasattr(future, "add_done_callback"):
                future.add_done_callback(lambda _, sent=sent: latencies.append(time.perf_counter() - sent))
            pending.append(future)
        next_tick += interval
        time.sleep(max(0.0, next_tick - time.perf_counter()))
    for future in pending:
        hive._collect(future, timeout=60)
    return pending, time.perf_counter() - started


def _curve_rows(curve: dict[int, dict[str, float]], label: str) -> list[dict[str, Any]]:
    rows = []
    base_size = min(curve)
    base = curve[base_size]
    for size, point in curve.items():
        baseline = f"same load on {base_size} {label}"
        rows.append(row(f"latency_p50_ms@{size}", point["p50"], "ms", baseline, base["p50"]))
        rows.append(row(f"latency_p99_ms@{size}", point["p99"], "ms", baseline, base["p99"]))
        rows.append(row(f"throughput_tasks_per_s@{size}", point["throughput"], "tasks/s", baseline,
                        base["throughput"]))
        interval = point.get("p99_ratio_ci95")
        rows.append(row(f"degradation_pct@{size}", (point["p99"] / base["p99"] - 1) * 100, "%",
                        goal="<= 10 at 1000" if size == 1000 else "", samples=point.get("samples"),
                        ci95_pct=None if interval is None else [round((r - 1) * 100, 1) for r in interval]))
    return rows
