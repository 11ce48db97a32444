"""The performance tables of the README and docs/ARCHITECTURE.md, generated from result files.

    python perf/tables.py           # rewrite every table between its markers
    python perf/tables.py --check   # exit 1 and name the files whose tables differ

Each table lives between ``<!-- perf-table:begin NAME -->`` and
``<!-- perf-table:end NAME -->`` in its document; everything between the markers
is generated, so text and numbers cannot drift (``tests/unit/test_perf_tables.py``
fails when a committed table differs from what the committed files give).

Figures come from the JSON files ``perf/run.py`` writes under ``perf/results/``:
for each benchmark, its newest full run, or its newest quick run if it has no
full run (the table says which). A figure a run does not have is left out.
No Ray and nothing beyond the standard library: this runs anywhere.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "perf" / "results"


# ---------------------------------------------------------------------------- runs
@dataclass(frozen=True, slots=True)
class Run:
    """One result file: a benchmark's rows and the machine they were measured on."""

    path: Path
    document: dict[str, Any]

    @property
    def benchmark(self) -> str:
        return str(self.document["benchmark"])

    @property
    def quick(self) -> bool:
        return bool(self.document.get("quick"))

    def rows(self) -> dict[str, dict[str, Any]]:
        return {result["metric"]: result for result in self.document.get("results", [])}


def load_runs(directory: Path = RESULTS) -> dict[str, Run]:
    """The run each benchmark's figures come from: its newest full run, else its newest quick run.

    Raises:
        ValueError: a file under ``directory`` is not a result document.
    """
    chosen: dict[str, Run] = {}
    for path in sorted(directory.glob("*.json")):
        try:
            document = json.loads(path.read_text())
            run = Run(path, document)
            run.benchmark  # noqa: B018 - a document without one is not a result file
        except (ValueError, KeyError, TypeError) as error:
            raise ValueError(f"{path} is not a result file of perf/run.py ({error}); move it out of "
                             f"{directory} or write it again with perf/run.py") from None
        current = chosen.get(run.benchmark)
        if current is None or _preference(run) > _preference(current):
            chosen[run.benchmark] = run
    return chosen


def _preference(run: Run) -> tuple[bool, str, str]:
    return (not run.quick, str(run.document.get("started_at", "")), run.path.name)


# ---------------------------------------------------------------------------- formatting
def number(value: float) -> str:
    """A figure as a reader wants it: thousands separated, about three significant digits."""
    magnitude = abs(value)
    if magnitude >= 100:
        return f"{value:,.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    if magnitude >= 0.1 or value == 0:
        return f"{value:.2f}"
    return f"{value:.2g}"


def quantity(value: float | None, unit: str) -> str:
    """``value`` with its unit, e.g. ``15,230/s``, ``0.89 ms``, ``5.0 ms`` for 0.005 s."""
    if value is None:
        return ""
    if unit == "tasks/s":
        return f"{number(value)}/s"
    if unit == "requests/s":
        return f"{number(value)} requests/s"
    if unit == "s" and abs(value) < 1:
        return f"{number(value * 1000)} ms"
    if unit == "s" and abs(value) >= 3600:
        return f"{number(value / 3600)} h"
    if unit == "s" and abs(value) >= 120:
        return f"{number(value / 60)} min"
    if unit == "KiB" and abs(value) >= 10 * 1024:
        return f"{number(value / 1024)} MiB"
    if unit == "%":
        return f"{value:+.1f} %"
    if unit.startswith("µs CPU/"):
        return f"{number(value)} µs"
    if unit in ("tasks", "executions", "spans", "requests"):
        return f"{value:,.0f}"
    if unit in ("", "fraction", "ratio"):
        return number(value)
    return f"{number(value)} {unit}"


def ratio_text(result: dict[str, Any]) -> str:
    ratio = result.get("ratio")
    return "" if ratio is None else f"{ratio:.3g}"


# ---------------------------------------------------------------------------- table specs
@dataclass(frozen=True, slots=True)
class Entry:
    """Rows of a table: one per metric found in the benchmark's run.

    With several metrics that share a value (one figure against several
    baselines) and ``strongest_first``, the strongest baseline leads: the
    highest baseline value first, or the lowest when ``lower_is_better``.
    ``{n}`` in the label stands for the metric's parameter (``@1000``: 1,000).
    """

    benchmark: str
    metrics: tuple[str, ...]
    label: str
    strongest_first: bool = False
    lower_is_better: bool = False
    value: Callable[[dict[str, Any], dict[str, dict[str, Any]]], str] | None = None
    baseline: Callable[[dict[str, Any], dict[str, dict[str, Any]]], str] | None = None


def _degradation_value(result: dict[str, Any], rows: dict[str, dict[str, Any]]) -> str:
    text = quantity(result["value"], "%")
    interval = result.get("ci95_pct")
    if interval:
        missed = ", wider than the ±5 aimed at" if result.get("half_width_target_met") is False else ""
        text += (f" (95 % interval {interval[0]:+.1f} … {interval[1]:+.1f}, "
                 f"±{result.get('half_width_pct', 0):.1f} points{missed}, {result.get('rounds', '?')} rounds)")
    return text


def _degradation_baseline(result: dict[str, Any], rows: dict[str, dict[str, Any]]) -> str:
    size = result["metric"].split("@", 1)[1]
    p99 = rows.get(f"latency_p99_ms@{size}")
    if p99 is None or not p99.get("baseline"):
        return ""
    return f"p99 {quantity(p99['baseline']['value'], 'ms')} → {quantity(p99['value'], 'ms')}"


def _with_total(total_metric: str) -> Callable[[dict[str, Any], dict[str, dict[str, Any]]], str]:
    def value(result: dict[str, Any], rows: dict[str, dict[str, Any]]) -> str:
        total = rows.get(total_metric)
        text = quantity(result["value"], result.get("unit", ""))
        return text if total is None else f"{text} of {quantity(total['value'], total.get('unit', ''))}"

    return value


THROUGHPUT = ("throughput_tasks_per_s@vs_batched_calls", "throughput_tasks_per_s@vs_mp_pool",
              "throughput_tasks_per_s@vs_pipelined_calls", "throughput_tasks_per_s")
CURVE_SIZES = ("1000", "10000", "100000")

# Rows both documents show.
RUN_P50 = Entry("overhead", ("single_task_latency_p50_ms",), "`hive.run`, one echo task, p50")
MAP_THROUGHPUT = Entry("overhead", THROUGHPUT, "20,000 echo items over 8 agents, `hive.map`", strongest_first=True)
DATA_PLANE_OFF = Entry("overhead", ("throughput_tasks_per_s@data_plane_off",),
                       "`hive.map` with the data plane off (tasks as Ray calls, still batched)")
DATA_PLANE_GAIN = Entry("overhead", ("throughput_tasks_per_s@vs_data_plane_off",),
                        "`hive.map`, data plane on against off")
IDLE_MEMORY = Entry("scale", tuple(f"idle_agent_kib@{size}" for size in CURVE_SIZES),
                    "memory per idle packed agent, {n} agents")

TABLES: dict[str, list[Entry]] = {
    "readme": [
        RUN_P50,
        Entry("overhead", ("submit_result_latency_p50_ms",), "`hive.submit(...).result()`, p50"),
        MAP_THROUGHPUT,
        Entry("overhead", ("cpu_us_per_task@vs_batched_calls", "cpu_us_per_task@vs_mp_pool"),
              "CPU per echo task, every process (lower is better)", strongest_first=True, lower_is_better=True),
        DATA_PLANE_OFF,
        DATA_PLANE_GAIN,
        Entry("overhead", ("throughput_tasks_per_s@vs_journal_off",), "`hive.map`, journal on against off"),
        Entry("overhead", ("orchestrator_cpu_us_per_task",), "orchestrator CPU per task, journal on against off"),
        Entry("overhead", ("host_cpu_us_per_task",), "agent hosts' CPU per task, journal on against off"),
        Entry("overhead", ("import_seconds",), "`import hive_ray`"),
        Entry("scale", tuple(f"spawn_seconds@{size}" for size in CURVE_SIZES), "{n} packed agents ready (4 hosts)"),
        IDLE_MEMORY,
        Entry("scale", ("capacity_tasks_per_s@50",), "single-task `run` capacity, {n} packed agents"),
        Entry("scale", tuple(f"degradation_pct@{size}" for size in CURVE_SIZES),
              "task latency p99, 50 → {n} packed agents, at half the capacity",
              value=_degradation_value, baseline=_degradation_baseline),
        Entry("scale", tuple(f"degradation_pct_upper95@{size}" for size in CURVE_SIZES),
              "the same, upper bound of its 95 % interval, {n} agents"),
        Entry("scale", ("orchestrator_rss_growth_mb",), "orchestrator RSS growth over 100,000 tasks"),
        Entry("chaos", ("lost",), "accepted tasks lost under chaos", value=_with_total("accepted")),
        Entry("chaos", ("recovery_seconds",), "orchestrator answering again after SIGKILL"),
        Entry("chaos", ("agent_state_kept@orchestrator_kill",), "agent state kept across an orchestrator kill"),
        Entry("chaos", ("poison_dead_lettered", "sibling_attempts_lost", "hung_calls"),
              "poison task, its siblings, hung calls"),
        Entry("api", ("get_p95_ms",), "`GET /v1/pools` p95, 20 users × 1 request/s"),
        Entry("api", ("submit_wait_p95_ms",), "`POST /v1/tasks?wait` p95, same load"),
        Entry("api", ("submit_wait_rps@vs_post_noop", "submit_wait_rps@32"),
              "`POST /v1/tasks?wait`, 32 users back to back", strongest_first=True),
        Entry("api", ("submit_wait_p95_ms@200",), "`POST /v1/tasks?wait` p95, 200 concurrent users"),
        Entry("api", ("refused_p50_ms@32",), "429 from a full pool, p50, 32 users back to back"),
        Entry("api", ("rps",), "`GET /v1/pools`, 32 users back to back"),
        Entry("api", ("error_rate",), "HTTP errors"),
        Entry("tracing", ("traced_throughput_ratio@default",), "echo throughput, tracing at the default sampling"),
        Entry("tracing", ("traced_throughput_ratio@100pct",), "echo throughput, every task traced"),
        Entry("llm", ("fanout_throughput@1000",), "1,000 streamed completions at once through `llm` agents"),
        Entry("llm", ("ttft_overhead_p50_ms",), "time to first token added by hive-ray, p50"),
        Entry("llm", ("rate_limit_violations",), "requests beyond the endpoint's shared limit"),
        Entry("llm", ("inflight_kib",), "memory per completion in flight (orchestrator and hosts)"),
        Entry("llm", ("stream_part_overhead_p50_ms",), "a generator agent streaming 1,000 parts, per part"),
        Entry("virtual", ("activation_p50_ms",), "virtual agent: first message to a new identity, answered, p50"),
        Entry("virtual", ("message_p50_ms",), "virtual agent: `ask_sync` to an active one, p50"),
        Entry("virtual", ("message_throughput@10000",),
              "`hive.ask_many` over {n} identities, every message changing a saved state"),
        Entry("virtual", ("pubsub_fanout_msgs_per_s@1000",),
              "one topic fanning out to {n} subscribed virtual agents, deliveries"),
        Entry("virtual", ("active_agents@100000",), "virtual agents active at once on one node"),
        Entry("virtual", ("agent_kib@100000",), "memory per active virtual agent, {n} active"),
        Entry("virtual", ("state_kept@host_kill",), "virtual agents' states kept across a SIGKILL of every host"),
        Entry("virtual", ("state_kept@orchestrator_kill",),
              "virtual agents' states kept across a SIGKILL of the orchestrator"),
    ],
    "architecture": [
        Entry("overhead", ("relay_call_latency_p50_ms",), "a relay actor forwarding one call to another, p50"),
        Entry("overhead", ("relay_cpu_us_per_call",), "CPU of the relaying actor per forwarded call"),
        RUN_P50,
        MAP_THROUGHPUT,
        DATA_PLANE_OFF,
        DATA_PLANE_GAIN,
        IDLE_MEMORY,
    ],
}

# The documents holding the tables, relative to the repository root.
DOCUMENTS = {"readme": Path("README.md"), "architecture": Path("docs/ARCHITECTURE.md")}


# ---------------------------------------------------------------------------- rendering
def render(name: str, runs: dict[str, Run], document: Path, root: Path = ROOT) -> str:
    """The markdown between the markers of table ``name`` in ``document`` (relative to ``root``)."""
    lines = ["| figure | hive-ray | baseline, same run | ratio | goal | run |", "|---|---|---|---|---|---|"]
    used: list[Run] = []
    for entry in TABLES[name]:
        run = runs.get(entry.benchmark)
        if run is None:
            continue
        rows = run.rows()
        found = [rows[metric] for metric in entry.metrics if metric in rows]
        if entry.strongest_first:
            sign = 1 if entry.lower_is_better else -1
            found.sort(key=lambda result: sign * (result.get("baseline") or {}).get("value", 0.0))
        for result in found:
            lines.append(_line(entry, result, rows, run))
            if run not in used:
                used.append(run)
    if not used:
        lines.append("| *no result files under perf/results/ yet: run `python perf/run.py NAME`* | | | | | |")
    lines.append("")
    lines.append("Runs these figures come from (`python perf/tables.py` regenerates this table from them):")
    lines.append("")
    for run in used:
        lines.append(f"- {_describe(run, document, root)}")
    return "\n".join(lines)


def _line(entry: Entry, result: dict[str, Any], rows: dict[str, dict[str, Any]], run: Run) -> str:
    unit = result.get("unit", "")
    value = entry.value(result, rows) if entry.value else quantity(result["value"], unit)
    baseline = result.get("baseline")
    if entry.baseline:
        base = entry.baseline(result, rows)
    elif baseline:
        base = f"{baseline['name']}: {quantity(baseline['value'], unit)}"
    else:
        base = ""
    parameter = result["metric"].split("@", 1)[1] if "@" in result["metric"] else ""
    label = entry.label.replace("{n}", f"{int(parameter):,}" if parameter.isdigit() else parameter)
    cells = [label, value, base, ratio_text(result), result.get("goal", ""),
             f"`{run.benchmark}`" + (" quick" if run.quick else "")]
    return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"


def _describe(run: Run, document: Path, root: Path) -> str:
    environment = run.document.get("environment", {})
    link = Path(os.path.relpath(run.path.resolve(), (root / document).parent.resolve())).as_posix()
    commit = environment.get("hive_ray_commit") or "unknown commit"
    parts = [
        f"`{run.benchmark}`: [{run.path.name}]({link})",
        "quick run" if run.quick else "full run",
        f"{run.document.get('started_at', '?')}",
        f"{environment.get('cpus', '?')} CPUs, {environment.get('memory_gib', '?')} GiB",
        f"Python {environment.get('python', '?')}, Ray {environment.get('ray', '?')}",
        f"hive-ray {commit[:10]}" + (" with uncommitted changes" if environment.get("hive_ray_uncommitted_changes")
                                      else ""),
    ]
    load = environment.get("load_average_before")
    if load:
        parts.append(f"load average {load[0]} before")
    text = ", ".join(parts)
    note = run.document.get("note")
    return text + (f". Note: {note}" if note else "")


# ---------------------------------------------------------------------------- documents
def markers(name: str) -> tuple[str, str]:
    return f"<!-- perf-table:begin {name} -->", f"<!-- perf-table:end {name} -->"


def replace_section(text: str, name: str, content: str) -> str:
    """``text`` with everything between table ``name``'s markers replaced by ``content``.

    Raises:
        ValueError: the markers are missing, repeated or out of order.
    """
    begin, end = markers(name)
    if text.count(begin) != 1 or text.count(end) != 1 or text.index(begin) > text.index(end):
        raise ValueError(f"expected one {begin!r} followed by one {end!r}; put both around the place the "
                         f"{name!r} table goes")
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{begin}\n{content}\n{end}{tail}"


def regenerate(root: Path = ROOT, results: Path | None = None) -> dict[Path, str]:
    """Every document's new text, the tables generated from the result files."""
    runs = load_runs(results or root / "perf" / "results")
    texts: dict[Path, str] = {}
    for name, relative in DOCUMENTS.items():
        path = root / relative
        text = texts.get(path, path.read_text())
        texts[path] = replace_section(text, name, render(name, runs, relative, root))
    return texts


def stale(root: Path = ROOT, results: Path | None = None) -> list[Path]:
    """The documents whose tables differ from what the result files give."""
    return [path for path, text in regenerate(root, results).items() if path.read_text() != text]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if a table is stale")
    args = parser.parse_args(argv)
    if args.check:
        outdated = stale()
        for path in outdated:
            print(f"{path.relative_to(ROOT)}: its performance table differs from perf/results/; "
                  "run python perf/tables.py", file=sys.stderr)
        return 1 if outdated else 0
    for path, text in regenerate().items():
        if path.read_text() != text:
            path.write_text(text)
            print(f"updated {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
