"""Scale: the latency curve under load, thousands of packed agents, throughput, memory.

Every figure is measured in this run, beside its baseline:

- the curve: N packed agents (50, 1,000, 10,000, and 100,000 in full mode), each
  size spread over 4 hosts, all spawned first. ``capacity_tasks_per_s@N`` is what
  one client gets through N agents with single-task ``run`` calls kept 1,000 in
  flight; the offered load is then half the capacity at 50 agents, the same at
  every size: open loop (a fixed rate whatever the answers do), round robin over
  every agent. ``latency_p50_ms@N``, ``latency_p99_ms@N``,
  ``throughput_tasks_per_s@N`` and ``degradation_pct@N``: how much worse the p99
  is than with 50 agents, with its 95% interval from resampling whole rounds
  (``_stats.degradation``) and the interval's upper bound as
  ``degradation_pct_upper95@N``. Sizes are measured in many short interleaved
  rounds (each size's latencies pooled over them), so that whatever else the
  machine does falls on every size alike; rounds are added until every
  interval's half-width is at most ``HALF_WIDTH_POINTS`` or the time budget is
  spent (the rows say which). This process is the load generator: its own full
  GC passes (50-80 ms in a process that imported Ray) would land in the
  measured latencies, so its heap is frozen and its collector paused during
  each measured window (the system under test keeps its collectors).
- ``spawn_seconds@N``: N packed agents ready, against starting one plain actor
  per agent, *extrapolated* from the time 20 plain actors take (N would not fit).
- ``idle_agent_kib@N``: memory (USS) per idle packed agent, against the USS of
  one plain Ray actor.
- ``throughput_tasks_per_s@...``: 20,000 echo items over 8 agents with ``hive.map``
  against each plain-Ray baseline (``_throughput.py``), strongest first.
- the same curve on dedicated agents (one process each), with their spawn
  time and memory per agent, so the cost of not packing is visible.
- ``orchestrator_rss_growth_mb``: the orchestrator's RSS after 100,000 more
  tasks, once its bounded buffers are full, against its RSS before.
"""

from __future__ import annotations

import gc
import math
import shutil
import tempfile
import time
from collections import deque
from typing import Any

from _measure import (
    WAIT_SECONDS,
    isolated_settings,
    local_ray,
    percentile,
    progress,
    row,
    uss_bytes,
)
from _stats import Degradation, degradation, median, rounds_needed, rounds_settled
from _throughput import ThroughputComparison, plain_echo_class

HOSTS = 4  # every size of the curve is spread over this many host actors
HALF_WIDTH_POINTS = 5.0  # rounds are added until every degradation interval is this narrow
LOAD_FRACTION = 0.5  # of the capacity measured at the smallest size
CAPACITY_WINDOW = 1000  # single-task calls kept in flight while measuring capacity


def run(quick: bool = False) -> list[dict[str, Any]]:
    state = tempfile.mkdtemp(prefix="hive-bench-scale-")
    try:
        with local_ray():
            return _measure(quick, state)
    finally:
        shutil.rmtree(state, ignore_errors=True)


def _measure(quick: bool, state: str) -> list[dict[str, Any]]:
    import psutil
    import ray

    from hive_ray import Hive

    rows: list[dict[str, Any]] = []
    with Hive.connect(settings=isolated_settings("scale", state)) as hive:
        # -- the curve, packed: first, on a fresh cluster (the tail is the most noise-sensitive
        # figure here, and the phases below leave processes behind) ---------------------------
        sizes = [50, 1_000, 10_000] if quick else [50, 1_000, 10_000, 100_000]
        seconds = 2.0 if quick else 3.0
        min_rounds, max_rounds = (6, 40) if quick else (10, 80)
        budget = 90.0 if quick else 1200.0  # seconds of measured rounds, at most (quick: whole run < 6 min)
        hive.spawn("echo", count=1, pool="empty-host", placement="packed", agents_per_host=1)
        spawned: dict[int, float] = {}
        for size in sizes:
            started = time.perf_counter()
            hive.spawn("echo", count=size, pool=f"curve-{size}", placement="packed",
                       agents_per_host=math.ceil(size / HOSTS), policy="round_robin")
            spawned[size] = time.perf_counter() - started
            progress(f"scale: {size:,} packed agents ready in {spawned[size]:.1f} s")
            # Every agent warm (activated, its first task handled).
            hive.map(None, list(range(2 * size)), pool=f"curve-{size}", progress=False, timeout=WAIT_SECONDS)
            progress(f"scale: {size:,} agents warm")
        empty_host = uss_bytes(_host_pids(hive, "empty-host", 1))
        idle_kib: dict[int, float] = {}
        for size in sizes:
            pids = _host_pids(hive, f"curve-{size}", HOSTS)
            idle_kib[size] = (uss_bytes(pids) - len(pids) * empty_host) / size / 1024
        restarts_before = {size: hive.pool(f"curve-{size}").restarts for size in sizes}
        capacity = {size: _capacity(hive, f"curve-{size}", seconds) for size in sizes}
        load = LOAD_FRACTION * capacity[sizes[0]]
        progress("scale: capacity " + ", ".join(f"{size:,}: {rate:,.0f}/s" for size, rate in capacity.items())
                 + f"; offering {load:,.0f} tasks/s")
        gc.freeze()  # the load generator's long-lived heap: out of its collector's way
        windows: dict[int, list[list[float]]] = {size: [] for size in sizes}  # latencies per round
        rates: dict[int, list[float]] = {size: [] for size in sizes}
        intervals: dict[int, Degradation] = {}
        curve_started = time.monotonic()
        stopped = f"the round limit ({max_rounds})"
        check_at = min_rounds  # intervals cost seconds to compute: only when they may have settled
        for number in range(max_rounds):
            round_started = time.monotonic()
            for size in (sizes if number % 2 == 0 else sizes[::-1]):  # alternate the order
                measured = _measured_window(hive, f"curve-{size}", seconds, load)
                windows[size].append(measured["latencies"])
                rates[size].append(measured["throughput"])
            done = number + 1
            # Stop before a round that would not fit in the budget.
            out_of_time = time.monotonic() - curve_started + (time.monotonic() - round_started) > budget
            if done < check_at and not out_of_time and done < max_rounds:
                continue
            intervals = {size: degradation(windows[size], windows[sizes[0]]) for size in sizes[1:]}
            widest = max(interval.half_width for interval in intervals.values())
            progress(f"scale: {done} rounds, widest half-width {widest:.1f} points")
            if rounds_settled(list(intervals.values()), HALF_WIDTH_POINTS):
                stopped = f"every half-width at most {HALF_WIDTH_POINTS:g} points"
                break
            if out_of_time:
                stopped = f"the time budget ({budget:.0f} s of rounds)"
                break
            check_at = rounds_needed(done, widest, HALF_WIDTH_POINTS)
        restarts = {size: hive.pool(f"curve-{size}").restarts - restarts_before[size] for size in sizes}
        rows.extend(_curve_rows(sizes, windows, rates, intervals, load, capacity, stopped, restarts))
        for size in sizes:
            hive.stop(f"curve-{size}")

        # -- spawning, and memory, against plain actors ------------------------------------
        plain_class = plain_echo_class()
        started = time.perf_counter()
        plain = [plain_class.remote() for _ in range(20)]
        plain_pids = ray.get([actor.pid.remote() for actor in plain], timeout=WAIT_SECONDS)
        plain_per_actor = (time.perf_counter() - started) / 20
        plain_uss = sorted(uss_bytes([pid]) for pid in plain_pids)[len(plain_pids) // 2]
        for actor in plain:
            ray.kill(actor)
        for size in sizes[1:]:
            rows.append(row(f"spawn_seconds@{size}", spawned[size], "s",
                            f"plain actors, one per agent (extrapolated: {size:,} x the per-actor time of 20)",
                            plain_per_actor * size, goal=_spawn_goal(size), baseline_extrapolated=True,
                            hosts=HOSTS))
            rows.append(row(f"idle_agent_kib@{size}", idle_kib[size], "KiB", "one plain Ray actor (USS)",
                            plain_uss / 1024, goal="<= 4 KiB at 100000" if size == 100_000 else "",
                            hosts=HOSTS))

        # -- throughput, against every plain-Ray baseline --------------------------------------
        progress("scale: throughput against the plain-Ray baselines")
        with ThroughputComparison(hive, variants=False, state_dir=state) as comparison:
            measured = comparison.measure(20_000, rounds=2 if quick else 5)
            rows.extend(comparison.rows(measured, actor_pool_goal="ratio >= 3 and >= 10,000/s"))

        # -- the curve, dedicated (one process per agent) ---------------------------------------
        dedicated_sizes = [10, 25] if quick else [10, 25, 50]
        dedicated: dict[int, dict[str, float]] = {}
        progress("scale: the curve on dedicated agents")
        for size in dedicated_sizes:
            name = f"dedicated-{size}"
            started = time.perf_counter()
            hive.spawn("echo", count=size, pool=name, policy="round_robin")
            spawn_time = time.perf_counter() - started
            hive.map(None, list(range(4 * size)), pool=name, progress=False, timeout=WAIT_SECONDS)
            pooled = [latency for _ in range(2) for latency in _measured_window(hive, name, seconds, load)["latencies"]]
            dedicated[size] = {"p99": percentile(pooled, 0.99) * 1000, "spawn": spawn_time,
                               "uss_mib": uss_bytes([a.pid for a in hive.agents(name) if a.pid]) / size / 2**20}
            hive.stop(name)
        base = dedicated[dedicated_sizes[0]]
        for size, point in dedicated.items():
            rows.append(row(f"dedicated_latency_p99_ms@{size}", point["p99"], "ms",
                            f"same load on {dedicated_sizes[0]} dedicated agents", base["p99"],
                            offered_tasks_per_s=round(load)))
            rows.append(row(f"dedicated_spawn_seconds@{size}", point["spawn"], "s",
                            "the same number of packed agents", _packed_spawn(hive, size)))
            rows.append(row(f"dedicated_agent_mib@{size}", point["uss_mib"], "MiB",
                            "per idle packed agent", idle_kib[sizes[1]] / 1024))

        # -- memory over 100,000 tasks --------------------------------------------------------
        progress("scale: orchestrator memory over 100,000 tasks")
        hive.spawn("echo", count=8, pool="memory")
        orchestrator = psutil.Process(hive.statistics()["pid"])
        warm = hive.settings.finished_retention_count + 10_000
        for start in range(0, warm, 20_000):
            hive.map(None, list(range(min(20_000, warm - start))), pool="memory", progress=False,
                     timeout=WAIT_SECONDS)
        before = orchestrator.memory_info().rss
        total = 100_000
        for _ in range(total // 20_000):
            hive.map(None, list(range(20_000)), pool="memory", progress=False, timeout=WAIT_SECONDS)
        after = orchestrator.memory_info().rss
        rows.append(row("orchestrator_rss_growth_mb", (after - before) / 2**20, "MB",
                        "orchestrator RSS before (MB)", before / 2**20,
                        goal="<= 20 MB over 100,000 tasks", tasks=total))
    return rows


def _host_pids(hive: Any, pool: str, expected: int) -> list[int]:
    """The pids of ``pool``'s hosts once all ``expected`` answer (a busy machine may be restarting one)."""
    deadline = time.monotonic() + WAIT_SECONDS
    while True:
        pids = [host["pid"] for host in hive.hosts(pool) if "pid" in host]
        if len(pids) >= expected:
            return pids
        if time.monotonic() > deadline:
            raise RuntimeError(f"{pool}: {len(pids)} of {expected} hosts answered within {WAIT_SECONDS:.0f} s; "
                               "the curve needs its agents spread over every host")
        time.sleep(1.0)


def _spawn_goal(size: int) -> str:
    return {1_000: "<= 10 s", 100_000: "<= 30 s"}.get(size, "")


def _packed_spawn(hive: Any, size: int) -> float:
    started = time.perf_counter()
    hive.spawn("echo", count=size, pool=f"packed-spawn-{size}", placement="packed", agents_per_host=250)
    seconds = time.perf_counter() - started
    hive.stop(f"packed-spawn-{size}")
    return seconds


def _capacity(hive: Any, pool: str, seconds: float) -> float:
    """Single-task ``run`` calls completed per second with ``CAPACITY_WINDOW`` kept in flight."""
    template = hive._template(None, {"pool": pool})
    in_flight: deque[Any] = deque()
    completed = 0
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        while len(in_flight) < CAPACITY_WINDOW:
            in_flight.append(hive._fire("run", template, 0, None))
        hive._collect(in_flight.popleft(), timeout=WAIT_SECONDS)
        completed += 1
    while in_flight:
        hive._collect(in_flight.popleft(), timeout=WAIT_SECONDS)
        completed += 1
    return completed / (time.perf_counter() - started)


def _measured_window(hive: Any, pool: str, seconds: float, rate: float) -> dict[str, Any]:
    """``rate`` tasks/s offered for ``seconds`` without waiting (open loop), after an
    unmeasured lead-in of the same load; every task's latency, and the rate achieved."""
    template = hive._template(None, {"pool": pool})
    _paced(hive, template, 0.3, rate, [])
    latencies: list[float] = []
    gc.collect()
    gc.disable()  # this process generates the load; its pauses are not the system's
    try:
        answered, elapsed = _paced(hive, template, seconds, rate, latencies)
    finally:
        gc.enable()
    if not latencies:
        raise RuntimeError(f"{pool}: no latency was recorded; the curve needs the client on hive-ray's data "
                           "plane (its calls answer with futures), which this run does not have")
    return {"latencies": latencies, "throughput": answered / elapsed}


def _paced(hive: Any, template: dict[str, Any], seconds: float, rate: float,
           latencies: list[float]) -> tuple[int, float]:
    """``rate`` tasks/s for ``seconds``, open loop; each answer's latency goes to ``latencies``."""
    pending = []
    interval = 0.01
    per_tick = max(1, round(rate * interval))
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
        hive._collect(future, timeout=WAIT_SECONDS)
    return len(pending), time.perf_counter() - started


def _curve_rows(sizes: list[int], windows: dict[int, list[list[float]]], rates: dict[int, list[float]],
                intervals: dict[int, Degradation], load: float, capacity: dict[int, float],
                stopped: str, restarts: dict[int, int]) -> list[dict[str, Any]]:
    base_size = sizes[0]
    pooled = {size: [latency for window in windows[size] for latency in window] for size in sizes}
    p50 = {size: percentile(pooled[size], 0.5) * 1000 for size in sizes}
    p99 = {size: percentile(pooled[size], 0.99) * 1000 for size in sizes}
    throughput = {size: median(rates[size]) for size in sizes}
    rounds = len(windows[base_size])
    baseline = f"same load on {base_size} packed agents"
    rows = [row(f"capacity_tasks_per_s@{size}", capacity[size], "tasks/s",
                f"{base_size} packed agents" if size != base_size else None,
                capacity[base_size] if size != base_size else None,
                note=f"single-task run calls, {CAPACITY_WINDOW} in flight") for size in sizes]
    rows.append(row("offered_load_tasks_per_s", load, "tasks/s", f"capacity at {base_size} agents",
                    capacity[base_size], note="open loop, the same at every size of the curve"))
    for size in sizes:
        # Agent restarts while measuring (a host failing its health check on a busy machine)
        # would show in the tail: the rows say how many there were.
        extra = {"samples": len(pooled[size]), "rounds": rounds, "hosts": HOSTS,
                 "agent_restarts_while_measured": restarts[size]}
        rows.append(row(f"latency_p50_ms@{size}", p50[size], "ms", baseline, p50[base_size], **extra))
        rows.append(row(f"latency_p99_ms@{size}", p99[size], "ms", baseline, p99[base_size], **extra))
        rows.append(row(f"throughput_tasks_per_s@{size}", throughput[size], "tasks/s", baseline,
                        throughput[base_size], offered_tasks_per_s=round(load, 1)))
        if size == base_size:
            continue
        interval = intervals.get(size)
        if interval is None:  # fewer rounds than the minimum: no interval worth the name
            continue
        settled = interval.half_width <= HALF_WIDTH_POINTS
        rows.append(row(f"degradation_pct@{size}", interval.pct, "%",
                        goal="<= 10 at 1000" if size == 1000 else "", samples=len(pooled[size]),
                        rounds=rounds, ci95_pct=[round(interval.low_pct, 1), round(interval.high_pct, 1)],
                        half_width_pct=round(interval.half_width, 2),
                        half_width_target_met=settled, rounds_stopped_by=stopped))
        rows.append(row(f"degradation_pct_upper95@{size}", interval.high_pct, "%",
                        goal="<= 10 at 10000" if size == 10_000 else "", rounds=rounds,
                        half_width_pct=round(interval.half_width, 2), half_width_target_met=settled,
                        rounds_stopped_by=stopped))
    return rows
