"""Where a process's finished spans go: the analyzer actor, and OpenTelemetry exporters.

One daemon thread per traced process wakes every ``flush_seconds``, takes every
queued span record (see :class:`hive_ray._tracing.Tracer`) and

- sends the analyzer one message per wake-up: per operation (span name), the
  durations of its calls that succeeded and of those that failed, plus how many
  spans this process has dropped so far. The call is fire-and-forget, so a slow
  or missing analyzer never blocks anything; spans it cannot take are counted.
- when an exporter is configured, turns the records into OpenTelemetry
  ``ReadableSpan`` objects and hands them to the SDK's ``BatchSpanProcessor``:
  OTLP over HTTP when ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or its ``_TRACES_``
  form) is set, JSON lines in ``tracing_export_dir``, and whatever a test passes.

OpenTelemetry is imported by this thread, and only if something is exported.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hive_ray._tracing import SpanRecord, Tracer

logger = logging.getLogger("hive_ray.tracing")

#: Seconds between two attempts to find the analyzer actor when it is missing.
ANALYZER_LOOKUP_INTERVAL = 5.0


class SpanPipeline:
    """The export side of one :class:`~hive_ray._tracing.Tracer`; see the module docstring."""

    def __init__(self, tracer: Tracer, *, exporters: list[Any], start_thread: bool = True) -> None:
        self._tracer = tracer
        self._config = tracer.config
        self._label = f"{tracer.process_kind}:{os.getpid()}"
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopped = False
        self._extra_exporters = exporters
        self._processors: list[Any] | None = None
        self._resource: Any = None
        self._analyzer: Any = None
        self._analyzer_lookup_at = 0.0
        self._last_ref: Any = None
        self.unsent = 0  # spans the analyzer could not be sent
        self.exported = 0
        self._failures = 0
        self._thread: threading.Thread | None = None
        if start_thread:
            self._thread = threading.Thread(target=self._run, name="hive-span-export", daemon=True)
            self._thread.start()

    # -- the thread -----------------------------------------------------------------
    def _run(self) -> None:
        while not self._stopped:
            self._wake.wait(self._config.flush_seconds)
            self._wake.clear()
            if self._stopped:
                break
            try:
                self.drain()
            except Exception:  # noqa: BLE001 - keep exporting; say so, but not every second
                self._failures += 1
                if self._failures in (1, 10) or self._failures % 1000 == 0:
                    logger.exception("exporting spans failed (%d times so far)", self._failures)

    def drain(self, *, wait_seconds: float | None = None) -> int:
        """Export every queued record now; with ``wait_seconds``, wait until delivered."""
        with self._lock:
            queue = self._tracer.queue
            batch: list[SpanRecord] = []
            pop, append = queue.popleft, batch.append
            while queue:
                append(pop())
            if batch or wait_seconds is not None:
                self._to_analyzer(batch, wait_seconds)
                if batch:
                    self._to_exporters(batch)
            return len(batch)

    def flush(self, timeout: float = 5.0) -> bool:
        """Drain, deliver to the analyzer and force every exporter to send."""
        try:
            self.drain(wait_seconds=timeout)
        except Exception:  # noqa: BLE001
            logger.exception("flushing spans failed")
            return False
        ok = True
        for processor in self._processors or ():
            ok = processor.force_flush(int(timeout * 1000)) and ok
        return ok

    def shutdown(self, timeout: float = 5.0) -> None:
        self.flush(timeout)
        self._stopped = True
        self._wake.set()
        for processor in self._processors or ():
            processor.shutdown()
        self._processors = []

    # -- the analyzer ------------------------------------------------------------
    def _to_analyzer(self, batch: list[SpanRecord], wait_seconds: float | None) -> None:
        if not self._config.feed_analyzer:
            return
        if not _ray_running():
            # Never touch Ray once it is shut down: its API would start a new local one.
            self._analyzer = self._last_ref = None
            self.unsent += len(batch)
            return
        grouped: dict[str, tuple[list[float], list[float]]] = {}
        for name, _kind, _trace, _span, _parent, start_ns, end_ns, _attributes, error in batch:
            pair = grouped.get(name)
            if pair is None:
                pair = grouped[name] = ([], [])
            pair[error is not None].append((end_ns - start_ns) / 1e9)
        analyzer = self._analyzer_handle()
        if analyzer is None:
            self.unsent += len(batch)
            return
        try:
            reference = analyzer.ingest.remote(self._label, grouped, self._tracer.dropped + self.unsent)
        except Exception:  # noqa: BLE001 - the actor is gone; look it up again later
            self._analyzer = None
            self.unsent += len(batch)
            return
        self._last_ref = reference
        if wait_seconds is not None:
            import ray

            try:
                ray.get(reference, timeout=wait_seconds)
            except Exception:  # noqa: BLE001
                self._analyzer = None

    def _analyzer_handle(self) -> Any:
        if self._analyzer is not None:
            if self._last_ref is not None and not self._last_call_ok():
                self._analyzer = None
            else:
                return self._analyzer
        now = time.monotonic()
        if now < self._analyzer_lookup_at:
            return None
        self._analyzer_lookup_at = now + ANALYZER_LOOKUP_INTERVAL
        try:
            import ray

            self._analyzer = ray.get_actor(self._config.analyzer_name, namespace=self._config.namespace)
        except Exception:  # noqa: BLE001 - not started (yet), or Ray is going away
            return None
        return self._analyzer

    def _last_call_ok(self) -> bool:
        """Whether the previous send did not fail (a dead analyzer shows up here)."""
        import ray

        reference, self._last_ref = self._last_ref, None
        try:
            ready, _ = ray.wait([reference], timeout=0)
            if ready:
                ray.get(ready[0], timeout=0)
        except Exception:  # noqa: BLE001
            return False
        return True

    # -- OpenTelemetry exporters ------------------------------------------------------
    def _to_exporters(self, batch: list[SpanRecord]) -> None:
        processors = self._processors
        if processors is None:
            processors = self._processors = self._build_processors()
        if not processors:
            return
        for record in batch:
            span = self._readable_span(record)
            for processor in processors:
                processor.on_end(span)
        self.exported += len(batch)

    def _build_processors(self) -> list[Any]:
        exporters = list(self._extra_exporters)
        if self._config.export_dir is not None:
            exporters.append(JsonLinesSpanExporter(
                Path(self._config.export_dir) / f"spans-{self._tracer.process_kind}-{os.getpid()}.jsonl"))
        if _otlp_configured():
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            exporters.append(OTLPSpanExporter())  # endpoint, headers, timeout: OTEL_EXPORTER_OTLP_*
        if not exporters:
            return []
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        self._resource = Resource.create({
            "service.name": os.environ.get("OTEL_SERVICE_NAME") or "hive-ray",
            "hive.process.kind": self._tracer.process_kind,
            "process.pid": os.getpid(),
        })
        delay = max(1, int(self._config.flush_seconds * 1000))
        return [BatchSpanProcessor(exporter, schedule_delay_millis=delay) for exporter in exporters]

    def _readable_span(self, record: SpanRecord) -> Any:
        from opentelemetry.sdk.trace import ReadableSpan
        from opentelemetry.sdk.util.instrumentation import InstrumentationScope
        from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags

        name, kind, trace_id, span_id, parent_id, start_ns, end_ns, attributes, error = record
        sampled = TraceFlags(TraceFlags.SAMPLED)
        return ReadableSpan(
            name=name,
            context=SpanContext(trace_id, span_id, is_remote=False, trace_flags=sampled),
            parent=None if parent_id is None else SpanContext(trace_id, parent_id, is_remote=True,
                                                              trace_flags=sampled),
            resource=self._resource,
            attributes=attributes,
            kind=SpanKind(kind),
            status=Status(StatusCode.ERROR, error) if error is not None else Status(StatusCode.UNSET),
            start_time=start_ns,
            end_time=end_ns,
            instrumentation_scope=InstrumentationScope("hive_ray", _version()),
        )


def _ray_running() -> bool:
    ray = sys.modules.get("ray")
    return ray is not None and ray.is_initialized()


def _otlp_configured() -> bool:
    exporter = os.environ.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower()
    if "otlp" not in exporter.split(","):
        return False
    return bool(os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
                or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))


def _version() -> str:
    from hive_ray import __version__

    return __version__


class JsonLinesSpanExporter:
    """An OpenTelemetry span exporter writing one JSON object per span to a file.

    Each process writes its own file, so no locking across processes is needed.
    Used by tests to read spans of other processes, and for offline analysis.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)

    def export(self, spans: Any) -> Any:
        from opentelemetry.sdk.trace.export import SpanExportResult

        lines = [json.dumps(span_to_dict(span), default=str) for span in spans]
        try:
            with self.path.open("a", encoding="utf-8") as file:
                file.write("\n".join(lines) + "\n")
        except OSError:
            logger.exception("cannot write spans to %s", self.path)
            return SpanExportResult.FAILURE
        return SpanExportResult.SUCCESS

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return True

    def shutdown(self) -> None:
        return None


def span_to_dict(span: Any) -> dict[str, Any]:
    """A ``ReadableSpan`` as a flat JSON-ready dict (ids as lowercase hex)."""
    parent = span.parent
    return {
        "name": span.name,
        "trace_id": f"{span.context.trace_id:032x}",
        "span_id": f"{span.context.span_id:016x}",
        "parent_span_id": None if parent is None else f"{parent.span_id:016x}",
        "kind": span.kind.name,
        "start_ns": span.start_time,
        "end_ns": span.end_time,
        "status": span.status.status_code.name,
        "status_description": span.status.description,
        "attributes": dict(span.attributes or {}),
        "resource": dict(span.resource.attributes) if span.resource is not None else {},
    }


def read_span_files(directory: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Every span written by :class:`JsonLinesSpanExporter` files in ``directory``."""
    spans = []
    for path in sorted(Path(directory).glob("spans-*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                spans.append(json.loads(line))
    return spans
