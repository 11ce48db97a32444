"""One traced submit, followed across processes: client -> orchestrator -> agent -> sub-tasks.

The module runs one scenario on a private, traced orchestrator and the tests
check what it left behind: a sampled client call (one trace, sub-tasks
included), tasks of a client that samples nothing itself (the orchestrator
samples each one: a trace per task), and tasks whose caller decided "not
sampled" (no spans). Spans of other processes are read from the JSON-lines
files every traced process writes into ``tracing_export_dir``. The periodic
shipment is set to a minute, longer than the scenario, so every span found got
out through the flushes that run when hosts and the orchestrator shut down:
that is the "nothing lost on exit" guarantee.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from hive_ray._span_export import read_span_files

pytestmark = pytest.mark.ray

_names = itertools.count()
PER_TASK = 20  # tasks the untraced client maps, each sampled by the orchestrator
UNSAMPLED_PARENT = {"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"}


@pytest.fixture(scope="module")
def scenario(ray_session: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimpleNamespace]:
    import ray

    from hive_ray import Hive
    from hive_ray._tracing import tracer_from_settings

    root = tmp_path_factory.mktemp("tracing")
    suffix = next(_names)
    settings = {
        "orchestrator_name": f"orchestrator-tracing-{suffix}", "analyzer_name": f"analyzer-tracing-{suffix}",
        "state_dir": str(root / "state"), "journal": False,
        "tracing": True, "tracing_sample_ratio": 1.0, "tracing_export_dir": str(root / "spans"),
        "tracing_flush_seconds": 60.0, "analyzer_sample_seconds": 0.5,
    }
    hive = Hive.connect(settings=settings)
    # The orchestrator (started by `hive`) samples at 1.0; this client's own calls never are.
    untraced = Hive.connect(settings={**settings, "tracing_sample_ratio": 0.0})
    try:
        hive.spawn("coordinator", count=1, pool="coordinator")
        hive.spawn("compute", count=2, pool="compute")
        hive.spawn("echo", count=1, pool="per-task")
        hive.spawn("echo", count=1, pool="unsampled-echo")
        # An unsampled map: its tasks carry no context, so each gets its own decision.
        assert untraced.map(None, list(range(PER_TASK)), pool="per-task", progress=False) \
            == list(range(PER_TASK))
        # A caller that decided "not sampled": its tasks stay unsampled, no spans anywhere.
        _, answers = hive._call("run_many", {"pool": "unsampled-echo", "trace_context": UNSAMPLED_PARENT},
                                ["quiet", "too"], 60)
        assert [answer[1] for answer in answers] == ["quiet", "too"]
        result = hive.run("coordinator", {"items": [1, 2, 3], "agent_type": "compute", "reduce": "sum"})
        pools = {pool.name: pool for pool in hive.pools()}
        orchestrator_pid = hive.statistics()["pid"]
        analyzer = hive._call("analyzer")
        deadline = time.monotonic() + 20  # a memory sample with the hosts still running
        while time.monotonic() < deadline:
            if ray.get(analyzer.statistics.remote())["processes"] >= 4:
                break
            time.sleep(0.2)
        for name in pools:
            hive.stop(name)  # each host flushes its spans as it shuts down
        hive._call("shutdown", timeout=60)  # and so does the orchestrator
        client_tracer = tracer_from_settings(hive.settings, "client")
        assert client_tracer is not None
        client_tracer.flush(10.0)
        report = ray.get(analyzer.report.remote())
        yield SimpleNamespace(
            result=result, spans=read_span_files(root / "spans"), report=report,
            client_pid=__import__("os").getpid(), orchestrator_pid=orchestrator_pid,
            host_pids={name: {agent.pid for agent in pool.agents} for name, pool in pools.items()},
            analyzer=analyzer,
        )
    finally:
        try:
            ray.kill(hive._orchestrator, no_restart=True)
        finally:
            untraced.close()
            hive.close()


def by_name(spans: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [span for span in spans if span["name"] == name]


def test_one_submit_makes_one_trace_parented_across_processes(scenario: SimpleNamespace) -> None:
    assert scenario.result["result"] == 6
    [client] = by_name(scenario.spans, "hive.run coordinator")
    spans = [span for span in scenario.spans if span["trace_id"] == client["trace_id"]]
    assert {span["name"].split(" ")[1] for span in scenario.spans if span not in spans} == {"per-task"}, \
        "every other span belongs to the per-task traces"
    assert not by_name(spans, "hive.task coordinator"), "tasks of a sampled call need no root of their own"
    [queue] = by_name(spans, "hive.queue coordinator")
    [dispatch] = by_name(spans, "hive.dispatch coordinator")
    [handle] = by_name(spans, "hive.handle coordinator")
    assert client["parent_span_id"] is None and client["kind"] == "CLIENT"
    assert queue["parent_span_id"] == dispatch["parent_span_id"] == client["span_id"]
    assert handle["parent_span_id"] == dispatch["span_id"]
    # The coordinator delegated three compute sub-tasks: children of its handle span.
    sub_queues = by_name(spans, "hive.queue compute")
    sub_dispatches = by_name(spans, "hive.dispatch compute")
    sub_handles = by_name(spans, "hive.handle compute")
    assert len(sub_queues) == 3 and len(sub_handles) == 3 and 1 <= len(sub_dispatches) <= 3
    assert {span["parent_span_id"] for span in sub_queues + sub_dispatches} == {handle["span_id"]}
    assert {span["parent_span_id"] for span in sub_handles} <= {span["span_id"] for span in sub_dispatches}
    assert all(span["status"] == "UNSET" for span in spans)


def test_spans_come_from_the_process_that_did_the_work(scenario: SimpleNamespace) -> None:
    def pids(name_prefix: str) -> set[int]:
        return {span["resource"]["process.pid"] for span in scenario.spans if span["name"].startswith(name_prefix)}

    assert pids("hive.run") == {scenario.client_pid}
    assert pids("hive.queue") == pids("hive.dispatch") == pids("hive.task") == {scenario.orchestrator_pid}
    assert pids("hive.handle coordinator") == scenario.host_pids["coordinator"]
    assert pids("hive.handle compute") <= scenario.host_pids["compute"]
    kinds = {span["resource"]["process.pid"]: span["resource"]["hive.process.kind"] for span in scenario.spans}
    assert kinds[scenario.client_pid] == "client"
    assert kinds[scenario.orchestrator_pid] == "orchestrator"


def test_handle_spans_carry_task_attributes(scenario: SimpleNamespace) -> None:
    [handle] = by_name(scenario.spans, "hive.handle coordinator")
    assert handle["attributes"]["hive.agent_type"] == "coordinator"
    assert handle["attributes"]["hive.agent_id"].startswith("coordinator-")
    assert handle["attributes"]["hive.attempt"] == 1
    assert handle["start_ns"] <= handle["end_ns"]


def test_each_task_of_an_unsampled_map_gets_a_trace_of_its_own(scenario: SimpleNamespace) -> None:
    roots = by_name(scenario.spans, "hive.task per-task")
    assert len({root["attributes"]["hive.task_id"] for root in roots}) == PER_TASK
    assert len({root["trace_id"] for root in roots}) == PER_TASK
    for root in roots:
        assert root["parent_span_id"] is None and root["attributes"]["hive.state"] == "succeeded"
        trace = [span for span in scenario.spans if span["trace_id"] == root["trace_id"]]
        [queue] = by_name(trace, "hive.queue per-task")
        [dispatch] = by_name(trace, "hive.dispatch per-task")
        [handle] = by_name(trace, "hive.handle per-task")
        assert len(trace) == 4
        assert queue["parent_span_id"] == dispatch["parent_span_id"] == root["span_id"]
        assert handle["parent_span_id"] == dispatch["span_id"]
        assert root["start_ns"] <= queue["start_ns"] and handle["end_ns"] <= root["end_ns"]


def test_tasks_whose_caller_decided_not_to_sample_make_no_spans(scenario: SimpleNamespace) -> None:
    assert not [span for span in scenario.spans if "unsampled" in span["name"]]
    assert not [op for op in scenario.report["operations"] if "unsampled" in op["operation"]]


def test_the_analyzer_received_every_span_and_profiled_the_processes(scenario: SimpleNamespace) -> None:
    counts = {each["operation"]: each["count"] for each in scenario.report["operations"]}
    exported: dict[str, int] = {}
    for span in scenario.spans:
        exported[span["name"]] = exported.get(span["name"], 0) + 1
    assert counts == exported
    assert scenario.report["analyzer"]["spans_dropped"] == 0
    kinds = {process["kind"] for process in scenario.report["memory"]}
    assert {"orchestrator", "agent host", "analyzer"} <= kinds
    assert all(process["rss_bytes"] > 0 and process["uss_bytes"] > 0 for process in scenario.report["memory"])


def test_a_baseline_of_the_window_shows_no_regression_against_itself(scenario: SimpleNamespace) -> None:
    import ray

    baseline = ray.get(scenario.analyzer.baseline.remote())
    results = ray.get(scenario.analyzer.compare.remote(baseline))
    assert results and not any(result["regressed"] for result in results)


def test_the_orchestrator_hands_hosts_its_tracing_settings(scenario: SimpleNamespace, hive: Any) -> None:
    import ray

    config = ray.get(hive._orchestrator.tracing_config.remote())
    assert config["enabled"] is False  # the session's orchestrator does not trace
    assert Path  # keep the import used for type checkers reading this module
