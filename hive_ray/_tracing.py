"""Traces that follow a task across processes: W3C trace context carried in the task.

Ray's own tracing hook is unmaintained, so the context travels inside the task
itself: the client (or the API's ingress) makes the sampling decision once per
call and, if sampled, puts ``{"traceparent": "00-<trace id>-<span id>-01"}``
into the task template; the orchestrator keeps it on the ``TaskEntry`` and hands
each agent a context whose parent is its dispatch span; an agent that delegates
passes its handle span's context on to the sub-tasks. A task that arrives
without a sampled context gets a decision of its own when the orchestrator
accepts it (:mod:`hive_ray._task_sampling`); one sampled there starts a trace
whose root is its ``hive.task`` span. A task that was not sampled carries
``trace_context=None`` and costs nothing anywhere downstream.

Spans here are deliberately not OpenTelemetry SDK spans. Creating one of those
costs about 25 µs, against a whole task round trip of about 50 µs of CPU at full
throughput; a :class:`Span` below is a slotted object that becomes a tuple in a
queue when it ends (about 1 µs). A background thread per process
(:mod:`hive_ray._span_export`) turns the tuples into summaries for the analyzer
and, when an exporter is configured (OTLP, a JSON-lines directory, a test's
in-memory exporter), into real OpenTelemetry ``ReadableSpan`` objects that go
through the SDK's ``BatchSpanProcessor``. OpenTelemetry is imported only there,
and only when something is exported.

Span names (the analyzer's operations are span names)::

    hive.<call> <target>     client root span (submit, run, run_async, map, submit_many)
    <METHOD> <route>         HTTP server span (the API), <service>/<method> for gRPC
    hive.task <pool>         orchestrator: created -> ended, root of a task it sampled itself
    hive.queue <pool>        orchestrator: accepted -> dispatched, one per task
    hive.dispatch <pool>     orchestrator: one per batch sent to an agent (and per trace)
    hive.handle <pool>       agent host: the agent's handle(), one per task

The configuration and the sampler are in :mod:`hive_ray._sampling` (re-exported
here); the API's server spans in :mod:`hive_ray._api._trace_ingress`.
"""

from __future__ import annotations

import atexit
import contextvars
import functools
import inspect
import logging
import os
import random
import re
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from typing import Any

logger = logging.getLogger("hive_ray.tracing")

TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"

# Numbered as opentelemetry.trace.SpanKind, which is not imported on the hot path.
INTERNAL, SERVER, CLIENT, PRODUCER, CONSUMER = range(5)

#: The context of the span running in this asyncio task: an agent's handle span,
#: so that the sub-tasks it delegates become its children.
current_trace_context: contextvars.ContextVar[dict[str, str] | None] = contextvars.ContextVar(
    "hive_current_trace_context", default=None
)
_client_span: contextvars.ContextVar[Span | None] = contextvars.ContextVar(
    "hive_client_span", default=None
)

# Span ids from a private generator, reseeded in a forked child so that two
# processes never share a sequence.
_ids = random.Random()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_ids.seed)


_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?\Z")


def new_span_id() -> int:
    """Return a random non-zero 64-bit span id."""
    return _ids.getrandbits(64) or 1


def new_trace_id() -> int:
    """Return a random non-zero 128-bit trace id."""
    return _ids.getrandbits(128) or 1


def format_traceparent(trace_id: int, span_id: int, sampled: bool = True) -> str:
    """Return a W3C ``traceparent`` value (version 00)."""
    return f"00-{trace_id:032x}-{span_id:016x}-{'01' if sampled else '00'}"


def parse_traceparent(value: object) -> tuple[int, int, bool] | None:
    """Return ``(trace_id, parent_span_id, sampled)`` from a ``traceparent``, or None if invalid.

    Applies the W3C rules a receiver must: lowercase hex fields of 2, 32, 16 and 2
    digits; version ``ff`` and all-zero ids are invalid; only a version above 00
    may append fields after the flags.
    """
    if not isinstance(value, str):
        return None
    match = _TRACEPARENT.match(value.strip())
    if match is None:
        return None
    version, trace_hex, span_hex, flags_hex, rest = match.groups()
    if version == "ff" or (version == "00" and rest):
        return None
    trace_id, span_id = int(trace_hex, 16), int(span_hex, 16)
    if trace_id == 0 or span_id == 0:
        return None
    return trace_id, span_id, bool(int(flags_hex, 16) & 1)


from hive_ray._sampling import (  # noqa: E402 - re-exported: the configuration lives there
    Sampler,
    TracingConfig,
    effective_sampling,
    lone_sampler_argument_note,
)


# ---------------------------------------------------------------------- spans
class Span:
    """A span being timed. :meth:`end` queues it for export; it is not exported before.

    Use :meth:`context` (or :func:`inject_into`) to make work elsewhere its child.
    """

    __slots__ = ("name", "kind", "trace_id", "span_id", "parent_id", "start_ns", "attributes",
                 "error", "_tracer", "_ended")

    def __init__(self, tracer: Tracer, name: str, kind: int, trace_id: int, parent_id: int | None,
                 attributes: dict[str, Any] | None, start_ns: int | None = None) -> None:
        self._tracer = tracer
        self.name = name
        self.kind = kind
        self.trace_id = trace_id
        self.span_id = new_span_id()
        self.parent_id = parent_id
        self.attributes = attributes if attributes is not None else {}
        self.error: str | None = None
        self.start_ns = time.time_ns() if start_ns is None else start_ns
        self._ended = False

    @property
    def trace_id_hex(self) -> str:
        """The trace id as 32 hex digits, the form trace viewers search for."""
        return f"{self.trace_id:032x}"

    def context(self) -> dict[str, str]:
        """The W3C context that makes work elsewhere a child of this span."""
        return {TRACEPARENT: format_traceparent(self.trace_id, self.span_id)}

    def set_attribute(self, key: str, value: Any) -> None:
        self.attributes[key] = value

    def set_error(self, description: str) -> None:
        """Mark the span failed (status ERROR) with a short description."""
        self.error = description[:500]

    def record_exception(self, error: BaseException) -> None:
        self.attributes["exception.type"] = type(error).__qualname__
        self.set_error(f"{type(error).__qualname__}: {error}")

    def end(self, end_ns: int | None = None) -> None:
        """Finish the span; a second call does nothing."""
        if self._ended:
            return
        self._ended = True
        self._tracer.emit(self.name, self.kind, self.trace_id, self.span_id, self.parent_id,
                          self.start_ns, time.time_ns() if end_ns is None else end_ns,
                          self.attributes, self.error)

    def __enter__(self) -> Span:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, _tb: object) -> None:
        if error is not None:
            self.record_exception(error)
        self.end()

    def __repr__(self) -> str:
        return f"<Span {self.name!r} trace={self.trace_id_hex} span={self.span_id:016x}>"


#: A finished span as queued for export:
#: (name, kind, trace_id, span_id, parent_id, start_ns, end_ns, attributes, error)
SpanRecord = tuple[str, int, int, int, "int | None", int, int, "dict[str, Any] | None", "str | None"]


class Tracer:
    """Creates the spans of one process and queues them for its export thread.

    The queue is bounded: when the export thread (or the analyzer behind it)
    falls behind, new spans are counted in :attr:`dropped` instead of growing
    memory or slowing the task that produced them.
    """

    def __init__(self, config: TracingConfig, process_kind: str, *, exporters: Iterable[Any] = (),
                 start_thread: bool = True) -> None:
        self.config = config
        self.process_kind = process_kind
        self.sampler = Sampler.from_environment(config.sample_ratio)
        self.queue: deque[SpanRecord] = deque()
        self.capacity = config.max_queued_spans
        self.dropped = 0
        self._parsed: tuple[str, tuple[int, int, bool] | None] = ("", None)
        self._open_dispatches: dict[str, tuple[str, int, int, int | None, int, dict[str, Any]]] = {}
        from hive_ray._span_export import SpanPipeline

        self.pipeline = SpanPipeline(self, exporters=list(exporters), start_thread=start_thread)

    # -- recording ---------------------------------------------------------------
    def emit(self, name: str, kind: int, trace_id: int, span_id: int, parent_id: int | None,
             start_ns: int, end_ns: int, attributes: dict[str, Any] | None, error: str | None) -> None:
        """Queue one finished span (the hot path: a tuple and an append)."""
        if len(self.queue) < self.capacity:
            self.queue.append((name, kind, trace_id, span_id, parent_id, start_ns, end_ns,
                               attributes, error))
        else:
            self.dropped += 1

    def parse(self, trace_context: Mapping[str, str] | None) -> tuple[int, int, bool] | None:
        """Parse a carried context, remembering the last one (a batch shares one)."""
        if not trace_context:
            return None
        value = trace_context.get(TRACEPARENT, "")
        last_value, last_parsed = self._parsed
        if value is last_value or value == last_value:
            return last_parsed
        parsed = parse_traceparent(value)
        self._parsed = (value, parsed)
        return parsed

    def start_span(self, name: str, parent: Mapping[str, str] | None, *, kind: int = INTERNAL,
                   attributes: dict[str, Any] | None = None) -> Span | None:
        """Start a child of a carried context; None when there is no (sampled) parent."""
        parsed = self.parse(parent)
        if parsed is None or not parsed[2]:
            return None
        return Span(self, name, kind, parsed[0], parsed[1], attributes)

    def start_root_span(self, name: str, *, kind: int = SERVER, headers: Any = None,
                        attributes: dict[str, Any] | None = None) -> Span | None:
        """Start a trace here, or continue the caller's: the one sampling decision of a trace.

        An incoming valid ``traceparent`` (in ``headers``) is honoured, its sampled
        flag included; otherwise the span of the caller's own OpenTelemetry SDK, if
        one is active, is the parent; otherwise the sampler decides.
        """
        incoming = _header(headers, TRACEPARENT) if headers is not None else None
        parsed = parse_traceparent(incoming) if incoming is not None else None
        if parsed is None:
            parsed = _active_opentelemetry_parent()
        if parsed is not None and self.sampler.parent_based:
            if not parsed[2]:
                return None
            return Span(self, name, kind, parsed[0], parsed[1], attributes)
        trace_id = parsed[0] if parsed is not None else new_trace_id()
        if not self.sampler.sample_root(trace_id):
            return None
        return Span(self, name, kind, trace_id, parsed[1] if parsed is not None else None, attributes)

    # -- the orchestrator's batches ---------------------------------------------------
    def start_dispatch(self, pool: str, agent_id: str, entries: list[Any],
                       now: float) -> dict[int, dict[str, str] | None] | None:
        """Record the queue spans of a batch's sampled tasks and open its dispatch span(s).

        Returns ``id(task's context) -> context to send the agent`` (None when no task
        of the batch is sampled): one dispatch span per distinct trace in the batch,
        parent of the agent's handle spans.
        """
        contexts: dict[int, dict[str, str] | None] | None = None
        now_ns = int(now * 1e9)
        for entry in entries:
            original = entry.trace_context
            if original is None:
                continue
            if contexts is None:
                contexts = {}
            key = id(original)
            parsed = self.parse(original)
            if parsed is None or not parsed[2]:
                contexts[key] = None
                continue
            trace_id, parent_id, _ = parsed
            if key not in contexts:
                span_id = new_span_id()
                context = {TRACEPARENT: format_traceparent(trace_id, span_id)}
                contexts[key] = context
                self._open_dispatches[context[TRACEPARENT]] = (
                    f"hive.dispatch {pool}", trace_id, span_id, parent_id, now_ns,
                    {"hive.pool": pool, "hive.agent_id": agent_id, "hive.batch_size": len(entries)})
            if entry.attempts == 0:  # a retry's wait would include its earlier attempts
                self.emit(f"hive.queue {pool}", INTERNAL, trace_id, new_span_id(), parent_id,
                          int(entry.created_at * 1e9), now_ns,
                          {"hive.pool": pool, "hive.task_id": entry.task_id}, None)
        return contexts

    def end_dispatch(self, envelopes: list[Any], failure: str | None = None) -> None:
        """Close the dispatch spans opened for these envelopes (once the agent answered)."""
        if not self._open_dispatches:
            return
        now_ns = time.time_ns()
        for envelope in envelopes:
            context = envelope.trace_context
            if context is None:
                continue
            opened = self._open_dispatches.pop(context.get(TRACEPARENT, ""), None)
            if opened is not None:
                name, trace_id, span_id, parent_id, start_ns, attributes = opened
                self.emit(name, PRODUCER, trace_id, span_id, parent_id, start_ns, now_ns,
                          attributes, failure)

    # -- the agent host's tasks --------------------------------------------------------
    def start_handle_span(self, pool: str, agent_type: str, envelope: Any) -> Span | None:
        """The span of one ``handle`` call, child of the envelope's dispatch span."""
        return self.start_span(
            f"hive.handle {pool}", envelope.trace_context, kind=CONSUMER,
            attributes={"hive.pool": pool, "hive.agent_type": agent_type,
                        "hive.agent_id": envelope.agent_id, "hive.task_id": envelope.task_id,
                        "hive.attempt": envelope.attempt})

    # -- lifecycle ---------------------------------------------------------------
    def flush(self, timeout: float = 5.0) -> bool:
        """Export everything queued so far and wait (up to ``timeout``) until it is delivered."""
        return self.pipeline.flush(timeout)

    def shutdown(self, timeout: float = 5.0) -> None:
        self.pipeline.shutdown(timeout)


def end_handle_span(span: Span, status: str, error: Mapping[str, Any] | None) -> None:
    """End an agent's handle span with the outcome's status."""
    if status != "ok":
        description = status if error is None else f"{error.get('type', status)}: {error.get('message', '')}"
        span.attributes["hive.outcome"] = status
        span.set_error(description)
    span.end()


# ---------------------------------------------------------------------- one tracer per process and config
_tracers: dict[tuple[TracingConfig, str], Tracer] = {}
_tracers_lock = threading.Lock()
_settings_configs: dict[int, tuple[Any, TracingConfig]] = {}


def tracer_for(config: TracingConfig, process_kind: str) -> Tracer | None:
    """This process's tracer for ``config`` (created on first use), or None if tracing is off."""
    if not config.enabled:
        return None
    key = (config, process_kind)
    tracer = _tracers.get(key)
    if tracer is None:
        with _tracers_lock:
            tracer = _tracers.get(key)
            if tracer is None:
                if not _tracers:
                    atexit.register(shutdown_all)
                tracer = _tracers[key] = Tracer(config, process_kind)
    return tracer


def tracer_from_settings(settings: Any, process_kind: str) -> Tracer | None:
    """:func:`tracer_for` the tracing settings of a :class:`hive_ray.Settings`."""
    if not settings.tracing:
        return None
    cached = _settings_configs.get(id(settings))
    if cached is None or cached[0] is not settings:
        cached = (settings, TracingConfig.from_settings(settings))
        _settings_configs[id(settings)] = cached  # keeps settings alive, so ids stay unique
    return tracer_for(cached[1], process_kind)


def flush_all(timeout: float = 5.0) -> None:
    """Export every span this process has ended so far (tests, and before a process exits)."""
    for tracer in list(_tracers.values()):
        tracer.flush(timeout)


def shutdown_all(timeout: float = 5.0) -> None:
    for tracer in list(_tracers.values()):
        try:
            tracer.shutdown(timeout)
        except Exception:  # noqa: BLE001 - exiting anyway
            pass


async def host_tracer(orchestrator: Any) -> Tracer | None:
    """An agent host's tracer, configured from its orchestrator's settings (None: off)."""
    try:
        config = TracingConfig.from_dict(await orchestrator.tracing_config.remote())
    except Exception as error:  # noqa: BLE001 - an older orchestrator, or a test double
        logger.debug("no tracing configuration from the orchestrator (%s)", error)
        return None
    return tracer_for(config, "agent-host")


# ---------------------------------------------------------------------- the client's root spans
class _RootScope:
    """For one client call: its root span is current, records what the call raised, and ends."""

    __slots__ = ("span", "token")

    def __init__(self, span: Span) -> None:
        self.span = span

    def __enter__(self) -> None:
        self.token = _client_span.set(self.span)

    def __exit__(self, kind: Any, error: BaseException | None, traceback: Any) -> None:
        if error is not None:
            self.span.record_exception(error)
        _client_span.reset(self.token)
        self.span.end()


def traced_call(operation: str) -> Callable[[Any], Any]:
    """Decorate a :class:`hive_ray.Hive` method: its call is a trace's root span when sampled.

    The method's ``_template()`` call puts the span's context into the task
    template (:func:`inject_client_context`). With tracing off this costs one
    attribute check.
    """

    def decorate(method: Any) -> Any:
        if inspect.iscoroutinefunction(method):
            @functools.wraps(method)
            async def traced_async(self: Any, *args: Any, **kwargs: Any) -> Any:
                span = _client_root(self.settings, operation)
                if span is None:
                    return await method(self, *args, **kwargs)
                with _RootScope(span):
                    return await method(self, *args, **kwargs)

            return traced_async

        @functools.wraps(method)
        def traced(self: Any, *args: Any, **kwargs: Any) -> Any:
            span = _client_root(self.settings, operation)
            if span is None:
                return method(self, *args, **kwargs)
            with _RootScope(span):
                return method(self, *args, **kwargs)

        return traced

    return decorate


def _client_root(settings: Any, operation: str) -> Span | None:
    if not settings.tracing or _client_span.get() is not None:
        return None  # off, or a nested call of an already traced one
    tracer = tracer_from_settings(settings, "client")
    if tracer is None:
        return None
    return tracer.start_root_span(f"hive.{operation}", kind=CLIENT,
                                  attributes={"hive.operation": operation})


def inject_client_context(template: dict[str, Any]) -> dict[str, Any]:
    """Put the running client span's context into ``template`` and name the span by target."""
    span = _client_span.get()
    if span is not None:
        target = template.get("agent_type") or template.get("capability") or template.get("pool")
        if target and " " not in span.name:
            span.name = f"{span.name} {target}"
            span.attributes["hive.target"] = target
        template["trace_context"] = span.context()
    return template


def _header(headers: Any, name: str) -> str | None:
    if isinstance(headers, Mapping):
        value = headers.get(name)
        if value is None:
            value = headers.get(name.title())
        return value if isinstance(value, str) else None
    try:
        for key, value in headers:  # gRPC metadata: (key, value) pairs, keys lowercase
            if isinstance(key, str) and key.lower() == name:
                return value if isinstance(value, str) else None
    except (TypeError, ValueError):
        return None
    return None


def _active_opentelemetry_parent() -> tuple[int, int, bool] | None:
    """The caller's current OpenTelemetry span, if its SDK is in use here (never imports it)."""
    api = sys.modules.get("opentelemetry.trace")
    if api is None:
        return None
    try:
        context = api.get_current_span().get_span_context()
    except Exception:  # noqa: BLE001 - a broken third-party setup must not break submits
        return None
    if not context.is_valid:
        return None
    return context.trace_id, context.span_id, bool(context.trace_flags & 1)


__all__ = [
    "CLIENT", "CONSUMER", "INTERNAL", "PRODUCER", "SERVER", "Sampler", "Span", "SpanRecord",
    "TracingConfig", "Tracer", "current_trace_context", "effective_sampling", "end_handle_span",
    "flush_all", "format_traceparent", "host_tracer", "inject_client_context",
    "lone_sampler_argument_note", "parse_traceparent", "shutdown_all", "traced_call", "tracer_for",
    "tracer_from_settings",
]
