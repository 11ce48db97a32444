"""What tracing costs: echo-task throughput with tracing off, at 100% and at the default sampling.

Three private orchestrators run side by side in one Ray, each with its own
agent hosts, so that no configuration runs on processes another one warmed,
filled or left a backlog in:

- ``off``: tracing off everywhere (the reference);
- ``default``: tracing on at the default sampling (``tracing_sample_ratio``,
  1%), with the analyzer it owns, as ``hive up`` deploys it: 1% of the calls
  are traced whole, and the orchestrator samples 1% of the other calls' tasks
  (an unsampled task costs it a random draw and carries no context downstream);
- ``100pct``: every call sampled: a root span per ``map`` call, a queue span and a
  handle span per task, a dispatch span per batch, all fed to its analyzer.

A round runs one phase of each configuration: several ``hive.map`` calls of
echo tasks over 8 agents (one decision per call at the client, then one per
task of an unsampled call at the orchestrator). Rounds go through
all six orders of the three phases, after one warm-up round that is not
counted, and every phase is followed by a pause that lasts until the 100%
analyzer has taken every span: otherwise the phase after a 100% phase pays for
the tail of its ingestion (the pause is the same after every phase, so the CPU
figures below stay comparable).

Shared machines are noisy (the rate of one configuration can swing by 20%
between rounds as other work comes and goes), so each configuration is
compared with tracing off *in the same round*, and the figure is the median of
those per-round ratios over many short rounds.

Wall-clock rates on a shared machine swing with other work, so the run also
counts CPU time: the user + system seconds of every process of a configuration
(this driver, its orchestrator and agent hosts, and for the traced ones their
analyzer), over each phase and the pause after it, so the trailing ingestion is
charged too. Each process's idle rate (Ray's own heartbeats, the analyzer's
profile every 10 s), measured in an idle window before the rounds, is
subtracted: it is a fixed cost per process, not per task, and the pauses (three
to five times as long as a phase) would otherwise charge it several times over.
The idle rates are reported with the rows (``idle_cpu_percent``).
``traced_cpu_ratio@...`` is tracing-off net CPU per task over traced net CPU
per task: the throughput ratio a CPU-bound machine would see.

Rows: ``traced_throughput_ratio@100pct`` (goal >= 0.7) and
``traced_throughput_ratio@default`` (goal >= 0.95), with the median rates as
value and baseline, the median of the per-round ratios as ``ratio`` (which is
why it need not equal value / baseline) and ``ratio_interval95``, a bootstrap
interval of that median over the rounds; plus the spans the 100% analyzer
received and dropped, which shows that the traced path really ran.
"""

from __future__ import annotations

import itertools
import logging
import os
import random
import statistics
import tempfile
import time
from typing import Any

from _measure import cpu_seconds, row
from _stats import median_interval


def run(quick: bool = False) -> list[dict[str, Any]]:
    import ray

    from hive_ray import Hive, Settings

    calls_per_round, tasks_per_call = (8, 1000) if quick else (16, 1000)
    rounds = 12 if quick else 24  # whole passes through the six orders
    settle_seconds = 1.2  # a little more than one span shipment (tracing_flush_seconds)
    state = tempfile.mkdtemp(prefix="hive-bench-tracing-")
    owns_ray = not ray.is_initialized()
    if owns_ray:
        ray.init(address="local", namespace="hive", include_dashboard=False,
                 logging_level=logging.WARNING, log_to_driver=False)

    def settings(name: str, **extra: Any) -> dict[str, Any]:
        return {"state_dir": state, "journal_dir": f"{state}/journal-{name}",
                "orchestrator_name": f"bench-tracing-{name}", "analyzer_name": f"bench-analyzer-{name}",
                **extra}

    clients = {
        "off": Hive.connect(settings=settings("off")),
        "100pct": Hive.connect(settings=settings("100pct", tracing=True, tracing_sample_ratio=1.0)),
        "default": Hive.connect(settings=settings("default", tracing=True)),  # default sample ratio
    }
    default_ratio = Settings().tracing_sample_ratio
    rows: list[dict[str, Any]] = []
    try:
        for client in clients.values():
            client.spawn("echo", count=8, pool="bench-echo", placement="packed", agents_per_host=4)
        analyzers = {name: clients[name]._call("analyzer") for name in ("100pct", "default")}
        processes = {name: _processes(client) for name, client in clients.items()}
        for name, analyzer in analyzers.items():
            processes[name].append(ray.get(analyzer.statistics.remote(), timeout=60)["pid"])
        rates: dict[str, list[float]] = {name: [] for name in clients}
        cpu_per_task: dict[str, list[float]] = {name: [] for name in clients}
        orders = list(itertools.permutations(clients))
        idle: dict[str, float] = {}  # measured after the warm-up round
        for number in range(-1, rounds):  # round -1 warms every path and is not counted
            for name in orders[number % len(orders)]:
                client = clients[name]
                cpu_before = cpu_seconds(processes[name])
                started = time.perf_counter()
                for _ in range(calls_per_round):
                    results = client.map(None, list(range(tasks_per_call)), pool="bench-echo",
                                         progress=False)
                    assert results[-1] == tasks_per_call - 1
                rate = calls_per_round * tasks_per_call / (time.perf_counter() - started)
                _settle(ray, analyzers["100pct"], settle_seconds)
                if number < 0:
                    continue
                rates[name].append(rate)
                charged = time.perf_counter() - started  # the phase and the pause after it
                net = cpu_seconds(processes[name]) - cpu_before - idle[name] * charged
                cpu_per_task[name].append(net / (calls_per_round * tasks_per_call))
            if number < 0:
                ray.get(analyzers["100pct"].reset.remote(), timeout=60)  # count only the measured rounds' spans
                idle = _idle_rates(processes, 5.0 if quick else 10.0)
        time.sleep(3.0)  # let the last spans reach the analyzer
        received = ray.get(analyzers["100pct"].statistics.remote(), timeout=60)
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
        low, high = median_interval(per_round, rng=random.Random(20261201))
        result["ratio_interval95"] = [round(low, 4), round(high, 4)]  # bootstrap over rounds
        if name == "default":
            result["sample_ratio"] = default_ratio
        rows.append(result)
    for name, goal in (("100pct", "ratio >= 0.7"), ("default", "ratio >= 0.95")):
        off_cpu, traced_cpu = statistics.median(cpu_per_task["off"]), statistics.median(cpu_per_task[name])
        rows.append(row(f"traced_cpu_ratio@{name}", traced_cpu * 1e6, "µs CPU/task",
                        "tracing off", off_cpu * 1e6,
                        idle_cpu_percent={"off": round(idle["off"] * 100, 2),
                                          name: round(idle[name] * 100, 2)}))
        rows[-1]["ratio"] = round(off_cpu / traced_cpu, 4)
        rows[-1]["goal"] = goal
    rows.append(row("analyzer_spans_received@100pct", received["spans_received"], "spans",
                    tasks=rounds * calls_per_round * tasks_per_call))
    rows.append(row("spans_dropped@100pct", received["spans_dropped"], "spans", goal="0"))
    return rows


def _settle(ray: Any, analyzer: Any, interval: float) -> None:
    """Wait until the analyzer's span count stops moving: the phase's spans are all in.

    Without this, the phase after a 100% one would run beside (and be slowed by)
    the tail of its ingestion.
    """
    last = -1
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        time.sleep(interval)
        received = ray.get(analyzer.statistics.remote(), timeout=60)["spans_received"]
        if received == last:
            return
        last = received


def _idle_rates(processes: dict[str, list[int]], seconds: float) -> dict[str, float]:
    """CPU seconds per second each configuration's processes use while nothing runs."""
    before = {name: cpu_seconds(pids) for name, pids in processes.items()}
    time.sleep(seconds)
    return {name: max(0.0, (cpu_seconds(pids) - before[name]) / seconds) for name, pids in processes.items()}


def _processes(client: Any) -> list[int]:
    """This driver, the client's orchestrator and its agent hosts."""
    pids = {os.getpid(), int(client.statistics()["pid"])}
    pids.update(agent.pid for pool in client.pools() for agent in pool.agents if agent.pid)
    return sorted(pids)
