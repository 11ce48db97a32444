"""Run one benchmark and write its figures as JSON.

    python perf/run.py NAME [--quick] [--json FILE] [--no-save] [--note TEXT] [--deadline SECONDS]

NAME is one of the ``bench_<name>.py`` modules beside this file; each has a
``run(quick: bool) -> list[dict]`` returning rows of the shared format::

    {"metric": "throughput_tasks_per_s", "value": 21000.0, "unit": "tasks/s",
     "baseline": {"name": "ray.util.ActorPool.map over 8 actors", "value": 1700.0},
     "ratio": 12.35, "goal": ">= 1"}

``ratio`` is value / baseline, both measured in the same run on the same
machine (these machines are noisy; only same-run ratios mean anything). A
metric measured at a parameter carries it in its name (``spawn_seconds@1000``).

Every run is saved under ``perf/results/`` as ``NAME-YYYY-MM-DD-HHMM[-quick].json``
(``--no-save`` skips it), with a description of the machine (cores, memory,
Python, Ray, the hive-ray commit, the load average before and after) and
``--note`` (say so when the machine was shared). ``python perf/tables.py``
turns the committed files into the tables of the README and
``docs/ARCHITECTURE.md``.

Benchmarks start their own local Ray (never one a stale ``/tmp/ray`` pointer
names). A run that passes ``--deadline`` (default: 15 minutes quick, 3 hours
full) is stopped with an error and the stacks of its threads, instead of
hanging.
"""

from __future__ import annotations

import argparse
import datetime
import faulthandler
import importlib
import json
import os
import platform
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import FrameType
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"


class BenchmarkDeadline(Exception):
    """A benchmark ran past its deadline; something it waits for never came."""


def available() -> list[str]:
    return sorted(path.stem.removeprefix("bench_") for path in HERE.glob("bench_*.py"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name", choices=available())
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for CI and a first look")
    parser.add_argument("--json", dest="json_path", help="also write the results here")
    parser.add_argument("--no-save", action="store_true", help=f"do not write a file under {RESULTS}")
    parser.add_argument("--note", default="", help="kept with the results, e.g. 'machine shared with tests'")
    parser.add_argument("--deadline", type=float, default=None,
                        help="seconds before the run is stopped as hung (default 900 quick, 10800 full)")
    args = parser.parse_args(argv)
    # This checkout's hive_ray, as the Ray workers (which put the working directory
    # first on their path) see it, and the helpers beside this file.
    sys.path[:0] = [str(HERE), str(ROOT)]
    if os.environ.get("RAY_ADDRESS"):
        print(f"run.py: RAY_ADDRESS={os.environ['RAY_ADDRESS']!r} is ignored; benchmarks start their own "
              "local Ray", file=sys.stderr)
    module = importlib.import_module(f"bench_{args.name}")
    deadline = args.deadline if args.deadline is not None else (900.0 if args.quick else 10_800.0)
    environment = describe_machine()
    started_at = datetime.datetime.now(datetime.timezone.utc)
    started = time.time()
    guard = _deadline(args.name, deadline)
    try:
        with guard:
            rows = module.run(quick=args.quick)
    except BaseException:
        if not guard.expired:
            raise
        # Raised from inside Ray's C code, the deadline may arrive wrapped in another error.
        print(f"\nrun.py: {guard.message}", file=sys.stderr)
        return 2
    environment["load_average_after"] = _load_average()
    document = {
        "benchmark": args.name,
        "quick": args.quick,
        "started_at": started_at.isoformat(timespec="seconds"),
        "seconds": round(time.time() - started, 1),
        "note": args.note,
        "environment": environment,
        "results": rows,
    }
    text = json.dumps(document, indent=2, ensure_ascii=False) + "\n"
    written = []
    if args.json_path:
        Path(args.json_path).write_text(text)
        written.append(args.json_path)
    if not args.no_save:
        RESULTS.mkdir(exist_ok=True)
        path = RESULTS / result_file_name(args.name, started_at, args.quick)
        path.write_text(text)
        written.append(str(path.relative_to(ROOT)))
    _print_table(rows)
    print(f"\n{args.name}: {document['seconds']} s" + (f", written to {', '.join(written)}" if written else ""))
    return 0


def result_file_name(name: str, started_at: datetime.datetime, quick: bool) -> str:
    return f"{name}-{started_at:%Y-%m-%d-%H%M}{'-quick' if quick else ''}.json"


def describe_machine() -> dict[str, Any]:
    """What a figure was measured on: enough to tell two machines (and two commits) apart."""
    import psutil

    return {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "system": f"{platform.system()} {platform.release()}",
        "cpus": os.cpu_count(),
        "physical_cores": psutil.cpu_count(logical=False),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "ray": _version("ray"),
        "hive_ray": _version("hive-ray"),
        "hive_ray_commit": _git("rev-parse", "HEAD"),
        "hive_ray_uncommitted_changes": bool(_git("status", "--porcelain", "--untracked-files=no")),
        "load_average_before": _load_average(),
    }


def _load_average() -> list[float] | None:
    try:
        return [round(value, 2) for value in os.getloadavg()]
    except OSError:
        return None


def _git(*arguments: str) -> str | None:
    try:
        done = subprocess.run(["git", "-C", str(ROOT), *arguments], capture_output=True, text=True,
                              timeout=30, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip()


def _version(distribution: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(distribution)
    except PackageNotFoundError:
        return None


class _deadline:  # noqa: N801 - used as a context manager, like contextlib's
    """Raise :class:`BenchmarkDeadline` in the main thread after ``seconds``.

    The exception unwinds the benchmark, so its ``finally`` blocks stop what it
    started. Should the main thread be stuck where no signal reaches it, a
    watchdog thread dumps every thread's stack two minutes later and ends the
    process.
    """

    def __init__(self, name: str, seconds: float) -> None:
        self._name, self._seconds = name, seconds
        self._done = threading.Event()
        self.expired = False
        self.message = (f"benchmark {name!r} ran past its deadline of {seconds:.0f} s: something it waited for "
                        "never came (Ray not starting, an agent not answering) or the machine is too busy. "
                        "Its stack is above; pass --deadline to allow longer.")

    def _expired(self, signum: int, frame: FrameType | None) -> None:
        self.expired = True
        raise BenchmarkDeadline(self.message)

    def _watchdog(self) -> None:
        if not self._done.wait(self._seconds + 120):
            print(f"run.py: {self._name!r} is stuck past its deadline and did not unwind; stacks follow, "
                  "then the process exits", file=sys.stderr)
            faulthandler.dump_traceback(all_threads=True)
            os._exit(3)

    def __enter__(self) -> None:
        self._previous = signal.signal(signal.SIGALRM, self._expired)
        signal.setitimer(signal.ITIMER_REAL, self._seconds)
        threading.Thread(target=self._watchdog, name="deadline-watchdog", daemon=True).start()

    def __exit__(self, *exc_info: object) -> None:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, self._previous)
        self._done.set()


def _print_table(rows: list[dict]) -> None:
    print(f"\n{'metric':<44} {'value':>12} {'unit':<12} {'baseline':>12} {'ratio':>8}  goal")
    for row in rows:
        baseline = row.get("baseline") or {}
        value = baseline.get("value")
        ratio = row.get("ratio")
        print(f"{row['metric']:<44} {row['value']:>12.4g} {row.get('unit', ''):<12} "
              f"{'' if value is None else format(value, '.4g'):>12} {'' if ratio is None else format(ratio, '.3g'):>8}"
              f"  {row.get('goal', '')}")


if __name__ == "__main__":
    sys.exit(main())
