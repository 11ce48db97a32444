"""Run one benchmark and write its figures as JSON.

    python perf/run.py NAME [--quick] [--json FILE]

NAME is one of the ``bench_<name>.py`` modules beside this file; each has a
``run(quick: bool) -> list[dict]`` returning rows of the shared format::

    {"metric": "throughput_tasks_per_s", "value": 21000.0, "unit": "tasks/s",
     "baseline": {"name": "ray.util.ActorPool.map over 8 actors", "value": 1700.0},
     "ratio": 12.35, "goal": ">= 1"}

``ratio`` is value / baseline, both measured in the same run on the same
machine (these machines are noisy; only same-run ratios mean anything). A
metric measured at a parameter carries it in its name (``spawn_seconds@1000``).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def available() -> list[str]:
    return sorted(path.stem.removeprefix("bench_") for path in HERE.glob("bench_*.py"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name", choices=available())
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for CI and a first look")
    parser.add_argument("--json", dest="json_path", help="write the results here")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(HERE))
    module = importlib.import_module(f"bench_{args.name}")
    started = time.time()
    rows = module.run(quick=args.quick)
    document = {
        "benchmark": args.name,
        "quick": args.quick,
        "results": rows,
        "seconds": round(time.time() - started, 1),
        "environment": {
            "python": platform.python_version(),
            "machine": platform.machine(),
            "cpus": os.cpu_count(),
            "ray": _version("ray"),
            "hive_ray": _version("hive-ray"),
        },
    }
    text = json.dumps(document, indent=2)
    if args.json_path:
        Path(args.json_path).write_text(text + "\n")
    _print_table(rows)
    print(f"\n{args.name}: {document['seconds']} s" + (f", written to {args.json_path}" if args.json_path else ""))
    return 0


def _version(distribution: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(distribution)
    except PackageNotFoundError:
        return None


def _print_table(rows: list[dict]) -> None:
    print(f"\n{'metric':<38} {'value':>12} {'unit':<8} {'baseline':>12} {'ratio':>8}  goal")
    for row in rows:
        baseline = row.get("baseline") or {}
        value = baseline.get("value")
        ratio = row.get("ratio")
        print(f"{row['metric']:<38} {row['value']:>12.4g} {row.get('unit', ''):<8} "
              f"{'' if value is None else format(value, '.4g'):>12} {'' if ratio is None else format(ratio, '.3g'):>8}"
              f"  {row.get('goal', '')}")


if __name__ == "__main__":
    sys.exit(main())
