"""Request spans and the ``/perf`` endpoints, over real HTTP and gRPC.

The session's API does not trace (tracing is off by default), so this module
deploys a second, traced copy of the app beside it: a second Serve application
(``hive-traced``) under the route prefix ``/traced`` of the same Serve proxies
(Serve runs one HTTP and one gRPC proxy per cluster, so a second pair of ports
is not possible), talking to a private traced orchestrator. Spans of every
process are read from the JSON-lines files each traced process writes into
``tracing_export_dir``; a short flush interval gets them there within a second.
"""

# ruff: noqa: F811 - the shared fixtures are imported, and pytest passes them as arguments
from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import grpc
import httpx
import pytest

from hive_ray._api import hive_pb2, hive_pb2_grpc
from hive_ray._span_export import read_span_files
from tests.integration.test_api_support import READ_KEY, ApiServer, api, side_app  # noqa: F401

pytestmark = pytest.mark.ray

PROBLEM = "application/problem+json"
TRACED_APP = "hive-traced"
POOL = "traced-echo"
SERVICE = "hive.v1.Hive"


@pytest.fixture(scope="module")
def traced(api: ApiServer, hive_settings: dict[str, object],
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimpleNamespace]:
    """A traced API app at ``/traced`` with its own orchestrator, analyzer and echo pool."""
    from hive_ray._settings import Settings

    root = tmp_path_factory.mktemp("api-tracing")
    suffix = root.name.rsplit("-", 1)[-1]
    settings = Settings.load({
        "orchestrator_name": f"orchestrator-api-tracing-{suffix}",
        "analyzer_name": f"analyzer-api-tracing-{suffix}",
        "state_dir": str(root / "state"), "journal": False,
        "tracing": True, "tracing_sample_ratio": 1.0, "tracing_export_dir": str(root / "spans"),
        "tracing_flush_seconds": 0.2, "analyzer_sample_seconds": 0.5,
        "api_keys": {READ_KEY: "read"}, "api_max_wait_seconds": 10.0,
    })
    with side_app(api, hive_settings, settings, app_name=TRACED_APP, route_prefix="/traced",
                  prepare=lambda hive: hive.spawn("echo", count=1, pool=POOL)) as (base_url, hive):
        yield SimpleNamespace(
            base_url=base_url, settings=settings, spans_dir=root / "spans", state_dir=root / "state",
            admin=api.headers("admin"), read=api.headers("read"), api=api,
            orchestrator_pid=hive.statistics()["pid"],
            host_pids={agent.pid for pool in hive.pools() if pool.name == POOL for agent in pool.agents},
        )


def spans_of(directory: Path, trace_id: str, *, until: Callable[[list[dict[str, Any]]], bool],
             seconds: float = 15.0) -> list[dict[str, Any]]:
    """The exported spans of one trace, once ``until(spans)`` holds (or the time ran out)."""
    deadline = time.monotonic() + seconds
    while True:
        spans = [span for span in read_span_files(directory) if span["trace_id"] == trace_id]
        if until(spans) or time.monotonic() > deadline:
            return spans
        time.sleep(0.2)


def names(spans: list[dict[str, Any]]) -> set[str]:
    return {span["name"] for span in spans}


def one(spans: list[dict[str, Any]], name: str) -> dict[str, Any]:
    found = [span for span in spans if span["name"] == name]
    assert len(found) == 1, f"{name}: {len(found)} spans among {sorted(names(spans))}"
    return found[0]


COMPLETE = {"POST /v1/tasks", f"hive.queue {POOL}", f"hive.dispatch {POOL}", f"hive.handle {POOL}"}


# ---------------------------------------------------------------------- request spans
def test_one_http_submit_makes_one_trace_from_the_ingress_to_the_agent(traced: SimpleNamespace) -> None:
    response = httpx.post(traced.base_url + "/v1/tasks", params={"wait": 10}, headers=traced.admin,
                          json={"pool": POOL, "payload": {"n": 1}}, timeout=30)
    assert response.status_code == 200, response.text
    assert response.json()["result"] == {"n": 1}
    trace_id = response.headers["x-trace-id"]
    assert len(trace_id) == 32 and response.headers["traceresponse"].startswith(f"00-{trace_id}-")

    spans = spans_of(traced.spans_dir, trace_id, until=lambda spans: names(spans) >= COMPLETE)
    assert names(spans) == COMPLETE, "the trace holds exactly the ingress, queue, dispatch and handle spans"
    ingress, queue = one(spans, "POST /v1/tasks"), one(spans, f"hive.queue {POOL}")
    dispatch, handle = one(spans, f"hive.dispatch {POOL}"), one(spans, f"hive.handle {POOL}")
    assert ingress["parent_span_id"] is None and ingress["kind"] == "SERVER"
    assert response.headers["traceresponse"] == f"00-{trace_id}-{ingress['span_id']}-01"
    assert queue["parent_span_id"] == dispatch["parent_span_id"] == ingress["span_id"]
    assert handle["parent_span_id"] == dispatch["span_id"]
    attributes = ingress["attributes"]
    assert attributes["http.request.method"] == "POST" and attributes["http.route"] == "/v1/tasks"
    assert attributes["http.response.status_code"] == 200 and attributes["url.scheme"] == "http"
    assert all(span["status"] == "UNSET" for span in spans)
    # Three processes: the Serve replica, the orchestrator, the agent host.
    pids = {span["name"]: span["resource"]["process.pid"] for span in spans}
    assert pids[f"hive.queue {POOL}"] == pids[f"hive.dispatch {POOL}"] == traced.orchestrator_pid
    assert pids[f"hive.handle {POOL}"] in traced.host_pids
    assert pids["POST /v1/tasks"] not in (traced.orchestrator_pid, *traced.host_pids)
    assert ingress["resource"]["hive.process.kind"] == "api"


def test_an_incoming_traceparent_is_honoured(traced: SimpleNamespace) -> None:
    trace_id, parent = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    response = httpx.post(traced.base_url + "/v1/tasks", headers={
        **traced.admin, "traceparent": f"00-{trace_id}-{parent}-01"}, json={"pool": POOL, "payload": 2},
        timeout=30)
    assert response.status_code == 202, response.text
    assert response.headers["x-trace-id"] == trace_id
    spans = spans_of(traced.spans_dir, trace_id, until=lambda spans: names(spans) >= COMPLETE)
    assert one(spans, "POST /v1/tasks")["parent_span_id"] == parent
    assert one(spans, f"hive.queue {POOL}")["parent_span_id"] == one(spans, "POST /v1/tasks")["span_id"]


def test_a_caller_that_did_not_sample_gets_no_trace(traced: SimpleNamespace) -> None:
    response = httpx.post(traced.base_url + "/v1/tasks", headers={
        **traced.admin, "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00"},
        json={"pool": POOL, "payload": 3}, timeout=30)
    assert response.status_code == 202
    assert "x-trace-id" not in response.headers and "traceresponse" not in response.headers


def test_refusals_and_reads_are_traced_by_route_template(traced: SimpleNamespace) -> None:
    refused = httpx.post(traced.base_url + "/v1/tasks", json={"pool": POOL}, timeout=30)
    assert refused.status_code == 401
    missing = httpx.get(traced.base_url + "/v1/tasks/no-such-task", headers=traced.read, timeout=30)
    assert missing.status_code == 404
    refused_span = one(spans_of(traced.spans_dir, refused.headers["x-trace-id"], until=bool), "POST /v1/tasks")
    assert refused_span["attributes"]["http.response.status_code"] == 401
    assert refused_span["status"] == "UNSET", "a 4xx is the client's error, not the server's"
    missing_span = one(spans_of(traced.spans_dir, missing.headers["x-trace-id"], until=bool),
                       "GET /v1/tasks/{task_id}")
    assert missing_span["attributes"]["url.path"].endswith("/v1/tasks/no-such-task")


def test_the_untraced_session_api_returns_no_trace_headers(api: ApiServer) -> None:
    response = httpx.get(api.base_url + "/v1/pools", headers=api.headers("read"), timeout=30)
    assert response.status_code == 200
    assert "x-trace-id" not in response.headers and "traceresponse" not in response.headers


def test_a_grpc_submit_is_traced_and_returns_its_trace_id(traced: SimpleNamespace) -> None:
    trace_id, parent = "5bf92f3577b34da6a3ce929d0e0e4737", "10f067aa0ba902b8"
    with grpc.insecure_channel(traced.api.grpc_target) as channel:
        stub = hive_pb2_grpc.HiveStub(channel)
        reply, call = stub.Submit.with_call(
            hive_pb2.SubmitRequest(pool=POOL, payload_json='{"n": 4}', wait=10),
            metadata=[("application", TRACED_APP), ("authorization", f"Bearer {traced.api.admin_key}"),
                      ("traceparent", f"00-{trace_id}-{parent}-01")], timeout=30)
    assert reply.state == "succeeded"
    trailing = dict(call.trailing_metadata())
    assert trailing["x-trace-id"] == trace_id
    complete = {f"{SERVICE}/Submit", f"hive.queue {POOL}", f"hive.dispatch {POOL}", f"hive.handle {POOL}"}
    spans = spans_of(traced.spans_dir, trace_id, until=lambda spans: complete <= names(spans))
    ingress = one(spans, f"{SERVICE}/Submit")
    assert ingress["parent_span_id"] == parent and ingress["kind"] == "SERVER"
    assert ingress["attributes"]["rpc.system"] == "grpc" and ingress["attributes"]["rpc.method"] == "Submit"
    assert ingress["attributes"]["rpc.grpc.status_code"] == 0
    assert one(spans, f"hive.queue {POOL}")["parent_span_id"] == ingress["span_id"]


# ---------------------------------------------------------------------- /perf
PERF_PATHS = ("/v1/perf/report", "/v1/perf/report.html", "/v1/perf/regressions")


@pytest.mark.parametrize("path", PERF_PATHS)
@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong-key"}], ids=["missing", "wrong"])
def test_perf_endpoints_refuse_requests_without_a_valid_key(api: ApiServer, path: str,
                                                            headers: dict[str, str]) -> None:
    response = httpx.get(api.base_url + path, headers=headers, timeout=30)
    assert response.status_code == 401 and response.headers["content-type"] == PROBLEM
    assert response.headers["www-authenticate"].startswith("Bearer")


def test_the_perf_report_has_the_api_operations(traced: SimpleNamespace) -> None:
    httpx.post(traced.base_url + "/v1/tasks", params={"wait": 10}, headers=traced.admin,
               json={"pool": POOL, "payload": 5}, timeout=30).raise_for_status()
    deadline = time.monotonic() + 15
    while True:  # the analyzer gets spans about once a flush interval
        response = httpx.get(traced.base_url + "/v1/perf/report", headers=traced.read, timeout=30)
        assert response.status_code == 200, response.text
        report = response.json()
        operations = {each["operation"] for each in report["operations"]}
        if operations >= COMPLETE or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert operations >= COMPLETE
    assert {"recommendations", "memory", "queue_depths", "analyzer"} <= set(report)
    assert report["analyzer"]["spans_received"] > 0


def test_the_perf_report_as_html(traced: SimpleNamespace) -> None:
    response = httpx.get(traced.base_url + "/v1/perf/report.html", headers=traced.read, timeout=30)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    page = response.text
    assert page.lstrip().lower().startswith("<!doctype html") and "<svg" in page
    assert not re.search(r"""(src|href)\s*=\s*["']?https?:|<link\b|@import""", page), "self-contained"


def test_regressions_need_a_saved_baseline_then_compare_with_it(traced: SimpleNamespace) -> None:
    import ray

    from hive_ray._analyzer import Baseline, save_baseline
    from hive_ray._perf_cli import BASELINE_FILE

    path = traced.base_url + "/v1/perf/regressions"
    missing = httpx.get(path, headers=traced.read, timeout=30)
    assert missing.status_code == 404 and missing.headers["content-type"] == PROBLEM
    assert "hive perf baseline save" in missing.json()["detail"]

    for payload in range(3):  # a comparison needs at least two latencies on each side
        httpx.post(traced.base_url + "/v1/tasks", params={"wait": 10}, headers=traced.admin,
                   json={"pool": POOL, "payload": payload}, timeout=30).raise_for_status()
    analyzer = ray.get_actor(traced.settings.analyzer_name, namespace=traced.settings.namespace)
    deadline = time.monotonic() + 15
    while True:
        baseline = Baseline.from_dict(ray.get(analyzer.baseline.remote(), timeout=30))
        handled = baseline.get(f"hive.handle {POOL}")
        if (handled is not None and handled.count >= 3) or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    traced.state_dir.mkdir(parents=True, exist_ok=True)
    save_baseline(traced.state_dir / BASELINE_FILE, baseline)

    response = httpx.get(path, headers=traced.read, timeout=30)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["compared"] >= 1 and body["regressed"] is False and body["regressions"] == []
    assert f"hive.handle {POOL}" in {result["operation"] for result in body["results"]}

    metrics = httpx.get(traced.base_url + "/metrics", headers=traced.read, timeout=30)
    assert metrics.status_code == 200
    assert gauge(metrics.text, "hive_perf_regressions") == 0.0
    untraced = httpx.get(traced.api.base_url + "/metrics", headers=traced.read, timeout=30)
    assert gauge(untraced.text, "hive_perf_regressions") is None, "no baseline, no gauge"

    (traced.state_dir / BASELINE_FILE).write_text("not json", encoding="utf-8")
    corrupt = httpx.get(path, headers=traced.read, timeout=30)
    assert corrupt.status_code == 409 and corrupt.headers["content-type"] == PROBLEM


def gauge(text: str, name: str) -> float | None:
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(text):
        if family.name == name:
            [sample] = family.samples
            return sample.value
    return None
