"""Helpers shared by the benchmarks: percentiles, rows, a fresh local Ray, process CPU and memory."""

from __future__ import annotations

import contextlib
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from typing import Any

# Every wait in a benchmark is bounded; a wait that would pass this is a failure, not a result.
WAIT_SECONDS = 300.0
_STARTED = time.monotonic()


def progress(message: str) -> None:
    """A line on stderr saying where a long benchmark is (stdout keeps the results)."""
    print(f"[{time.monotonic() - _STARTED:7.1f} s] {message}", file=sys.stderr, flush=True)


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


def row(metric: str, value: float, unit: str, baseline_name: str | None = None,
        baseline_value: float | None = None, goal: str = "", **extra: Any) -> dict[str, Any]:
    result: dict[str, Any] = {"metric": metric, "value": round(value, 6), "unit": unit}
    if baseline_name is not None and baseline_value is not None:
        result["baseline"] = {"name": baseline_name, "value": round(baseline_value, 6)}
        result["ratio"] = round(value / baseline_value, 4) if baseline_value else None
    if goal:
        result["goal"] = goal
    result.update(extra)
    return result


def fresh_process_seconds(statement: str, repeats: int = 5) -> float:
    """Median wall time of ``statement`` in fresh interpreters (import timing)."""
    code = f"import time; t = time.perf_counter(); {statement}; print(time.perf_counter() - t)"
    samples = []
    for _ in range(repeats):
        output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                                timeout=120)
        samples.append(float(output.stdout.strip().splitlines()[-1]))
    return statistics.median(samples)


@contextlib.contextmanager
def local_ray(num_cpus: int | None = None) -> Iterator[None]:
    """A new local Ray for this benchmark, shut down on exit.

    ``address="local"``: never the cluster a stale ``/tmp/ray`` pointer or
    ``RAY_ADDRESS`` names (a plain ``ray.init()`` retries a dead head's GCS for
    as long as it likes). ``num_cpus`` is a scheduling label here, not the
    hardware: hive-ray's agents and the plain actors ask for no CPU, but
    ``ray.util.multiprocessing.Pool(8)`` refuses to start on a cluster that
    declares fewer than 8.
    """
    import ray

    if ray.is_initialized():
        raise RuntimeError("Ray is already initialized in this process; the benchmark starts its own "
                           "local Ray so that no other workload shares it. Run it in a fresh process.")
    options = {"address": "local", "namespace": "hive", "include_dashboard": False,
               "logging_level": logging.WARNING, "log_to_driver": False,
               "num_cpus": num_cpus if num_cpus is not None else max(8, os.cpu_count() or 1)}
    try:
        ray.init(**options)
    except Exception as error:  # noqa: BLE001 - Ray raises a bare Exception for this
        # Ray gives its raylet a fixed 30 s to register; a machine busy with other work can
        # take longer. One more try, then the error stands.
        if "timed out during startup" not in str(error):
            raise
        ray.shutdown()
        time.sleep(5)
        ray.init(**options)
    try:
        yield
    finally:
        ray.shutdown()


def isolated_settings(name: str, state_dir: str | None = None, **settings: Any) -> dict[str, Any]:
    """Settings for an orchestrator of its own (name, journal) beside others in one Ray."""
    state = state_dir or tempfile.mkdtemp(prefix="hive-bench-")
    return {"state_dir": state, "journal_dir": os.path.join(state, f"journal-{name}"),
            "orchestrator_name": f"bench-{name}", **settings}


def close_isolated(client: Any) -> None:
    """Stop an orchestrator started for a benchmark (its agents first), and its client."""
    import ray

    try:
        client._call("shutdown", timeout=60)
        ray.kill(client._orchestrator, no_restart=True)
    except Exception:  # noqa: BLE001 - cleaning up a benchmark; Ray's shutdown ends the rest
        pass
    client.close()


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds the processes have used so far (gone ones count 0)."""
    import psutil

    total = 0.0
    for pid in set(pids):
        try:
            times = psutil.Process(pid).cpu_times()
        except psutil.Error:
            continue
        total += times.user + times.system
    return total


def uss_bytes(pids: list[int]) -> float:
    """Unique set size of the processes together: the memory they alone hold."""
    import psutil

    total = 0
    for pid in set(pids):
        try:
            total += psutil.Process(pid).memory_full_info().uss
        except psutil.Error:
            pass
    return float(total)
