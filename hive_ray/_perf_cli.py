"""``hive perf``: the performance analyzer from the command line.

::

    hive perf report [--html FILE] [--json] [--baseline FILE]
                                   latencies per operation, memory, queues, advice
    hive perf baseline save [FILE] record the current window as the baseline
    hive perf baseline compare [FILE]
                                   compare the current window with the baseline; exits
                                   1 on a regression (significant and material), 2 when
                                   nothing could be compared, 0 otherwise: a CI gate

FILE defaults to ``perf-baseline.json`` in the state directory. The analyzer
sees operations only while tracing is on (``HIVE_TRACING=1`` for the cluster
and for the process that submits work) and only the sampled share of root
calls (``HIVE_TRACING_SAMPLE_RATIO``, 0.01 by default); an empty report says
which of these is the cause. Memory, queues and restarts are profiled
regardless, from when the analyzer first runs.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from hive_ray._cli_output import plural

BASELINE_FILE = "perf-baseline.json"

#: Exit codes of ``hive perf baseline compare``.
EXIT_OK, EXIT_REGRESSION, EXIT_NOT_COMPARABLE = 0, 1, 2


def register(commands: Any, parents: list[argparse.ArgumentParser] | None = None) -> None:
    """Add the ``perf`` command to the ``hive`` parser's subcommands (``parents``: the options
    every command takes)."""
    parents = parents or []
    perf = commands.add_parser("perf", help="performance report and baselines (the analyzer)",
                               description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                               parents=parents)
    perf.set_defaults(handler=lambda args: _usage(perf), command_name="perf")
    verbs = perf.add_subparsers(title="perf commands")

    report = verbs.add_parser("report", help="latencies, memory, queues and recommendations",
                              parents=parents)
    report.add_argument("--html", metavar="FILE", help="also write a self-contained HTML page with charts")
    report.add_argument("--json", action="store_true", help="print the report as JSON")
    report.add_argument("--baseline", metavar="FILE", help="include a comparison with this baseline")
    report.set_defaults(handler=_report, command_name="perf report")

    baseline = verbs.add_parser("baseline", help="save or compare a latency baseline", parents=parents)
    baseline.set_defaults(handler=lambda args: _usage(baseline), command_name="perf baseline")
    actions = baseline.add_subparsers(title="baseline commands")
    save = actions.add_parser("save", help="record the current window as the baseline", parents=parents)
    save.add_argument("file", nargs="?", help=f"where (default: <state_dir>/{BASELINE_FILE})")
    save.set_defaults(handler=_baseline_save, command_name="perf baseline save")
    compare = actions.add_parser("compare", help="exit 1 if the current window regressed", parents=parents)
    compare.add_argument("file", nargs="?", help=f"the baseline (default: <state_dir>/{BASELINE_FILE})")
    compare.add_argument("--json", action="store_true", help="print the results as JSON")
    compare.set_defaults(handler=_baseline_compare, command_name="perf baseline compare")


def _errors(args: argparse.Namespace) -> Any:
    """The terminal's error stream (``sys.stderr`` is the log file unless --verbose)."""
    console = getattr(args, "console", None)
    return console.err if console is not None else sys.stderr


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def _analyzer_call(method: str, *args: Any) -> tuple[Any, Any]:
    """Call the analyzer of the running cluster; returns ``(answer, settings)``."""
    answer, settings, _ = _analyzer_call_and_traffic(method, *args)
    return answer, settings


def _analyzer_call_and_traffic(method: str, *args: Any) -> tuple[Any, Any, int | None]:
    """:func:`_analyzer_call`, plus how many tasks the orchestrator accepted since it started."""
    import ray

    from hive_ray._client import Hive
    from hive_ray._settings import Settings

    settings = Settings.load()
    hive = Hive.connect(settings=settings, embedded=False)
    try:
        analyzer = hive._call("analyzer")
        answer = ray.get(getattr(analyzer, method).remote(*args), timeout=60)
        submitted = hive.statistics().get("counters", {}).get("submitted")
        return answer, settings, submitted
    finally:
        hive.close()


def _baseline_path(given: str | None, settings: Any = None) -> Path:
    if given:
        return Path(given)
    if settings is None:
        from hive_ray._settings import Settings

        settings = Settings.load()
    return Path(settings.state_dir) / BASELINE_FILE


def _report(args: argparse.Namespace) -> int:
    from hive_ray._analyzer import PerformanceReport, load_baseline, render_html, render_text

    baseline = load_baseline(args.baseline).to_dict() if args.baseline else None
    data, _, submitted = _analyzer_call_and_traffic("report", baseline)
    report = PerformanceReport.from_dict(data)
    if args.html:
        Path(args.html).write_text(render_html(report), encoding="utf-8")
    if args.json:
        print(json.dumps(data, indent=2))
        return 0
    print(render_text(report), end="")
    print(analyzer_note(data.get("analyzer", {}), submitted, empty=not report.operations))
    if args.html:
        print(f"HTML report written to {args.html}")
    return 0


def analyzer_note(statistics: dict[str, Any], tasks_submitted: int | None, *, empty: bool) -> str:
    """The closing lines of ``hive perf report``: what the analyzer saw, and, for an empty
    report, why (tracing off, no traffic, or sampling too sparse) and what fixes it."""
    from hive_ray._analyzer import explain_empty

    received = statistics.get("spans_received", 0)
    dropped = statistics.get("spans_dropped", 0)
    sampling = statistics.get("sampling") or {}
    traced = (f"tracing on, sampling {float(sampling.get('ratio', 0)):g} of tasks"
              if sampling.get("tracing") else "tracing off")
    note = f"\nanalyzer: {received} spans in the window, {dropped} dropped ({traced})"
    if empty:
        note += "\n" + explain_empty(statistics, tasks_submitted)
    return note


def _baseline_save(args: argparse.Namespace) -> int:
    from hive_ray._analyzer import Baseline, save_baseline

    data, settings = _analyzer_call("baseline")
    baseline = Baseline.from_dict(data)
    if not baseline.operations:
        from hive_ray._analyzer import explain_empty

        statistics, _, submitted = _analyzer_call_and_traffic("statistics")
        print(f"hive perf: nothing to save as a baseline; {explain_empty(statistics, submitted)}",
              file=_errors(args))
        return EXIT_NOT_COMPARABLE
    path = _baseline_path(args.file, settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_baseline(path, baseline)
    print(f"baseline of {plural(len(baseline.operations), 'operation')} saved to {path}")
    for each in baseline.operations:
        print(f"  {each.operation}: p95 {each.p95 * 1000:.2f} ms over {each.count} calls")
    return EXIT_OK


def _baseline_compare(args: argparse.Namespace) -> int:
    from hive_ray._analyzer import BaselineError, load_baseline

    path = _baseline_path(args.file)
    try:
        baseline = load_baseline(path)
    except BaselineError as error:
        print(f"hive perf: {error}", file=_errors(args))
        return EXIT_NOT_COMPARABLE
    results, _ = _analyzer_call("compare", baseline.to_dict())
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        print(format_comparison(results))
    return comparison_exit_code(results)


def comparison_exit_code(results: list[dict[str, Any]]) -> int:
    """1 if any operation regressed, 2 if nothing was compared, else 0."""
    if not results:
        return EXIT_NOT_COMPARABLE
    return EXIT_REGRESSION if any(result["regressed"] for result in results) else EXIT_OK


def format_comparison(results: list[dict[str, Any]]) -> str:
    """The comparison as a terminal table, with a one-line verdict."""
    if not results:
        return ("no operation is in both the baseline and the current window: nothing compared "
                "(is tracing on, and has the same workload run?)")
    width = max(len("operation"), *(len(result["operation"]) for result in results))
    lines = [f"{'operation':<{width}}  {'base p95 ms':>11}  {'now p95 ms':>10}  {'ratio':>6}  "
             f"{'p-value':>8}  verdict"]
    for result in results:
        verdict = "REGRESSED" if result["regressed"] else (
            "slower, not significant" if result["material"] else "ok")
        lines.append(f"{result['operation']:<{width}}  {result['baseline_p95'] * 1000:>11.2f}  "
                     f"{result['current_p95'] * 1000:>10.2f}  {result['ratio']:>6.2f}  "
                     f"{result['p_value']:>8.1e}  {verdict}")
    regressed = [result["operation"] for result in results if result["regressed"]]
    lines.append("")
    lines.append(f"{len(regressed)} regression(s): {', '.join(regressed)}" if regressed
                 else f"no regression in {plural(len(results), 'operation')}")
    return "\n".join(lines)
