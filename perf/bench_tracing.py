"""What tracing costs: echo-task throughput with tracing off, at 100% and at the default sampling.

Two private orchestrators run side by side in one Ray: one with tracing off, one
with tracing on (its hosts trace, and the analyzer it owns takes every span).
Three clients drive them in alternating rounds, so that machine noise hits
every configuration alike:

- ``off``: tracing off everywhere (the reference);
- ``100pct``: every call sampled: a root span per ``map`` call, a queue span and a
  handle span per task, a dispatch span per batch, all fed to the analyzer;
- ``default``: the default sampling (``tracing_sample_ratio``, 1%): unsampled calls
  carry no context, so the traced system does no per-task work for them.

A round runs one phase of each configuration: several ``hive.map`` calls of
echo tasks over 8 agents (each call is one root decision). Rounds go through
all six orders of the three phases, and every phase is followed by a pause of
which lasts until the analyzer has taken every span of the phase: otherwise
the phase after a 100% phase inherits the analyzer's backlog (with a merely
rotated order that is always the same phase, and it reads as a 30% loss). The
wall-clock rate of a 100% phase therefore leaves out the ingestion of its last
second of spans; its CPU figure below includes it.

Shared machines are noisy (the rate of one configuration can swing by 20%
between rounds as other work comes and goes), so each configuration is
compared with tracing off *in the same round*, and the figure is the median of
those per-round ratios.

Wall-clock rates on a shared machine swing with other work, so the run also
counts CPU time: the user + system seconds of every process of a configuration
(this driver, its orchestrator and agent hosts, and for the traced ones the
analyzer), over each phase and the pause after it, so the trailing ingestion is
charged too. ``traced_cpu_ratio@...`` is tracing-off CPU per task over traced
CPU per task: the throughput ratio a CPU-bound machine would see.

Rows: ``traced_throughput_ratio@100pct`` (goal >= 0.7) and
``traced_throughput_ratio@default`` (goal >= 0.95), with the median rates as
value and baseline; plus the spans the analyzer received and dropped at 100%,
which shows that the traced path really ran.
"""

from __future__ import annotations

import itertools
import logging
import os
import statistics
import tempfile
import time
from typing import Any

from _measure import row


def run(quick: bool = False) -> list[dict[str, Any]]:
    import ray

    from hive_ray import Hive, Settings

    calls_per_round, tasks_per_call = (16, 1000) if quick else (40, 1000)
    rounds = 6 if quick else 12
    settle_seconds = 1.2  # a little more than one span shipment (tracing_flush_seconds)
    state = tempfile.mkdtemp(prefix="hive-bench-tracing-")
    owns_ray = not ray.is_initialized()
    if owns_ray:
        ray.init(address="local", namespace="hive", include_dashboard=False,
                 logging_level=logging.WARNING, log_to_driver=False)
    base = {"state_dir": state, "journal_dir": f"{state}/journal-off"}
    traced = {"state_dir": state, "journal_dir": f"{state}/journal-on", "tracing": True,
              "orchestrator_name": "bench-tracing-on", "analyzer_name": "bench-tracing-analyzer"}
    clients = {
        "off": Hive.connect(settings={**base, "orchestrator_name": "bench-tracing-off"}),
        "100pct": Hive.connect(settings={**traced, "tracing_sample_ratio": 1.0}),
        "default": Hive.connect(settings=traced),  # the default tracing_sample_ratio
    }
    default_ratio = Settings().tracing_sample_ratio
    rows: list[dict[str, Any]] = []
    try:
        pool_spec = {"pool": "bench-echo", "placement": "packed", "agents_per_host": 4}
        clients["off"].spawn("echo", count=8, **pool_spec)
        clients["100pct"].spawn("echo", count=8, **pool_spec)
        for client in clients.values():  # warm every path
            client.map(None, list(range(tasks_per_call)), pool="bench-echo", progress=False)
        analyzer = clients["100pct"]._call("analyzer")
        time.sleep(2.0)
        ray.get(analyzer.reset.remote())
        processes = {name: _processes(client) for name, client in clients.items()}
        analyzer_pid = ray.get(analyzer.statistics.remote())["pid"]
        processes["100pct"].append(analyzer_pid)
        processes["default"].append(analyzer_pid)
        rates: dict[str, list[float]] = {name: [] for name in clients}
        cpu_per_task: dict[str, list[float]] = {name: [] for name in clients}
        orders = list(itertools.permutations(clients))
        for number in range(rounds):
            for name in orders[number % len(orders)]:
                client = clients[name]
                cpu_before = _cpu_seconds(processes[name])
                started = time.perf_counter()
                for _ in range(calls_per_round):
                    results = client.map(None, list(range(tasks_per_call)), pool="bench-echo",
                                         progress=False)
                    assert results[-1] == tasks_per_call - 1
                rates[name].append(calls_per_round * tasks_per_call / (time.perf_counter() - started))
                _settle(ray, analyzer, settle_seconds)
                cpu_per_task[name].append((_cpu_seconds(processes[name]) - cpu_before)
                                          / (calls_per_round * tasks_per_call))
        time.sleep(3.0)  # let the last spans reach the analyzer
        received = ray.get(analyzer.statistics.remote())
    finally:
        for client in clients.values():
            try:
                client._call("shutdown", timeout=60)
                ray.kill(client._orchestrator, no_restart=True)
            except Exception:  # noqa: BLE001 - cleaning up a benchmark
                pass
            client.close()
        if owns_ray:
            ray.shutdown()

    median = {name: statistics.median(values) for name, values in rates.items()}
    rows.append(row("throughput_tasks_per_s@tracing_off", median["off"], "tasks/s",
                    phases=[round(rate) for rate in rates["off"]]))
    for name, goal in (("100pct", "ratio >= 0.7"), ("default", "ratio >= 0.95")):
        per_round = [traced / off for traced, off in zip(rates[name], rates["off"], strict=True)]
        result = row(f"traced_throughput_ratio@{name}", median[name], "tasks/s", "tracing off",
                     median["off"], goal=goal, round_ratios=[round(ratio, 3) for ratio in per_round],
                     phases=[round(rate) for rate in rates[name]])
        result["ratio"] = round(statistics.median(per_round), 4)
        if name == "default":
            result["sample_ratio"] = default_ratio
        rows.append(result)
    for name, goal in (("100pct", "ratio >= 0.7"), ("default", "ratio >= 0.95")):
        off_cpu, traced_cpu = statistics.median(cpu_per_task["off"]), statistics.median(cpu_per_task[name])
        rows.append(row(f"traced_cpu_ratio@{name}", traced_cpu * 1e6, "µs CPU/task",
                        "tracing off", off_cpu * 1e6))
        rows[-1]["ratio"] = round(off_cpu / traced_cpu, 4)
        rows[-1]["goal"] = goal
    rows.append(row("analyzer_spans_received@100pct", received["spans_received"], "spans",
                    tasks=rounds * calls_per_round * tasks_per_call))
    rows.append(row("spans_dropped@100pct", received["spans_dropped"], "spans", goal="0"))
    return rows


def _settle(ray: Any, analyzer: Any, interval: float) -> None:
    """Wait until the analyzer's span count stops moving: the phase's spans are all in.

    The 100% and default phases share the traced processes, so without this the
    default phase after a 100% one would be charged the tail of its ingestion.
    """
    last = -1
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        time.sleep(interval)
        received = ray.get(analyzer.statistics.remote())["spans_received"]
        if received == last:
            return
        last = received


def _processes(client: Any) -> list[int]:
    """This driver, the client's orchestrator and its agent hosts."""
    pids = {os.getpid(), int(client.statistics()["pid"])}
    pids.update(agent.pid for pool in client.pools() for agent in pool.agents if agent.pid)
    return sorted(pids)


def _cpu_seconds(pids: list[int]) -> float:
    import psutil

    total = 0.0
    for pid in pids:
        try:
            times = psutil.Process(pid).cpu_times()
        except psutil.Error:
            continue
        total += times.user + times.system
    return total
