"""W3C trace context, sampling, and the spans each process makes (no Ray, no export thread)."""

from __future__ import annotations

import random
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Any

import pytest

from hive_ray._api._trace_ingress import (
    finish_http_span,
    http_server_span,
    inject_into,
    response_headers,
)
from hive_ray._settings import Settings
from hive_ray._task import Envelope
from hive_ray._tracing import (
    CLIENT,
    CONSUMER,
    PRODUCER,
    Sampler,
    Tracer,
    TracingConfig,
    current_trace_context,
    end_handle_span,
    format_traceparent,
    inject_client_context,
    parse_traceparent,
    traced_call,
)

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"


def make_tracer(ratio: float = 1.0, **overrides: Any) -> Tracer:
    config = TracingConfig(enabled=True, sample_ratio=ratio, feed_analyzer=False, **overrides)
    return Tracer(config, "test", start_thread=False)


def drained(tracer: Tracer) -> list[tuple[Any, ...]]:
    records = list(tracer.queue)
    tracer.queue.clear()
    return records


# ---------------------------------------------------------------------- traceparent
def test_traceparent_round_trips() -> None:
    value = format_traceparent(int(TRACE, 16), int(PARENT, 16))
    assert value == f"00-{TRACE}-{PARENT}-01"
    assert parse_traceparent(value) == (int(TRACE, 16), int(PARENT, 16), True)
    assert parse_traceparent(f"00-{TRACE}-{PARENT}-00") == (int(TRACE, 16), int(PARENT, 16), False)


@pytest.mark.parametrize("value", [
    None, 42, "", "garbage",
    f"00-{TRACE.upper()}-{PARENT}-01",           # hex must be lowercase
    f"00-{'0' * 32}-{PARENT}-01",                # all-zero trace id
    f"00-{TRACE}-{'0' * 16}-01",                 # all-zero parent id
    f"ff-{TRACE}-{PARENT}-01",                   # version ff is invalid
    f"00-{TRACE}-{PARENT}-01-extra",             # version 00 has exactly four fields
    f"00-{TRACE[:-1]}-{PARENT}-01",              # short trace id
    f"00-{TRACE}-+{PARENT[1:]}-01",              # int() would accept a sign
])
def test_invalid_traceparents_are_rejected(value: object) -> None:
    assert parse_traceparent(value) is None


def test_a_future_version_may_append_fields() -> None:
    assert parse_traceparent(f"01-{TRACE}-{PARENT}-01-what-ever") is not None


# ---------------------------------------------------------------------- sampling
def test_ratio_sampler_samples_its_share() -> None:
    rng = random.Random(7)
    ids = [rng.getrandbits(128) for _ in range(20_000)]
    assert not any(Sampler(0.0).sample_root(i) for i in ids)
    assert all(Sampler(1.0).sample_root(i) for i in ids)
    share = sum(Sampler(0.25).sample_root(i) for i in ids) / len(ids)
    assert 0.23 < share < 0.27


@pytest.mark.parametrize(("environment", "ratio", "parent_based"), [
    ({}, 0.01, True),
    ({"OTEL_TRACES_SAMPLER": "always_on"}, 1.0, False),
    ({"OTEL_TRACES_SAMPLER": "parentbased_always_off"}, 0.0, True),
    ({"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.5"}, 0.5, False),
    ({"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.2"}, 0.2, True),
    ({"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "x"}, 1.0, True),
])
def test_standard_sampler_variables_replace_the_setting(
        environment: dict[str, str], ratio: float, parent_based: bool) -> None:
    sampler = Sampler.from_environment(0.01, environment)
    assert (sampler.ratio, sampler.parent_based) == (ratio, parent_based)


def test_root_span_honours_an_incoming_traceparent() -> None:
    tracer = make_tracer(ratio=0.0)  # the caller's decision wins over ours
    span = tracer.start_root_span("POST /v1/tasks", headers={"traceparent": f"00-{TRACE}-{PARENT}-01"})
    assert span is not None
    assert (span.trace_id_hex, span.parent_id) == (TRACE, int(PARENT, 16))


def test_an_unsampled_caller_means_no_span() -> None:
    tracer = make_tracer(ratio=1.0)
    assert tracer.start_root_span("x", headers={"traceparent": f"00-{TRACE}-{PARENT}-00"}) is None


def test_grpc_metadata_pairs_carry_the_context() -> None:
    tracer = make_tracer(ratio=0.0)
    span = tracer.start_root_span("hive.v1.Hive/Submit",
                                  headers=[("user-agent", "grpc"), ("traceparent", f"00-{TRACE}-{PARENT}-01")])
    assert span is not None and span.trace_id_hex == TRACE


def test_an_invalid_traceparent_starts_a_new_trace() -> None:
    tracer = make_tracer(ratio=1.0)
    span = tracer.start_root_span("x", headers={"traceparent": "nonsense"})
    assert span is not None and span.parent_id is None and span.trace_id_hex != TRACE


def test_the_callers_opentelemetry_span_is_the_parent() -> None:
    trace_api = pytest.importorskip("opentelemetry.trace")
    parent = trace_api.SpanContext(int(TRACE, 16), int(PARENT, 16), is_remote=False,
                                   trace_flags=trace_api.TraceFlags(1))
    tracer = make_tracer(ratio=0.0)
    with trace_api.use_span(trace_api.NonRecordingSpan(parent)):
        span = tracer.start_root_span("hive.run", kind=CLIENT)
    assert span is not None and (span.trace_id_hex, span.parent_id) == (TRACE, int(PARENT, 16))


# ---------------------------------------------------------------------- the orchestrator's batches
@dataclass
class Entry:
    task_id: str
    trace_context: dict[str, str] | None
    created_at: float = 100.0
    attempts: int = 0
    metadata: dict[str, str] = field(default_factory=dict)


def test_unsampled_batches_cost_no_spans() -> None:
    tracer = make_tracer()
    entries = [Entry(f"t{i}", None) for i in range(64)]
    assert tracer.start_dispatch("echo", "echo-0", entries, 101.0) is None
    tracer.end_dispatch([Envelope(task_id=e.task_id, agent_id="echo-0", payload=None) for e in entries])
    assert not tracer.queue


def test_a_batch_gets_queue_spans_and_one_dispatch_span_per_trace() -> None:
    tracer = make_tracer()
    first = {"traceparent": f"00-{TRACE}-{PARENT}-01"}
    second = {"traceparent": f"00-{'1' * 32}-{'2' * 16}-01"}
    entries = [Entry("a", first), Entry("b", first), Entry("c", None), Entry("d", second, attempts=1)]
    contexts = tracer.start_dispatch("echo", "echo-0", entries, 101.0)
    assert contexts is not None
    assert contexts[id(first)] is not None and contexts[id(second)] is not None
    assert contexts.get(id(None)) is None
    queued = drained(tracer)
    # a retry (attempts already 1) gets no queue span: its wait would include earlier attempts
    assert [(r[0], r[4], r[5], r[6]) for r in queued] == [
        ("hive.queue echo", int(PARENT, 16), 100_000_000_000, 101_000_000_000)] * 2
    dispatch_of_first = parse_traceparent(contexts[id(first)]["traceparent"])
    envelopes = [Envelope(task_id=e.task_id, agent_id="echo-0", payload=None,
                          trace_context=None if e.trace_context is None else contexts[id(e.trace_context)])
                 for e in entries]
    tracer.end_dispatch(envelopes, failure=None)
    dispatches = drained(tracer)
    assert sorted(r[0] for r in dispatches) == ["hive.dispatch echo"] * 2
    record = next(r for r in dispatches if r[3] == dispatch_of_first[1])
    assert (record[1], record[2], record[4], record[8]) == (PRODUCER, int(TRACE, 16), int(PARENT, 16), None)
    assert record[7]["hive.batch_size"] == 4


def test_a_lost_agent_fails_the_dispatch_span() -> None:
    tracer = make_tracer()
    entry = Entry("a", {"traceparent": f"00-{TRACE}-{PARENT}-01"})
    contexts = tracer.start_dispatch("echo", "echo-0", [entry], 101.0)
    drained(tracer)
    tracer.end_dispatch([Envelope(task_id="a", agent_id="echo-0", payload=None,
                                  trace_context=contexts[id(entry.trace_context)])], "agent lost: oom_killed")
    [record] = drained(tracer)
    assert record[8] == "agent lost: oom_killed"


# ---------------------------------------------------------------------- the host's handle spans
def test_handle_span_is_a_child_of_the_dispatch_span() -> None:
    tracer = make_tracer()
    envelope = Envelope(task_id="t1", agent_id="echo-0", payload=None, attempt=2,
                        trace_context={"traceparent": f"00-{TRACE}-{PARENT}-01"})
    span = tracer.start_handle_span("echo", "echo", envelope)
    assert span is not None and span.kind == CONSUMER
    end_handle_span(span, "error", {"type": "ValueError", "message": "bad"})
    [record] = drained(tracer)
    assert record[0] == "hive.handle echo" and record[4] == int(PARENT, 16)
    assert record[7]["hive.attempt"] == 2 and record[8] == "ValueError: bad"
    assert tracer.start_handle_span("echo", "echo", Envelope(task_id="t2", agent_id="echo-0", payload=None)) is None


def test_the_queue_is_bounded_and_counts_what_it_drops() -> None:
    tracer = make_tracer(max_queued_spans=100)
    for _ in range(150):
        tracer.emit("x", 0, 1, 2, None, 0, 1, None, None)
    assert (len(tracer.queue), tracer.dropped) == (100, 50)


# ---------------------------------------------------------------------- the client's root spans
class FakeClient:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.templates: list[dict[str, Any]] = []

    @traced_call("run")
    def run(self, agent: str, fail: bool = False) -> str:
        template = inject_client_context({"agent_type": agent})
        self.templates.append(template)
        if fail:
            raise RuntimeError("boom")
        return self.nested(agent)

    @traced_call("submit")
    def nested(self, agent: str) -> str:
        self.templates.append(inject_client_context({"agent_type": agent}))
        return "done"


def client_tracer(settings: Settings) -> Tracer:
    from hive_ray._tracing import tracer_from_settings

    tracer = tracer_from_settings(settings, "client")
    assert tracer is not None
    tracer.pipeline.shutdown(0.1)  # no export thread needed here
    tracer.queue.clear()
    return tracer


def test_a_sampled_client_call_puts_its_context_into_the_template() -> None:
    settings = Settings(tracing=True, tracing_sample_ratio=1.0, tracing_feed_analyzer=False)
    tracer = client_tracer(settings)
    client = FakeClient(settings)
    assert client.run("echo") == "done"
    [outer, inner] = client.templates
    assert outer["trace_context"] == inner["trace_context"]  # the nested call is not a new root
    [record] = drained(tracer)
    assert record[0] == "hive.run echo" and record[1] == CLIENT and record[4] is None
    assert outer["trace_context"]["traceparent"] == format_traceparent(record[2], record[3])


def test_a_failing_client_call_records_the_error() -> None:
    settings = Settings(tracing=True, tracing_sample_ratio=1.0, tracing_feed_analyzer=False)
    tracer = client_tracer(settings)
    with pytest.raises(RuntimeError):
        FakeClient(settings).run("echo", fail=True)
    [record] = drained(tracer)
    assert record[8] == "RuntimeError: boom"


@pytest.mark.parametrize("overrides", [{"tracing": False}, {"tracing": True, "tracing_sample_ratio": 0.0}])
def test_unsampled_or_untraced_calls_carry_no_context(overrides: dict[str, Any]) -> None:
    client = FakeClient(Settings(tracing_feed_analyzer=False, **overrides))
    client.run("echo")
    assert all("trace_context" not in template for template in client.templates)


# ---------------------------------------------------------------------- helpers for the API
def test_http_server_span_helpers() -> None:
    settings = Settings(tracing=True, tracing_sample_ratio=0.0, tracing_feed_analyzer=False)
    tracer = client_tracer(settings)
    from hive_ray._tracing import tracer_from_settings

    assert tracer_from_settings(settings, "api") is not tracer  # one tracer per process kind
    api_tracer = tracer_from_settings(settings, "api")
    assert api_tracer is not None
    api_tracer.pipeline.shutdown(0.1)
    api_tracer.queue.clear()
    span = http_server_span(settings, "post", "/v1/tasks", {"traceparent": f"00-{TRACE}-{PARENT}-01"},
                            path="/v1/tasks", server_port=8000)
    assert span is not None
    template = inject_into({"agent_type": "echo"}, span)
    assert parse_traceparent(template["trace_context"]["traceparent"])[:2] == (int(TRACE, 16), span.span_id)
    assert response_headers(span)["x-trace-id"] == TRACE
    finish_http_span(span, 503)
    [record] = drained(api_tracer)
    assert record[0] == "POST /v1/tasks" and record[8] == "503"
    assert record[7]["http.request.method"] == "POST" and record[7]["http.response.status_code"] == 503
    assert inject_into({}, None) == {} and response_headers(None) == {}


def test_the_trace_context_variable_defaults_to_none() -> None:
    assert current_trace_context.get() is None


def test_tracing_without_an_exporter_never_imports_opentelemetry() -> None:
    code = (
        "import sys\n"
        "from hive_ray._tracing import Tracer, TracingConfig\n"
        "t = Tracer(TracingConfig(enabled=True, sample_ratio=1.0, feed_analyzer=False), 'x')\n"
        "s = t.start_root_span('x'); s.end(); t.flush(1)\n"
        "print(sorted(m for m in sys.modules if m.startswith('opentelemetry')))\n"
    )
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert output.stdout.strip() == "[]"
