"""The performance tables are generated from result files (perf/tables.py); no Ray."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from perf import tables

ROOT = Path(__file__).resolve().parents[2]


def test_the_committed_tables_are_what_the_committed_result_files_give() -> None:
    outdated = [str(path.relative_to(ROOT)) for path in tables.stale(ROOT)]
    assert outdated == [], "run `python perf/tables.py` and commit the result: the tables drifted from perf/results/"


def test_every_document_has_its_markers() -> None:
    for name, relative in tables.DOCUMENTS.items():
        text = (ROOT / relative).read_text()
        begin, end = tables.markers(name)
        assert text.count(begin) == 1 and text.count(end) == 1, relative


def _throughput(metric: str, baseline: str, baseline_value: float, value: float = 15_000.0) -> dict[str, Any]:
    return {"metric": metric, "value": value, "unit": "tasks/s",
            "baseline": {"name": baseline, "value": baseline_value}, "ratio": round(value / baseline_value, 4)}


def _write(directory: Path, name: str, benchmark: str, *, quick: bool, started_at: str,
           results: list[dict[str, Any]], note: str = "") -> Path:
    document = {"benchmark": benchmark, "quick": quick, "started_at": started_at, "seconds": 1.0, "note": note,
                "environment": {"cpus": 2, "memory_gib": 23.4, "python": "3.11.7", "ray": "2.60.0",
                                "hive_ray_commit": "0123456789abcdef", "hive_ray_uncommitted_changes": False,
                                "load_average_before": [0.4, 0.3, 0.2]},
                "results": results}
    path = directory / name
    path.write_text(json.dumps(document))
    return path


def test_a_full_run_is_preferred_to_a_newer_quick_one_and_the_newest_full_run_wins(tmp_path: Path) -> None:
    row = [_throughput("throughput_tasks_per_s", "ActorPool", 2000.0)]
    _write(tmp_path, "overhead-a.json", "overhead", quick=False, started_at="2026-01-01T00:00:00+00:00", results=row)
    newest_full = _write(tmp_path, "overhead-b.json", "overhead", quick=False,
                         started_at="2026-02-01T00:00:00+00:00", results=row)
    _write(tmp_path, "overhead-c.json", "overhead", quick=True, started_at="2026-03-01T00:00:00+00:00", results=row)
    only_quick = _write(tmp_path, "scale-a.json", "scale", quick=True, started_at="2026-03-01T00:00:00+00:00",
                        results=[])
    runs = tables.load_runs(tmp_path)
    assert runs["overhead"].path == newest_full
    assert runs["scale"].path == only_quick


def test_a_file_that_is_no_result_is_named_in_the_error(tmp_path: Path) -> None:
    (tmp_path / "notes.json").write_text('{"hello": 1}')
    with pytest.raises(ValueError, match="notes.json is not a result file of perf/run.py"):
        tables.load_runs(tmp_path)


def test_the_strongest_baseline_comes_first_and_every_row_names_its_run(tmp_path: Path) -> None:
    results = [
        _throughput("throughput_tasks_per_s", "ActorPool", 2_100.0),
        _throughput("throughput_tasks_per_s@vs_pipelined_calls", "pipelined calls", 3_600.0),
        _throughput("throughput_tasks_per_s@vs_batched_calls", "batched calls", 780_000.0),
        _throughput("throughput_tasks_per_s@vs_mp_pool", "mp Pool", 93_000.0),
    ]
    _write(tmp_path, "overhead-x.json", "overhead", quick=True, started_at="2026-01-01T00:00:00+00:00",
           results=results, note="machine shared with tests")
    text = tables.render("readme", tables.load_runs(tmp_path), Path("README.md"), root=tmp_path)
    lines = [line for line in text.splitlines() if "20,000 echo items" in line]
    assert [line.split("|")[3].strip() for line in lines] == [
        "batched calls: 780,000/s", "mp Pool: 93,000/s", "pipelined calls: 3,600/s", "ActorPool: 2,100/s"]
    assert all(line.split("|")[2].strip() == "15,000/s" for line in lines)
    assert all(line.rstrip().endswith("| `overhead` quick |") for line in lines)
    assert "[overhead-x.json](overhead-x.json), quick run" in text
    assert "Note: machine shared with tests" in text
    assert "hive-ray 0123456789" in text


def test_a_degradation_row_shows_its_interval_and_the_two_tails(tmp_path: Path) -> None:
    results = [
        {"metric": "latency_p99_ms@10000", "value": 5.2, "unit": "ms",
         "baseline": {"name": "same load on 50", "value": 4.8}, "ratio": 1.083},
        {"metric": "degradation_pct@10000", "value": 8.33, "unit": "%", "ci95_pct": [2.0, 14.5],
         "half_width_pct": 6.25, "rounds": 14},
    ]
    _write(tmp_path, "scale-x.json", "scale", quick=False, started_at="2026-01-01T00:00:00+00:00", results=results)
    text = tables.render("readme", tables.load_runs(tmp_path), Path("README.md"), root=tmp_path)
    line = next(line for line in text.splitlines() if "task latency p99, 50 → 10,000 packed agents" in line)
    assert "+8.3 % (95 % interval +2.0 … +14.5, ±6.2 points, 14 rounds)" in line
    assert "p99 4.80 ms → 5.20 ms" in line


def test_no_result_files_say_how_to_make_them(tmp_path: Path) -> None:
    text = tables.render("readme", {}, Path("README.md"), root=tmp_path)
    assert "run `python perf/run.py NAME`" in text


def test_the_section_between_the_markers_is_replaced_and_nothing_else() -> None:
    text = "intro\n<!-- perf-table:begin readme -->\nold\n<!-- perf-table:end readme -->\noutro\n"
    assert tables.replace_section(text, "readme", "new") == (
        "intro\n<!-- perf-table:begin readme -->\nnew\n<!-- perf-table:end readme -->\noutro\n")


@pytest.mark.parametrize("text", [
    "no markers at all",
    "<!-- perf-table:end readme --> <!-- perf-table:begin readme -->",
    "<!-- perf-table:begin readme --> <!-- perf-table:begin readme --> <!-- perf-table:end readme -->",
])
def test_missing_or_misplaced_markers_are_refused_with_the_fix(text: str) -> None:
    with pytest.raises(ValueError, match="put both around the place the 'readme' table goes"):
        tables.replace_section(text, "readme", "new")


@pytest.mark.parametrize(("value", "unit", "expected"), [
    (15_230.4, "tasks/s", "15,230/s"),
    (0.894, "ms", "0.89 ms"),
    (0.005, "s", "5.00 ms"),
    (1.74, "s", "1.74 s"),
    (-0.5, "%", "-0.5 %"),
    (208.0, "µs CPU/task", "208 µs"),
    (8050, "tasks", "8,050"),
    (4.8, "KiB", "4.80 KiB"),
    (50_852, "KiB", "49.7 MiB"),
    (6_713, "s", "1.86 h"),
    (345, "s", "5.75 min"),
    (0.00004, "fraction", "4e-05"),
])
def test_quantities_read_as_a_person_writes_them(value: float, unit: str, expected: str) -> None:
    assert tables.quantity(value, unit) == expected


def test_an_interval_wider_than_aimed_at_says_so(tmp_path: Path) -> None:
    results = [{"metric": "degradation_pct@1000", "value": 3.0, "unit": "%", "ci95_pct": [-9.0, 15.0],
                "half_width_pct": 12.0, "rounds": 40, "half_width_target_met": False}]
    _write(tmp_path, "scale-x.json", "scale", quick=True, started_at="2026-01-01T00:00:00+00:00", results=results)
    text = tables.render("readme", tables.load_runs(tmp_path), Path("README.md"), root=tmp_path)
    assert "±12.0 points, wider than the ±5 aimed at, 40 rounds" in text


def test_for_cpu_the_lowest_baseline_is_the_strongest(tmp_path: Path) -> None:
    cpu = [{"metric": f"cpu_us_per_task@vs_{name}", "value": 200.0, "unit": "µs CPU/task",
            "baseline": {"name": name, "value": value}, "ratio": 200.0 / value}
           for name, value in (("mp_pool", 49.0), ("batched_calls", 4.0))]
    _write(tmp_path, "overhead-x.json", "overhead", quick=True, started_at="2026-01-01T00:00:00+00:00", results=cpu)
    text = tables.render("readme", tables.load_runs(tmp_path), Path("README.md"), root=tmp_path)
    lines = [line for line in text.splitlines() if "CPU per echo task" in line]
    assert [line.split("|")[3].strip() for line in lines] == ["batched_calls: 4.00 µs", "mp_pool: 49.0 µs"]
