"""Span records become OpenTelemetry spans in an exporter (in memory, JSON lines); no Ray."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from hive_ray._span_export import read_span_files
from hive_ray._tracing import CLIENT, Tracer, TracingConfig

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"

in_memory = pytest.importorskip("opentelemetry.sdk.trace.export.in_memory_span_exporter")


def traced_pair(tracer: Tracer) -> tuple[Any, Any]:
    root = tracer.start_root_span("hive.run echo", kind=CLIENT, attributes={"hive.operation": "run"})
    assert root is not None
    child = tracer.start_span("hive.handle echo", root.context(), attributes={"hive.task_id": "t1"})
    assert child is not None
    child.set_error("ValueError: bad")
    child.end()
    root.end()
    return root, child


def test_spans_reach_an_in_memory_exporter_with_parents_kinds_and_status(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_SERVICE_NAME", "hive-under-test")
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_ENDPOINT", raising=False)
    exporter = in_memory.InMemorySpanExporter()
    tracer = Tracer(TracingConfig(enabled=True, sample_ratio=1.0, feed_analyzer=False), "client",
                    exporters=[exporter], start_thread=False)
    root, child = traced_pair(tracer)
    assert tracer.flush(5.0)
    spans = {span.name: span for span in exporter.get_finished_spans()}
    assert set(spans) == {"hive.run echo", "hive.handle echo"}
    exported_root, exported_child = spans["hive.run echo"], spans["hive.handle echo"]
    assert exported_root.parent is None and exported_root.kind.name == "CLIENT"
    assert exported_child.parent.span_id == exported_root.context.span_id == root.span_id
    assert exported_child.context.trace_id == exported_root.context.trace_id == root.trace_id
    assert exported_child.status.status_code.name == "ERROR"
    assert exported_child.status.description == "ValueError: bad"
    assert exported_root.status.status_code.name == "UNSET"
    assert exported_child.attributes["hive.task_id"] == "t1"
    assert exported_root.resource.attributes["service.name"] == "hive-under-test"
    assert exported_root.resource.attributes["hive.process.kind"] == "client"
    assert exported_root.instrumentation_scope.name == "hive_ray"
    assert exported_child.end_time >= exported_child.start_time
    tracer.shutdown(1.0)


def test_json_lines_files_hold_every_span(tmp_path: Path) -> None:
    config = TracingConfig(enabled=True, sample_ratio=1.0, feed_analyzer=False, export_dir=str(tmp_path))
    tracer = Tracer(config, "orchestrator", start_thread=False)
    root, child = traced_pair(tracer)
    tracer.flush(5.0)
    spans = {span["name"]: span for span in read_span_files(tmp_path)}
    assert spans["hive.handle echo"]["parent_span_id"] == f"{root.span_id:016x}"
    assert spans["hive.handle echo"]["trace_id"] == root.trace_id_hex
    assert spans["hive.handle echo"]["status"] == "ERROR"
    assert spans["hive.run echo"]["resource"]["hive.process.kind"] == "orchestrator"
    assert [path.name.split("-")[1] for path in tmp_path.iterdir()] == ["orchestrator"]
    tracer.shutdown(1.0)


def test_the_export_thread_ships_on_its_own(tmp_path: Path) -> None:
    config = TracingConfig(enabled=True, sample_ratio=1.0, feed_analyzer=False, export_dir=str(tmp_path),
                           flush_seconds=0.05)
    tracer = Tracer(config, "agent-host")
    traced_pair(tracer)
    import time

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and len(read_span_files(tmp_path)) < 2:
        time.sleep(0.05)
    assert len(read_span_files(tmp_path)) == 2
    tracer.shutdown(1.0)


def test_without_ray_the_analyzer_feed_counts_spans_as_unsent() -> None:
    tracer = Tracer(TracingConfig(enabled=True, sample_ratio=1.0), "client", start_thread=False)
    traced_pair(tracer)
    tracer.pipeline.drain()
    assert tracer.pipeline.unsent == 2
