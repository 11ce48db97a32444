"""The HTTP API over real HTTP, against the app deployed on the session's Ray."""

# ruff: noqa: F811 - the shared fixtures are imported, and pytest passes them as arguments
from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from hive_ray import Agent
from tests.integration.test_api_support import ApiServer, admin_client, api  # noqa: F401

pytestmark = pytest.mark.ray

PROBLEM = "application/problem+json"


def assert_problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    body = response.json()
    assert body["status"] == status and body["title"] and body["detail"] and body["type"].startswith("https://")
    assert "Traceback" not in response.text
    return body


@pytest.fixture
def echo_pool(admin_client: httpx.Client, unique_name: str) -> Iterator[str]:
    response = admin_client.post("/v1/pools", json={"name": unique_name, "agent_type": "echo", "count": 1})
    assert response.status_code == 201, response.text
    yield unique_name
    admin_client.delete(f"/v1/pools/{unique_name}")


def sse_events(client: httpx.Client, path: str, *, until: Any, params: dict[str, Any] | None = None,
               headers: dict[str, str] | None = None, limit_seconds: float = 15) -> list[dict[str, Any]]:
    """Read a Server-Sent Events stream until ``until(events)`` or an ``end`` event."""
    events: list[dict[str, Any]] = []
    deadline = time.monotonic() + limit_seconds
    with client.stream("GET", path, params=params, headers=headers) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        name = None
        for line in response.iter_lines():
            if line.startswith("event:"):
                name = line.split(":", 1)[1].strip()
            elif line.startswith("data:") and name != "end":
                events.append(json.loads(line[5:]))
            elif line == "" and name == "end":
                events.append({"end": True})
                break
            if (events and until(events)) or time.monotonic() > deadline:
                break
    return events


# ---------------------------------------------------------------------- health, docs
def test_health_needs_no_key_and_readiness_reaches_the_orchestrator(api: ApiServer) -> None:
    assert httpx.get(api.base_url + "/healthz").json() == {"status": "ok"}
    ready = httpx.get(api.base_url + "/readyz")
    assert ready.status_code == 200
    assert ready.json()["status"] == "ready" and ready.json()["orchestrator"]["status"] == "ok"


def test_openapi_and_docs_are_served(api: ApiServer) -> None:
    schema = httpx.get(api.base_url + "/openapi.json", headers=api.headers("read")).json()
    assert {"/v1/pools", "/v1/tasks", "/v1/tasks/{task_id}", "/v1/events", "/metrics"} <= set(schema["paths"])
    assert "ApiKey" in schema["components"]["securitySchemes"]
    docs = httpx.get(api.base_url + "/docs")
    assert docs.status_code == 200 and "API reference" in docs.text and 'id="login-form"' in docs.text


# ---------------------------------------------------------------------- auth
@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong-key"}, {"Authorization": "Basic abc"}],
                         ids=["missing", "wrong", "not-bearer"])
def test_requests_without_a_valid_key_are_refused(api: ApiServer, headers: dict[str, str]) -> None:
    response = httpx.get(api.base_url + "/v1/pools", headers=headers)
    body = assert_problem(response, 401)
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert "Authorization: Bearer" in body["detail"]


def test_a_read_key_reads_but_cannot_change_pools_or_submit(api: ApiServer, unique_name: str) -> None:
    read = api.headers("read")
    assert httpx.get(api.base_url + "/v1/pools", headers=read).status_code == 200
    refused = httpx.post(api.base_url + "/v1/pools", headers=read,
                         json={"name": unique_name, "agent_type": "echo"})
    assert "admin key" in assert_problem(refused, 403)["detail"]
    assert_problem(httpx.post(api.base_url + "/v1/tasks", headers=read, json={"agent_type": "echo"}), 403)
    assert_problem(httpx.delete(api.base_url + f"/v1/pools/{unique_name}", headers=read), 403)


# ---------------------------------------------------------------------- pools
def test_pool_lifecycle_create_get_scale_stop(admin_client: httpx.Client, unique_name: str) -> None:
    created = admin_client.post("/v1/pools", json={"name": unique_name, "agent_type": "echo", "count": 1})
    assert created.status_code == 201 and created.headers["location"] == f"/v1/pools/{unique_name}"
    assert created.json()["size"] == 1
    assert unique_name in [p["name"] for p in admin_client.get("/v1/pools").json()]
    scaled = admin_client.patch(f"/v1/pools/{unique_name}", json={"count": 2})
    assert scaled.status_code == 200 and scaled.json()["desired"] == 2
    got = admin_client.get(f"/v1/pools/{unique_name}").json()
    assert got["size"] == 2 and len(got["agents"]) == 2
    assert {a["state"] for a in got["agents"]} == {"ready"}
    stopped = admin_client.delete(f"/v1/pools/{unique_name}")
    assert stopped.status_code == 200 and stopped.json()["name"] == unique_name
    body = assert_problem(admin_client.get(f"/v1/pools/{unique_name}"), 404)
    assert unique_name in body["detail"] and body["pool"] == unique_name


def test_pool_errors_are_problems(admin_client: httpx.Client, unique_name: str) -> None:
    unknown = admin_client.post("/v1/pools", json={"name": unique_name, "agent_type": "no-such-agent"})
    body = assert_problem(unknown, 404)  # well-formed, but names an agent type that does not exist
    assert "no-such-agent" in body["detail"] and "echo" in body["known"]
    invalid = assert_problem(admin_client.post("/v1/pools", json={"name": "bad name!", "agent_type": "echo",
                                                                  "count": -1, "typo": 1}), 422)
    assert {"name", "count", "typo"} <= {e["field"] for e in invalid["errors"]}
    assert_problem(admin_client.patch("/v1/pools/never-made", json={"count": 1}), 404)
    assert_problem(admin_client.patch(f"/v1/pools/{unique_name}", json={"count": "many"}), 422)
    assert_problem(admin_client.delete("/v1/pools/never-made"), 404)


# ---------------------------------------------------------------------- tasks
def test_submit_answers_202_with_location_then_get(admin_client: httpx.Client, echo_pool: str) -> None:
    accepted = admin_client.post("/v1/tasks", json={"pool": echo_pool, "payload": {"hello": "world"}})
    assert accepted.status_code == 202
    task_id = accepted.json()["task_id"]
    assert accepted.headers["location"] == f"/v1/tasks/{task_id}"
    deadline = time.monotonic() + 10
    while (record := admin_client.get(accepted.headers["location"]).json())["state"] != "succeeded":
        assert time.monotonic() < deadline, record
        time.sleep(0.05)
    assert record["result"] == {"hello": "world"} and record["pool"] == echo_pool


def test_submit_with_wait_returns_the_result_inline(admin_client: httpx.Client, echo_pool: str) -> None:
    answer = admin_client.post("/v1/tasks", params={"wait": 5}, json={"agent_type": "echo", "pool": None,
                                                                      "payload": [1, 2]})
    # agent_type may route to any echo pool; this one exists, so the answer is immediate.
    assert answer.status_code == 200, answer.text
    assert answer.json()["state"] == "succeeded" and answer.json()["result"] == [1, 2]


class Inflate(Agent):
    """A result far larger than its request: kept in Ray's object store, not the stream."""

    agent_type = "inflate-api-test"

    def handle(self, task):
        return "x" * task.payload


def test_a_result_kept_in_the_object_store_comes_back_inline_and_in_the_record(
        admin_client: httpx.Client, hive: Any, unique_name: str) -> None:
    hive.spawn(Inflate, count=1, pool=unique_name)
    size = 200_000  # above max_result_bytes_in_memory (64 KiB)
    answer = admin_client.post("/v1/tasks", params={"wait": 10}, json={"pool": unique_name, "payload": size})
    assert answer.status_code == 200, answer.text[:500]
    assert answer.json()["result"] == "x" * size
    record = admin_client.get(f"/v1/tasks/{answer.json()['task_id']}")
    assert record.json()["result"] == "x" * size
    hive.stop(unique_name)


def test_wait_that_runs_out_is_a_504_and_the_task_can_be_cancelled(
        admin_client: httpx.Client, unique_name: str) -> None:
    admin_client.post("/v1/pools", json={"name": unique_name, "agent_type": "sleep", "count": 1})
    slow = admin_client.post("/v1/tasks", params={"wait": 0.3}, json={"pool": unique_name, "payload": {"seconds": 30}})
    body = assert_problem(slow, 504)
    assert slow.headers["location"] == f"/v1/tasks/{body['task_id']}"
    cancelled = admin_client.post(f"/v1/tasks/{body['task_id']}/cancel")
    assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled"
    admin_client.delete(f"/v1/pools/{unique_name}")


def test_task_errors_are_problems(admin_client: httpx.Client, echo_pool: str) -> None:
    assert "nope" in assert_problem(admin_client.get("/v1/tasks/nope"), 404)["detail"]
    assert_problem(admin_client.post("/v1/tasks/nope/cancel"), 404)
    assert_problem(admin_client.post("/v1/tasks", json={"pool": "never-made"}), 404)
    two_targets = assert_problem(admin_client.post("/v1/tasks", json={"pool": echo_pool, "agent_type": "echo"}), 422)
    assert "exactly one of agent_type, capability or pool" in two_targets["detail"]
    bad = assert_problem(admin_client.post("/v1/tasks", params={"wait": -1},
                                           json={"pool": echo_pool, "priority": 5000}), 422)
    assert {"wait", "priority"} <= {e["field"] for e in bad["errors"]}
    malformed = assert_problem(admin_client.post("/v1/tasks", content=b"{not json",
                                                 headers={"content-type": "application/json"}), 400)
    assert "not valid JSON" in malformed["detail"]
    assert_problem(admin_client.post("/v1/tasks", json={"agent_type": "no-such-type"}), 404)
    assert_problem(admin_client.get("/v1/tasks", params={"state": "sleeping"}), 422)
    assert_problem(admin_client.get("/v1/nothing-here"), 404)
    assert admin_client.put("/v1/pools").headers["allow"] == "GET, POST"
    options = admin_client.options(f"/v1/pools/{echo_pool}")
    assert_problem(options, 405)
    assert options.headers["allow"] == "DELETE, GET, PATCH"  # every route of the path, not the first


def test_pool_fields_that_disagree_are_a_422_naming_them(admin_client: httpx.Client, unique_name: str) -> None:
    backoff = assert_problem(admin_client.post("/v1/pools", json={
        "name": unique_name, "agent_type": "echo", "restart": {"backoff_initial_seconds": 20}}), 422)
    assert [e["field"] for e in backoff["errors"]] == ["restart.backoff_initial_seconds",
                                                       "restart.backoff_max_seconds"]
    assert "restart.backoff_initial_seconds (20) is above restart.backoff_max_seconds (10)" in backoff["detail"]
    bounds = assert_problem(admin_client.post("/v1/pools", json={
        "name": unique_name, "agent_type": "echo", "autoscale": {"min_agents": 5, "max_agents": 2}}), 422)
    assert {e["field"] for e in bounds["errors"]} == {"autoscale.min_agents", "autoscale.max_agents"}
    assert_problem(admin_client.get(f"/v1/pools/{unique_name}"), 404)  # nothing was created


def test_a_huge_scale_is_refused_before_any_agent_starts(admin_client: httpx.Client, echo_pool: str,
                                                        api: ApiServer) -> None:
    """The 22,605-agent request that once took a control plane down: refused, /readyz stays 200."""
    as_float = assert_problem(admin_client.patch(f"/v1/pools/{echo_pool}", json={"count": 22605.0}), 422)
    assert as_float["errors"][0]["code"] == "int_from_float" and "22605.0" in as_float["detail"]
    too_many = assert_problem(admin_client.patch(f"/v1/pools/{echo_pool}", json={"count": 200_000}), 422)
    assert "above the max_agents_per_pool setting (100000)" in too_many["detail"]
    # Within the admin's limit, but 22,605 dedicated agents are 22,605 processes: more than
    # the cluster's memory holds. The orchestrator refuses it before starting anything.
    unholdable = assert_problem(admin_client.patch(f"/v1/pools/{echo_pool}", json={"count": 22605}), 422)
    assert "cannot have 22,605 agents" in unholdable["detail"] and "Ask for at most" in unholdable["detail"]
    assert httpx.get(api.base_url + "/readyz", timeout=30).status_code == 200
    assert admin_client.get(f"/v1/pools/{echo_pool}").json()["desired"] == 1


def test_the_openapi_document_needs_a_key(api: ApiServer) -> None:
    assert_problem(httpx.get(api.base_url + "/openapi.json", timeout=30), 401)
    document = httpx.get(api.base_url + "/openapi.json", headers=api.headers("read"), timeout=30)
    assert document.status_code == 200 and document.json()["info"]["title"] == "hive-ray API"
    for page in ("/docs", "/dashboard"):  # pages that ask for a key, and hold no data
        answer = httpx.get(api.base_url + page, timeout=30)
        assert answer.status_code == 200 and 'id="login-form"' in answer.text


def test_a_body_over_the_limit_is_a_413(admin_client: httpx.Client, echo_pool: str) -> None:
    big = {"pool": echo_pool, "payload": "x" * (65 * 1024)}
    body = assert_problem(admin_client.post("/v1/tasks", json=big), 413)
    assert body["limit"] == 64 * 1024


def test_a_full_queue_is_a_429_with_retry_after(admin_client: httpx.Client, unique_name: str) -> None:
    # No agents: tasks stay queued, and the queue holds one.
    admin_client.post("/v1/pools", json={"name": unique_name, "agent_type": "echo", "count": 0, "max_queue": 1})
    assert admin_client.post("/v1/tasks", json={"pool": unique_name}).status_code == 202
    full = admin_client.post("/v1/tasks", json={"pool": unique_name})
    body = assert_problem(full, 429)
    assert int(full.headers["retry-after"]) >= 1 and body["pool"] == unique_name
    admin_client.delete(f"/v1/pools/{unique_name}")


def test_idempotency_key_returns_the_first_task_and_refuses_another_body(
        admin_client: httpx.Client, echo_pool: str) -> None:
    key = {"Idempotency-Key": uuid.uuid4().hex}
    first = admin_client.post("/v1/tasks", headers=key, json={"pool": echo_pool, "payload": 1})
    again = admin_client.post("/v1/tasks", headers=key, json={"pool": echo_pool, "payload": 1})
    assert first.status_code == again.status_code == 202
    assert first.json()["task_id"] == again.json()["task_id"]
    assert not first.json()["replayed"] and again.json()["replayed"]
    assert admin_client.get(first.headers["location"]).json()["idempotency_key"] == key["Idempotency-Key"]
    conflict = admin_client.post("/v1/tasks", headers=key, json={"pool": echo_pool, "payload": 2})
    assert "different request body" in assert_problem(conflict, 409)["detail"]


def test_task_list_filters_and_paginates_with_a_cursor(admin_client: httpx.Client, echo_pool: str) -> None:
    submitted = [admin_client.post("/v1/tasks", json={"pool": echo_pool, "payload": n}).json()["task_id"]
                 for n in range(5)]
    seen: list[str] = []
    params: dict[str, Any] = {"pool": echo_pool, "limit": 2}
    pages = 0
    while True:
        page = admin_client.get("/v1/tasks", params=params)
        assert page.status_code == 200
        body = page.json()
        assert len(body["tasks"]) <= 2 and all(t["pool"] == echo_pool for t in body["tasks"])
        seen += [t["task_id"] for t in body["tasks"]]
        pages += 1
        if not body["next_cursor"]:
            assert "link" not in page.headers
            break
        assert 'rel="next"' in page.headers["link"] and body["next_cursor"] in page.headers["link"]
        params = {**params, "cursor": body["next_cursor"]}
    assert seen == list(reversed(submitted)) and pages == 3  # newest first, every task once
    assert admin_client.get("/v1/tasks", params={"pool": echo_pool, "state": "failed"}).json()["tasks"] == []


# ---------------------------------------------------------------------- virtual agents
@pytest.fixture
def cart_pool(admin_client: httpx.Client, unique_name: str) -> Iterator[str]:
    """A pool of the shipped ``cart`` virtual agents (actors/cart.py), made through the API."""
    name = f"{unique_name}-cart"  # beside a test's echo_pool, which takes unique_name
    created = admin_client.post("/v1/pools", json={"name": name, "agent_type": "cart", "count": 1})
    assert created.status_code == 201, created.text
    yield name
    admin_client.delete(f"/v1/pools/{name}")


def documented(client: httpx.Client, response: httpx.Response, schema: str) -> dict[str, Any]:
    """``response``'s body, checked against the OpenAPI document's schema named ``schema``."""
    import jsonschema

    document = client.get("/openapi.json").json()
    jsonschema.validate(response.json(), document["components"]["schemas"][schema])
    return response.json()


def test_a_cart_keeps_what_its_messages_add_and_refuses_a_bad_one(
        admin_client: httpx.Client, cart_pool: str, wait_until: Callable[..., bool]) -> None:
    key = f"user {uuid.uuid4().hex[:8]} é"  # any text but "/": sent percent-encoded
    path = f"/v1/agents/cart/{key}"
    never = admin_client.get(path)
    assert never.status_code == 200, never.text
    documented(admin_client, never, "AgentState")
    assert never.json() | {"owner": None} == {"agent_type": "cart", "key": key, "pool": cart_pool, "owner": None,
                                              "version": 0, "state": None, "activation": None,
                                              "reminders": []}
    assert never.json()["owner"].startswith(cart_pool)

    added = admin_client.post(f"{path}/messages", params={"wait": 10},
                              json={"message": {"op": "add", "item": "apple", "quantity": 2}})
    assert added.status_code == 200, added.text
    documented(admin_client, added, "TaskOutcome")
    assert added.json()["state"] == "succeeded" and added.json()["error"] is None
    assert added.json()["result"] == {"key": key, "items": {"apple": 2}, "count": 2}
    assert added.headers["location"] == f"/v1/tasks/{added.json()['task_id']}"

    told = admin_client.post(f"{path}/messages", json={"message": {"op": "add", "item": "pear"}})
    assert told.status_code == 202 and documented(admin_client, told, "TaskAccepted")["pool"] == cart_pool
    assert wait_until(lambda: admin_client.get(told.headers["location"]).json()["state"] == "succeeded", 10)
    record = admin_client.get(told.headers["location"]).json()
    assert record["affinity_key"] == key and record["result"]["items"] == {"apple": 2, "pear": 1}

    state = documented(admin_client, admin_client.get(path), "AgentState")
    assert state["state"] == {"items": {"apple": 2, "pear": 1}} and state["version"] == 2
    assert state["activation"]["version"] == 2 and state["activation"]["turns"] == 2

    # A message the cart refuses fails its task, with the handler's words, and changes nothing.
    refused = admin_client.post(f"{path}/messages", params={"wait": 10}, json={"message": {"op": "fly"}})
    assert refused.status_code == 200, refused.text
    documented(admin_client, refused, "TaskOutcome")
    assert refused.json()["state"] == "failed" and refused.json()["result"] is None
    assert refused.json()["error"]["type"] == "ValueError"
    assert "a cart message is a dict with op one of add, remove, view, checkout" in refused.json()["error"]["message"]
    negative = admin_client.post(f"{path}/messages", params={"wait": 10},
                                 json={"message": {"op": "add", "item": "fig", "quantity": -1}})
    assert "add needs a quantity of at least 1, got -1" in negative.json()["error"]["message"]
    after = admin_client.get(path).json()
    assert after["state"] == {"items": {"apple": 2, "pear": 1}} and after["version"] == 2

    # The same message id is the same message: answered once; another message under it is a conflict.
    once = {"message": {"op": "add", "item": "kiwi"}, "message_id": uuid.uuid4().hex}
    first = admin_client.post(f"{path}/messages", params={"wait": 10}, json=once)
    again = admin_client.post(f"{path}/messages", params={"wait": 10}, json=once)
    assert first.json()["task_id"] == again.json()["task_id"] and again.json()["result"]["items"]["kiwi"] == 1
    conflict = admin_client.post(f"{path}/messages", headers={"Idempotency-Key": once["message_id"]},
                                 json={"message": {"op": "checkout"}})
    assert "before with another message" in assert_problem(conflict, 409)["detail"]
    assert admin_client.get(path).json()["state"]["items"] == {"apple": 2, "pear": 1, "kiwi": 1}


def test_virtual_agent_errors_are_problems(api: ApiServer, admin_client: httpx.Client, cart_pool: str,
                                           echo_pool: str) -> None:
    for agent_type in ("no-such-type", "echo"):  # unknown, and not virtual (an echo pool runs)
        body = assert_problem(admin_client.post(f"/v1/agents/{agent_type}/k/messages", json={"message": 1}), 404)
        assert f"no pool runs virtual agent type {agent_type!r}" in body["detail"] and "cart" in body["detail"]
        assert_problem(admin_client.get(f"/v1/agents/{agent_type}/k"), 404)
    too_long = assert_problem(admin_client.post(f"/v1/agents/cart/{'k' * 257}/messages", json={"message": 1}), 422)
    assert too_long["errors"][0]["field"] == "key" and too_long["errors"][0]["in"] == "path"
    assert_problem(admin_client.get(f"/v1/agents/cart/{'k' * 257}"), 422)
    missing = assert_problem(admin_client.post("/v1/agents/cart/k/messages", json={"mesage": 1}), 422)
    assert {e["field"] for e in missing["errors"]} == {"message", "mesage"}
    differ = assert_problem(admin_client.post("/v1/agents/cart/k/messages", headers={"Idempotency-Key": "a"},
                                              json={"message": 1, "message_id": "b"}), 422)
    assert differ["errors"][0]["code"] == "fields_disagree"
    assert_problem(admin_client.post("/v1/agents/cart/k/messages", params={"wait": 0}, json={"message": 1}), 422)
    read = api.headers("read")
    assert "admin key" in assert_problem(httpx.post(api.base_url + "/v1/agents/cart/k/messages", headers=read,
                                                    json={"message": {"op": "view"}}), 403)["detail"]
    assert httpx.get(api.base_url + "/v1/agents/cart/k", headers=read).status_code == 200
    assert_problem(httpx.get(api.base_url + "/v1/agents/cart/k"), 401)


# ---------------------------------------------------------------------- topics
def as_documented(client: httpx.Client, response: httpx.Response, method: str, path: str) -> Any:
    """``response``'s body, checked against what the OpenAPI document says ``method path``
    answers with the response's status (references resolved against the whole document)."""
    import jsonschema

    document = client.get("/openapi.json").json()
    answer = document["paths"][path][method]["responses"][str(response.status_code)]
    schema = answer["content"]["application/json"]["schema"]
    jsonschema.validate(response.json(), {**schema, "components": document["components"]})
    return response.json()


def topic_stream(client: httpx.Client, path: str, *, count: int, headers: dict[str, str] | None = None,
                 params: dict[str, Any] | None = None, on_open: Callable[[], None] = lambda: None,
                 limit_seconds: float = 30) -> list[dict[str, Any]]:
    """The first ``count`` frames (``{"id", "event", "data"}``) of a topic's event stream;
    ``on_open`` runs once the stream answered (to publish while following)."""
    frames: list[dict[str, Any]] = []
    frame: dict[str, Any] = {}
    deadline = time.monotonic() + limit_seconds
    with client.stream("GET", path, headers=headers, params=params) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        on_open()
        for line in response.iter_lines():
            name, _, value = line.partition(": ")
            if name in ("id", "event"):
                frame[name] = value
            elif name == "data":
                frame["data"] = json.loads(value)
            elif line == "" and frame:
                frames.append(frame)
                frame = {}
            if len(frames) >= count or time.monotonic() > deadline:
                break
    return frames


def test_a_topic_reaches_carts_by_type_and_one_by_one_once_per_message_id(
        admin_client: httpx.Client, unique_name: str, wait_until: Callable[..., bool]) -> None:
    topic, pool = f"deals.{unique_name}", f"{unique_name}-cart"
    created = admin_client.post("/v1/pools", json={"name": pool, "agent_type": "cart", "count": 1,
                                                   "subscriptions": [topic]})
    assert created.status_code == 201, created.text
    ann, ben, cat = (f"{name}-{unique_name}" for name in ("ann", "ben", "cat"))
    subscriptions = f"/v1/topics/{topic}/subscriptions"
    for key in (ann, ben):
        added = admin_client.post(subscriptions, json={"agent_type": "cart", "key": key})
        assert added.status_code == 201, added.text
        assert as_documented(admin_client, added, "post", "/v1/topics/{topic}/subscriptions")["added"]
    again = admin_client.post(subscriptions, json={"agent_type": "cart", "key": ann})
    assert again.status_code == 200 and again.json()["added"] is False
    listed = as_documented(admin_client, admin_client.get(subscriptions), "get", "/v1/topics/{topic}/subscriptions")
    assert listed == [{"topic": topic, "agent_types": ["cart"],
                       "agents": [{"agent_type": "cart", "key": ann}, {"agent_type": "cart", "key": ben}]}]
    everything = as_documented(admin_client, admin_client.get("/v1/topics"), "get", "/v1/topics")
    assert listed[0] in everything

    # By type, the source names the key (cat); one by one, ann and ben: three carts, one coupon each.
    coupon = {"message": {"op": "add", "item": "coupon"}, "source": cat, "message_id": uuid.uuid4().hex}
    published = admin_client.post(f"/v1/topics/{topic}/messages", json=coupon)
    assert published.status_code == 202, published.text
    first = as_documented(admin_client, published, "post", "/v1/topics/{topic}/messages")
    assert first["deliveries"] == 3 and len(first["task_ids"]) == 3 and first["undeliverable"] == []
    assert first["duplicate"] is False and first["topic"] == topic
    replayed = admin_client.post(f"/v1/topics/{topic}/messages", headers={"Idempotency-Key": coupon["message_id"]},
                                 json={"message": coupon["message"], "source": cat})
    assert replayed.status_code == 202 and replayed.json() == {**first, "duplicate": True}
    conflict = admin_client.post(f"/v1/topics/{topic}/messages",
                                 json={**coupon, "message": {"op": "add", "item": "two coupons"}})
    assert "was published to topic" in assert_problem(conflict, 409)["detail"]
    for task_id in first["task_ids"]:
        assert wait_until(lambda t=task_id: admin_client.get(f"/v1/tasks/{t}").json()["state"] == "succeeded", 30)
        record = admin_client.get(f"/v1/tasks/{task_id}").json()
        assert record["metadata"]["topic"] == topic and record["pool"] == pool
    for key in (ann, ben, cat):
        assert admin_client.get(f"/v1/agents/cart/{key}").json()["state"] == {"items": {"coupon": 1}}, key

    # Without a source, only the agents subscribed one by one; unsubscribed, only ben.
    assert admin_client.post(f"/v1/topics/{topic}/messages", json={"message": {"op": "view"}}).json()[
        "deliveries"] == 2
    removed = admin_client.delete(f"{subscriptions}/cart/{ann}")
    assert as_documented(admin_client, removed, "delete", "/v1/topics/{topic}/subscriptions/{agent_type}/{key}")[
        "removed"] is True
    assert admin_client.delete(f"{subscriptions}/cart/{ann}").json()["removed"] is False
    only_ben = admin_client.post(f"/v1/topics/{topic}/messages", json={"message": {"op": "view"}}).json()
    assert only_ben["deliveries"] == 1
    # A subscriber whose type no pool runs is named, not silently skipped.
    admin_client.post(subscriptions, json={"agent_type": f"ghost-{unique_name}", "key": "k"})
    ghost = admin_client.post(f"/v1/topics/{topic}/messages", json={"message": {"op": "view"}}).json()
    assert ghost["undeliverable"] == [{"agent_type": f"ghost-{unique_name}", "key": "k"}]
    admin_client.delete(f"/v1/pools/{pool}")


def test_a_topic_is_followed_as_server_sent_events_and_resumed(
        admin_client: httpx.Client, unique_name: str) -> None:
    topic = f"news:{unique_name}"
    sequences = [admin_client.post(f"/v1/topics/{topic}/messages", json={"message": {"n": n}}).json()["sequence"]
                 for n in range(3)]
    assert sequences == sorted(sequences) and len(set(sequences)) == 3
    path = f"/v1/topics/{topic}/events"
    kept = topic_stream(admin_client, path, count=3)
    assert [(f["event"], int(f["id"])) for f in kept] == [("message", s) for s in sequences]
    assert [f["data"]["message"] for f in kept] == [{"n": 0}, {"n": 1}, {"n": 2}]
    assert {f["data"]["topic"] for f in kept} == {topic} and all(f["data"]["deliveries"] == 0 for f in kept)
    # Resumed after the second, as a reconnecting EventSource does; then one published while following.
    later = threading.Timer(0.5, lambda: admin_client.post(f"/v1/topics/{topic}/messages", json={
        "message": "live", "source": "someone", "message_id": "live-1"}))
    resumed = topic_stream(admin_client, path, count=2, headers={"Last-Event-ID": str(sequences[1])},
                           on_open=later.start)
    later.join()
    assert [f["data"]["message"] for f in resumed] == [{"n": 2}, "live"]
    assert resumed[1]["data"]["source"] == "someone" and resumed[1]["data"]["message_id"] == "live-1"
    assert int(resumed[1]["id"]) > sequences[2]
    after = topic_stream(admin_client, path, count=1, params={"after": resumed[0]["id"]})
    assert after[0]["data"]["message"] == "live"


def test_topic_errors_are_problems(api: ApiServer, admin_client: httpx.Client, unique_name: str) -> None:
    for method, path in (("POST", "/v1/topics/no spaces please/messages"), ("GET", "/v1/topics/a+b/events"),
                         ("POST", f"/v1/topics/{'t' * 201}/subscriptions"),
                         ("GET", "/v1/topics/café/subscriptions")):
        body = {"message": 1} if path.endswith("messages") else {"agent_type": "cart", "key": "k"}
        answer = assert_problem(admin_client.request(method, path, json=body if method == "POST" else None), 422)
        assert "a topic is 1 to 200 letters, digits or _ . : - (no spaces or slashes)" in answer["detail"], path
        assert answer["errors"][0]["field"] == "topic" and answer["errors"][0]["in"] == "path"
    not_virtual = assert_problem(admin_client.post("/v1/topics/t/subscriptions",
                                                   json={"agent_type": "echo", "key": "k"}), 422)
    assert "agent type 'echo' is not virtual" in not_virtual["detail"]
    missing = assert_problem(admin_client.post("/v1/topics/t/messages", json={"mesage": 1}), 422)
    assert {e["field"] for e in missing["errors"]} == {"message", "mesage"}
    read = api.headers("read")
    topic = f"t-{unique_name}"
    assert "admin key" in assert_problem(httpx.post(api.base_url + f"/v1/topics/{topic}/messages", headers=read,
                                                    json={"message": 1}), 403)["detail"]
    assert_problem(httpx.delete(api.base_url + f"/v1/topics/{topic}/subscriptions/cart/k", headers=read), 403)
    assert httpx.get(api.base_url + f"/v1/topics/{topic}/subscriptions", headers=read).status_code == 200
    assert_problem(httpx.get(api.base_url + "/v1/topics"), 401)


# ---------------------------------------------------------------------- event streams
def test_a_task_stream_sends_its_events_in_order_and_ends(admin_client: httpx.Client, unique_name: str) -> None:
    admin_client.post("/v1/pools", json={"name": unique_name, "agent_type": "sleep", "count": 1})
    task_id = admin_client.post("/v1/tasks", json={"pool": unique_name, "payload": {"seconds": 0.3}}).json()["task_id"]
    events = sse_events(admin_client, f"/v1/tasks/{task_id}/events", until=lambda e: False)
    assert events[-1] == {"end": True}
    states = [e["state"] for e in events[:-1]]
    sequences = [e["sequence"] for e in events[:-1]]
    assert sequences == sorted(sequences) and len(set(sequences)) == len(sequences)
    assert states[0] == "queued" and states[1] == "running" and states[-1] == "succeeded"
    assert "progress" in states
    assert {e["task_id"] for e in events[:-1]} == {task_id}
    # Resuming after the running event replays only what came after it.
    resumed = sse_events(admin_client, f"/v1/tasks/{task_id}/events", until=lambda e: False,
                         headers={"Last-Event-ID": str(sequences[1])})
    assert [e["sequence"] for e in resumed[:-1]] == sequences[2:]
    assert_problem(admin_client.get("/v1/tasks/nope/events"), 404)
    admin_client.delete(f"/v1/pools/{unique_name}")


def test_the_all_events_stream_sends_every_task_in_order(admin_client: httpx.Client, echo_pool: str) -> None:
    first = admin_client.post("/v1/tasks", params={"wait": 5}, json={"pool": echo_pool}).json()["task_id"]
    start = [e for e in sse_events(admin_client, f"/v1/tasks/{first}/events", until=lambda e: False)
             if "sequence" in e][-1]["sequence"]
    ids = {admin_client.post("/v1/tasks", params={"wait": 5}, json={"pool": echo_pool}).json()["task_id"]
           for _ in range(2)}
    events = sse_events(admin_client, "/v1/events", params={"after": start},
                        until=lambda es: ids <= {e["task_id"] for e in es if e["state"] == "succeeded"})
    sequences = [e["sequence"] for e in events]
    assert sequences == sorted(sequences) and sequences[0] > start
    for task_id in ids:
        assert [e["state"] for e in events if e["task_id"] == task_id] == ["queued", "running", "succeeded"]


# ---------------------------------------------------------------------- caching
def test_pool_reads_are_cached_and_invalidated_by_changes(admin_client: httpx.Client, unique_name: str) -> None:
    admin_client.get("/v1/pools")
    assert admin_client.get("/v1/pools").headers["x-cache"] == "hit"
    admin_client.post("/v1/pools", json={"name": unique_name, "agent_type": "echo", "count": 1})
    after_create = admin_client.get("/v1/pools")
    assert after_create.headers["x-cache"] == "miss" and unique_name in [p["name"] for p in after_create.json()]
    assert admin_client.get(f"/v1/pools/{unique_name}").json()["desired"] == 1
    admin_client.patch(f"/v1/pools/{unique_name}", json={"count": 2})
    after_scale = admin_client.get(f"/v1/pools/{unique_name}")
    assert after_scale.headers["x-cache"] == "miss" and after_scale.json()["desired"] == 2
    admin_client.delete(f"/v1/pools/{unique_name}")
    assert unique_name not in [p["name"] for p in admin_client.get("/v1/pools").json()]


def test_only_finished_tasks_are_served_from_the_cache(admin_client: httpx.Client, unique_name: str,
                                                       wait_until: Callable[..., bool]) -> None:
    admin_client.post("/v1/pools", json={"name": unique_name, "agent_type": "sleep", "count": 1})
    task_id = admin_client.post("/v1/tasks", json={"pool": unique_name, "payload": {"seconds": 0.5}}).json()["task_id"]
    running = [admin_client.get(f"/v1/tasks/{task_id}") for _ in range(2)]
    assert [r.headers["x-cache"] for r in running] == ["miss", "miss"]
    assert running[-1].json()["state"] in ("queued", "running")
    admin_client.post("/v1/tasks", params={"wait": 5}, json={"pool": unique_name, "payload": {"seconds": 0}})
    assert wait_until(lambda: admin_client.get(f"/v1/tasks/{task_id}").json()["state"] == "succeeded", 10)
    cached = admin_client.get(f"/v1/tasks/{task_id}")
    assert cached.headers["x-cache"] == "hit" and cached.json()["state"] == "succeeded"
    admin_client.delete(f"/v1/pools/{unique_name}")


# ---------------------------------------------------------------------- metrics and dashboard data
def test_metrics_parse_and_reflect_the_orchestrator(admin_client: httpx.Client, echo_pool: str) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    admin_client.post("/v1/tasks", params={"wait": 5}, json={"pool": echo_pool})
    admin_client.get("/v1/pools")
    admin_client.get("/metrics")  # starts the event follower
    admin_client.post("/v1/tasks", params={"wait": 5}, json={"pool": echo_pool})
    deadline = time.monotonic() + 10
    while True:
        text = admin_client.get("/metrics").text
        families = {f.name: f for f in text_string_to_metric_families(text)}
        durations = [s for s in families.get("hive_task_duration_seconds", families["hive_orchestrator_up"]).samples
                     if s.labels.get("pool") == echo_pool]
        if durations or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert durations, "the task duration histogram never saw the pool's task"
    assert all(name.startswith("hive_") for name in families)
    assert families["hive_orchestrator_up"].samples[0].value == 1
    assert families["hive_http_request_duration_seconds"].type == "histogram"
    routes = {s.labels["route"] for s in families["hive_http_request_duration_seconds"].samples}
    assert {"/v1/pools", "/v1/tasks"} <= routes and not any("nope" in r for r in routes)
    depth = {s.labels["pool"]: s.value for s in families["hive_pool_queue_depth"].samples}
    assert depth[echo_pool] == 0
    outcomes = {s.labels["outcome"]: s.value for s in families["hive_tasks"].samples
                if s.name == "hive_tasks_total"}
    assert outcomes["succeeded"] >= 2 and outcomes["submitted"] >= outcomes["succeeded"]
    assert families["hive_agent_restarts"].type == "counter"


def test_dashboard_page_and_its_data(api: ApiServer, admin_client: httpx.Client, echo_pool: str) -> None:
    page = httpx.get(api.base_url + "/dashboard")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "<canvas" in page.text
    assert 'src="http' not in page.text and 'href="http' not in page.text  # self-contained: no CDN
    overview = admin_client.get("/v1/overview").json()
    assert echo_pool in [p["name"] for p in overview["pools"]]
    assert {"series", "counters", "recent_failures"} <= set(overview)

