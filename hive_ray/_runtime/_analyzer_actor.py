"""The analyzer actor: span durations in, a system profile and a performance report out.

One async Ray actor, named ``analyzer`` in the ``hive`` namespace and owned by
the orchestrator (which starts it when tracing is on, or when asked for it).
Every traced process's span pipeline (:mod:`hive_ray._span_export`) sends it,
about once a second, the durations of finished spans grouped by operation (the
span name); :class:`~hive_ray._analyzer.OperationTable` keeps them as sliding
windows of log histograms, so memory stays bounded however long it runs.

Besides latencies it profiles the system every ``analyzer_sample_seconds``:
RSS and USS (psutil) of the orchestrator, each agent host, itself and the Serve
replicas on its node, queue depths and agent restarts from the orchestrator,
and once, how long ``import hive_ray`` takes. With a baseline set it compares
the current window against it on each round and logs (and lists, for the API)
regressions that are both significant and material.

The class runs without Ray in unit tests: ``ingest``, ``record_memory`` and
``report`` are plain methods, and the clock is injectable.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import asdict
from typing import Any

from hive_ray._analyzer import (
    Baseline,
    OperationTable,
    PerformanceReport,
    PoolLoad,
    ProcessMemory,
    RegressionResult,
    Slo,
    SystemProfile,
    build_baseline,
    compare_to_baseline,
    recommend,
)
from hive_ray._settings import Settings

logger = logging.getLogger("hive_ray.analyzer")

#: Memory points kept per process (at the default 10 s interval: two hours).
MEMORY_POINTS = 720
#: Request operations (HTTP spans are named "<METHOD> <route>") get the API's p95 SLO.
_HTTP_METHODS = ("GET ", "POST ", "PUT ", "PATCH ", "DELETE ")
#: Memory of a process's first minutes is left out of leak fits: every process grows
#: while it warms up (imports, caches, pools), and a straight line through that
#: growth reads as a leak of gigabytes per hour.
LEAK_WARMUP_SECONDS = 120.0
#: A leak is judged only over at least this much (post warm-up) time.
LEAK_MIN_OBSERVED_SECONDS = 600.0
#: USS (which reads every mapping of a process) and the search for Serve replicas
#: run at most this often; RSS, nearly free, is read on every round.
DETAILED_SAMPLE_SECONDS = 60.0
#: The Serve replica's process title, as Ray sets it.
_SERVE_REPLICA_TITLE = "ray::ServeReplica"


class _Process:
    __slots__ = ("name", "kind", "pid", "rss", "uss", "series")

    def __init__(self, name: str, kind: str, pid: int) -> None:
        self.name, self.kind, self.pid = name, kind, pid
        self.rss = self.uss = 0
        self.series: deque[tuple[float, float]] = deque(maxlen=MEMORY_POINTS)


class Analyzer:
    """The performance analyzer; see the module docstring. Build it with :func:`get_or_create_analyzer`."""

    def __init__(self, settings: dict[str, Any] | None = None, *,
                 clock: Callable[[], float] = time.time) -> None:
        self.settings = Settings(**(settings or {}))
        self._clock = clock
        slice_seconds = self.settings.analyzer_slice_seconds
        self._table = OperationTable(
            slice_seconds=slice_seconds,
            slice_count=max(1, round(self.settings.analyzer_window_seconds / slice_seconds)),
            clock=clock,
        )
        self._started_at = clock()
        self._spans_received = 0
        self._tasks_submitted: int | None = None  # by the orchestrator, since it started
        self._dropped_by_process: dict[str, int] = {}
        self._processes: dict[int, _Process] = {}
        self._queue_depths: dict[str, int] = {}
        self._usage: tuple[Mapping[str, Any], ...] = ()  # the orchestrator's token totals
        self._pool_agents: dict[str, int] = {}
        self._restarts_first: dict[str, int] = {}
        self._restarts_latest: dict[str, int] = {}
        self._import_seconds: float | None = None
        self._baseline: Baseline | None = None
        self._alerts: tuple[RegressionResult, ...] = ()
        self._loop_task: asyncio.Task[None] | None = None
        self._orchestrator: Any = None
        self._detailed_at = 0.0  # monotonic time of the last USS round
        self._replicas: dict[int, tuple[str, str]] = {}

    # ------------------------------------------------------------------ feeding
    def ingest(self, process: str, durations: Mapping[str, tuple[list[float], list[float]]],
               dropped: int = 0) -> int:
        """Record a process's span durations: ``{operation: (succeeded, failed)}`` in seconds.

        ``dropped`` is how many spans that process has dropped so far (a running total).
        Returns how many durations were recorded.
        """
        record = self._table.record
        count = 0
        for operation, (succeeded, failed) in durations.items():
            for seconds in succeeded:
                record(operation, seconds, True)
            for seconds in failed:
                record(operation, seconds, False)
            count += len(succeeded) + len(failed)
        self._spans_received += count
        self._dropped_by_process[process] = int(dropped)
        return count

    def record_memory(self, name: str, kind: str, pid: int, rss: int, uss: int,
                      at: float | None = None) -> None:
        """Record one memory measurement of a process (the sampling loop calls this)."""
        process = self._processes.get(pid)
        if process is None or process.name != name:
            process = self._processes[pid] = _Process(name, kind, pid)
        process.rss, process.uss = rss, uss
        process.series.append((self._clock() if at is None else at, float(rss)))

    def record_pools(self, statistics: Mapping[str, Any], pools: list[Mapping[str, Any]]) -> None:
        """Take queue depths, agent counts and restart totals from the orchestrator's answers."""
        for name, pool in statistics.get("pools", {}).items():
            self._queue_depths[name] = int(pool.get("queued", 0))
            total = int(pool.get("restarts", 0))
            self._restarts_first.setdefault(name, total)
            self._restarts_latest[name] = total
        for pool in pools:
            self._pool_agents[pool["name"]] = int(pool.get("size", 0))
        self._usage = tuple(statistics.get("usage", ()))
        submitted = statistics.get("counters", {}).get("submitted")
        if submitted is not None:
            self._tasks_submitted = int(submitted)

    # ------------------------------------------------------------------ reading
    def report(self, baseline: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The performance report as a dict (``PerformanceReport.to_dict()``, plus ``analyzer``).

        ``baseline`` (a ``Baseline.to_dict()``) adds the comparison against it; without
        one, the baseline set with :meth:`set_baseline` is used, if any.
        """
        reference = Baseline.from_dict(baseline) if baseline is not None else self._baseline
        regressions = self._compare(reference) if reference is not None else ()
        operations = self._table.snapshot()
        series = self._table.series()
        memory = tuple(
            ProcessMemory(name=p.name, kind=p.kind, rss_bytes=p.rss, uss_bytes=p.uss,
                          series=tuple(p.series), budget_bytes=self.settings.perf_memory_budget_bytes)
            for p in sorted(self._processes.values(), key=lambda p: (p.kind, p.name))
        )
        observed = max(1.0, min(self._clock() - self._started_at, self.settings.analyzer_window_seconds))
        profile = SystemProfile(
            operations=operations,
            series=series,
            pools=self._pool_loads(),
            memory=tuple(_settled(process) for process in memory),
            restarts={pool: self._restarts_latest[pool] - self._restarts_first.get(pool, 0)
                      for pool in self._restarts_latest},
            observed_seconds=observed,
            slos=tuple(Slo(operation_prefix=method, p95_seconds=self.settings.perf_slo_p95_seconds)
                       for method in _HTTP_METHODS),
            regressions=regressions,
        )
        report = PerformanceReport(
            generated_at=time.time(),
            operations=operations,
            series=series,
            memory=memory,
            recommendations=recommend(profile),
            regressions=regressions,
            import_seconds=self._import_seconds,
            queue_depths=dict(self._queue_depths),
            slice_seconds=self.settings.analyzer_slice_seconds,
            usage=self._usage,
        )
        return {**report.to_dict(), "analyzer": self.statistics()}

    def baseline(self) -> dict[str, Any]:
        """A baseline of the current window (``Baseline.to_dict()``), to save and compare later."""
        counts = {each.operation: each.count for each in self._table.snapshot()}
        return build_baseline(self._table.samples(), counts=counts).to_dict()

    def compare(self, baseline: Mapping[str, Any]) -> list[dict[str, Any]]:
        """Compare the current window with ``baseline``; one result per shared operation."""
        return [asdict(result) for result in self._compare(Baseline.from_dict(baseline))]

    def set_baseline(self, baseline: Mapping[str, Any] | None) -> None:
        """Compare against ``baseline`` on every sampling round (None stops it)."""
        self._baseline = None if baseline is None else Baseline.from_dict(baseline)
        self._alerts = ()

    def alerts(self) -> list[dict[str, Any]]:
        """Regressions against the set baseline found by the latest round (significant and material)."""
        return [asdict(result) for result in self._alerts]

    def statistics(self) -> dict[str, Any]:
        from hive_ray._tracing import effective_sampling

        return {
            "pid": os.getpid(),
            "started_at": self._started_at,
            # What `hive perf report` needs to say why a report is empty: tracing off, no
            # traffic, or a sampling ratio too low for the traffic seen.
            "sampling": effective_sampling(self.settings),
            "tasks_submitted": self._tasks_submitted,
            "spans_received": self._spans_received,
            "spans_dropped": sum(self._dropped_by_process.values()),
            "spans_dropped_by_process": dict(self._dropped_by_process),
            "operations": len(self._table),
            "operations_dropped_records": self._table.dropped_records,
            "processes": len(self._processes),
        }

    def reset(self) -> None:
        """Forget every latency recorded so far (benchmarks start each phase clean)."""
        self._table = OperationTable(
            slice_seconds=self.settings.analyzer_slice_seconds,
            slice_count=max(1, round(self.settings.analyzer_window_seconds
                                     / self.settings.analyzer_slice_seconds)),
            clock=self._clock,
        )
        self._spans_received = 0

    def _compare(self, baseline: Baseline) -> tuple[RegressionResult, ...]:
        return compare_to_baseline(baseline, self._table.samples())

    def _pool_loads(self) -> tuple[PoolLoad, ...]:
        loads = []
        for pool, agents in sorted(self._pool_agents.items()):
            queue = self._table.window(f"hive.queue {pool}")
            handle = self._table.window(f"hive.handle {pool}")
            if queue is None or handle is None:
                continue
            loads.append(PoolLoad(pool=pool, agents=agents, queued=self._queue_depths.get(pool, 0),
                                  queue_wait_p95=queue.snapshot().p95, handle_p95=handle.snapshot().p95))
        return tuple(loads)

    # ------------------------------------------------------------------ the sampling loop (Ray)
    async def start(self) -> None:
        """Begin profiling the system (idempotent)."""
        if self._loop_task is None or self._loop_task.done():
            self._loop_task = asyncio.ensure_future(self._sample_loop())

    async def _sample_loop(self) -> None:
        try:
            self._import_seconds = await asyncio.to_thread(measure_import_seconds)
        except Exception as error:  # noqa: BLE001 - the report just lacks this figure
            logger.info("could not time `import hive_ray`: %s", error)
        while True:
            try:
                await self.sample_once()
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - e.g. the orchestrator is restarting
                logger.debug("profiling round failed", exc_info=True)
            if self._baseline is not None:
                self._check_regressions()
            await asyncio.sleep(self.settings.analyzer_sample_seconds)

    async def sample_once(self) -> None:
        """Measure memory, queues and restarts once."""
        import ray

        if self._orchestrator is None:
            self._orchestrator = ray.get_actor(self.settings.orchestrator_name,
                                               namespace=self.settings.namespace)
        statistics, pools = await asyncio.gather(self._orchestrator.statistics.remote(),
                                                 self._orchestrator.pools.remote())
        self.record_pools(statistics, pools)
        node = ray.get_runtime_context().get_node_id()
        targets: dict[int, tuple[str, str]] = {os.getpid(): ("analyzer", "analyzer")}
        if statistics.get("pid"):
            targets[int(statistics["pid"])] = ("orchestrator", "orchestrator")
        for pool in pools:
            for agent in pool.get("agents", ()):
                pid = agent.get("pid")
                if pid and agent.get("node_id") in (None, node) and pid not in targets:
                    targets[int(pid)] = (f"host {agent['agent_id']}", "agent host")
        detailed = time.monotonic() >= self._detailed_at + DETAILED_SAMPLE_SECONDS
        if detailed:
            self._detailed_at = time.monotonic()
            self._replicas = await asyncio.to_thread(_serve_replicas, set(targets))
        targets.update(self._replicas)
        measured = await asyncio.to_thread(_measure_memory, targets, detailed)
        now = self._clock()
        for pid, (name, kind, rss, uss) in measured.items():
            if uss is None:  # keep the last USS between detailed rounds
                previous = self._processes.get(pid)
                uss = previous.uss if previous is not None else rss
            self.record_memory(name, kind, pid, rss, uss, at=now)

    def _check_regressions(self) -> None:
        assert self._baseline is not None
        found = tuple(result for result in self._compare(self._baseline) if result.regressed)
        known = {result.operation for result in self._alerts}
        for result in found:
            if result.operation not in known:
                logger.warning("performance regression in %s: p95 %.1f ms vs baseline %.1f ms "
                               "(%.2fx, p=%.1e)", result.operation, result.current_p95 * 1000,
                               result.baseline_p95 * 1000, result.ratio, result.p_value)
        self._alerts = found


def _settled(process: ProcessMemory) -> ProcessMemory:
    """``process`` with only the memory points that may judge a leak (none if too few)."""
    if not process.series:
        return process
    start = process.series[0][0] + LEAK_WARMUP_SECONDS
    points = tuple(point for point in process.series if point[0] >= start)
    if not points or points[-1][0] - points[0][0] < LEAK_MIN_OBSERVED_SECONDS:
        points = ()
    return dataclasses.replace(process, series=points)


def _serve_replicas(known: set[int]) -> dict[int, tuple[str, str]]:
    """The Serve replicas among this node's Ray workers, by pid."""
    import psutil

    # Ray's workers are children of their node's raylet; looking only there skips the
    # replicas of other Ray clusters sharing this machine.
    try:
        workers = psutil.Process(os.getppid()).children()
    except psutil.Error:
        return {}
    found = {}
    for process in workers:
        try:
            title = (process.cmdline() or [""])[0]
        except (psutil.Error, OSError):
            continue
        if title.startswith(_SERVE_REPLICA_TITLE) and process.pid not in known:
            found[process.pid] = (f"serve replica {process.pid}", "serve replica")
    return found


def _measure_memory(targets: Mapping[int, tuple[str, str]],
                    detailed: bool = True) -> dict[int, tuple[str, str, int, int | None]]:
    """RSS of each pid that still exists, and USS too when ``detailed`` (None otherwise)."""
    import psutil

    measured: dict[int, tuple[str, str, int, int | None]] = {}
    for pid, (name, kind) in targets.items():
        try:
            process = psutil.Process(pid)
            if detailed:
                info = process.memory_full_info()
                reading = (name, kind, int(info.rss), int(getattr(info, "uss", info.rss)) or None)
            else:
                reading = (name, kind, int(process.memory_info().rss), None)
        except (psutil.Error, OSError):
            continue
        if reading[2] > 0:  # 0: it exited and awaits reaping; its last real figures stand
            measured[pid] = reading
    return measured


def measure_import_seconds() -> float:
    """How long ``import hive_ray`` takes in a fresh interpreter, in seconds."""
    code = "import time; t = time.perf_counter(); import hive_ray; print(time.perf_counter() - t)"
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True, timeout=60)
    return float(output.stdout.strip().splitlines()[-1])


def get_or_create_analyzer(settings: Settings) -> Any:
    """The analyzer actor by name, created (and started) on first use.

    Called by the orchestrator, which thereby owns it: the analyzer lives as long
    as the orchestrator does.
    """
    import ray

    try:
        return ray.get_actor(settings.analyzer_name, namespace=settings.namespace)
    except ValueError:
        pass
    actor = ray.remote(Analyzer).options(
        name=settings.analyzer_name,
        namespace=settings.namespace,
        get_if_exists=True,
        num_cpus=0,
        max_restarts=-1,
        # Beside the orchestrator, so that it can measure its memory.
        resources={"node:__internal_head__": 0.001},
    ).remote(settings.model_dump(mode="json", exclude={"api_keys"}))
    actor.start.remote()
    return actor


async def fetch_report(orchestrator: Any, baseline: Mapping[str, Any] | None = None) -> PerformanceReport:
    """The current :class:`PerformanceReport`, from async code (the API's ``/perf`` endpoints)."""
    analyzer = await orchestrator.analyzer.remote()
    return PerformanceReport.from_dict(await analyzer.report.remote(baseline))


__all__ = ["Analyzer", "fetch_report", "get_or_create_analyzer", "measure_import_seconds"]
