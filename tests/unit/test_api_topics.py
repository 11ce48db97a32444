"""Topics through the HTTP app, without Ray: what each route asks the orchestrator and answers.

The app is built over a fake orchestrator made of the core's own pure parts
(:class:`Subscriptions`, :class:`RecentIds`, :class:`TopicLog`), in which
``cart`` is a virtual type subscribed to ``promotions`` by type. The live API,
with real carts, is tested in ``tests/integration/test_api_http.py`` and
``test_api_grpc.py``.
"""

from __future__ import annotations

import asyncio
import json
import re
import warnings
from typing import Any

import pytest

from hive_ray._topics import RecentIds, Subscriptions, TopicLog, check_topic

PROBLEM = "application/problem+json"
ADMIN = {"Authorization": "Bearer admin-key"}
READ = {"Authorization": "Bearer read-key"}


class FakeOrchestrator:
    """Publish, subscribe and follow as the orchestrator does them, minus the tasks."""

    def __init__(self, log_length: int = 1000) -> None:
        self.calls: list[tuple[str, tuple[Any, ...]]] = []
        self.subscriptions = Subscriptions()
        self.subscriptions.declare("cart", ["promotions"])
        self.recent = RecentIds()
        self.log = TopicLog(length=log_length)

    async def __call__(self, method: str, *args: Any) -> Any:
        self.calls.append((method, args))
        if method == "publish":
            topic, message, source, message_id, _trace = args
            check_topic(topic)
            earlier = self.recent.get(topic, message_id) if message_id else None
            if earlier is not None:
                return {**earlier, "duplicate": True}
            targets = self.subscriptions.targets(topic, source)
            delivered = [f"t-{agent_type}-{key}" for agent_type, key in targets if agent_type == "cart"]
            undeliverable = [{"agent_type": t, "key": k} for t, k in targets if t != "cart"]
            published = self.log.append(topic, source, message_id, message, len(delivered))
            answer = {"topic": topic, "sequence": published.sequence, "deliveries": len(delivered),
                      "task_ids": delivered, "undeliverable": undeliverable, "duplicate": False}
            if message_id:
                self.recent.add(topic, message_id, answer)
            return answer
        if method == "subscribe":
            topic, agent_type, key = args
            return {"topic": topic, "agent_type": agent_type, "key": key,
                    "added": self.subscriptions.subscribe(topic, agent_type, key)}
        if method == "unsubscribe":
            topic, agent_type, key = args
            return {"topic": topic, "agent_type": agent_type, "key": key,
                    "removed": self.subscriptions.unsubscribe(topic, agent_type, key)}
        if method == "subscriptions":
            return self.subscriptions.describe(args[0])
        if method == "topic_messages":
            topic, after, timeout, limit = args
            assert 0 < timeout <= 10 and limit == 1000  # bounded polls
            found, missed = self.log.after(topic, after, limit)
            if not found:
                await asyncio.sleep(min(timeout, 0.05))
            return {"topic": topic, "messages": [item.as_dict(topic) for item in found], "missed": missed,
                    "last_sequence": self.log.last_sequence(topic)}
        raise AssertionError(f"the orchestrator should not be asked {method}{args}")

    def of(self, method: str) -> list[tuple[Any, ...]]:
        return [args for name, args in self.calls if name == method]


@pytest.fixture
def orchestrator() -> FakeOrchestrator:
    return FakeOrchestrator()


def app_client(orchestrator: FakeOrchestrator) -> Any:
    from hive_ray._api._http import build_http_app
    from hive_ray._api._keys import KeyRing, key_digests
    from hive_ray._api._service import ApiService
    from hive_ray._settings import Settings

    keys = KeyRing(key_digests({"admin-key": "admin", "read-key": "read"}, None))
    service = ApiService(Settings(api_stream_max_seconds=0.5), orchestrator, keys)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # starlette's note about its httpx-based test client
        from starlette.testclient import TestClient

        return TestClient(build_http_app(service))


@pytest.fixture
def client(orchestrator: FakeOrchestrator) -> Any:
    return app_client(orchestrator)


def problem(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    return response.json()


def sse(text: str) -> list[dict[str, Any]]:
    """The frames of a Server-Sent Events body: ``{"id", "event", "data"}`` (comments dropped)."""
    frames = []
    for block in text.split("\n\n"):
        fields: dict[str, Any] = {}
        for line in block.splitlines():
            name, _, value = line.partition(": ")
            if name in ("id", "event"):
                fields[name] = value
            elif name == "data":
                fields["data"] = json.loads(value)
        if "data" in fields:
            frames.append(fields)
    return frames


# ---------------------------------------------------------------------- publish
def test_a_publish_reaches_type_subscribers_at_the_source_and_single_agents(
        client: Any, orchestrator: FakeOrchestrator) -> None:
    orchestrator.subscriptions.subscribe("promotions", "cart", "ann")
    orchestrator.subscriptions.subscribe("promotions", "gone", "bob")  # a type no pool runs
    answer = client.post("/v1/topics/promotions/messages", headers=ADMIN,
                         json={"message": {"op": "add", "item": "coupon"}, "source": "user 42"})
    assert answer.status_code == 202, answer.text
    body = answer.json()
    assert body["deliveries"] == 2 and body["task_ids"] == ["t-cart-user 42", "t-cart-ann"]
    assert body["undeliverable"] == [{"agent_type": "gone", "key": "bob"}] and body["duplicate"] is False
    assert orchestrator.of("publish") == [("promotions", {"op": "add", "item": "coupon"}, "user 42", None, None)]
    # Without a source, only the agents subscribed one by one.
    assert client.post("/v1/topics/promotions/messages", json={"message": None}, headers=ADMIN).json()[
        "task_ids"] == ["t-cart-ann"]


def test_a_message_id_is_delivered_once_and_the_header_is_the_same(
        client: Any, orchestrator: FakeOrchestrator) -> None:
    path = "/v1/topics/promotions/messages"
    first = client.post(path, json={"message": 1, "source": "k", "message_id": "m-1"}, headers=ADMIN).json()
    again = client.post(path, json={"message": 1, "source": "k"}, headers={**ADMIN, "Idempotency-Key": "m-1"})
    assert again.status_code == 202
    assert again.json() == {**first, "duplicate": True}
    assert [args[3] for args in orchestrator.of("publish")] == ["m-1", "m-1"]
    # Another message (or source) under a known id is refused, not silently dropped.
    for body in ({"message": 2, "source": "k", "message_id": "m-1"}, {"message": 1, "message_id": "m-1"}):
        conflict = problem(client.post(path, json=body, headers=ADMIN), 409)
        assert "message_id 'm-1' was published to topic 'promotions' before" in conflict["detail"]
    assert len(orchestrator.of("publish")) == 2
    # The same id on another topic is another message.
    other = client.post("/v1/topics/news/messages", json={"message": 2, "message_id": "m-1"}, headers=ADMIN)
    assert other.status_code == 202 and not other.json()["duplicate"]
    differ = problem(client.post(path, json={"message": 1, "message_id": "a"},
                                 headers={**ADMIN, "Idempotency-Key": "b"}), 422)
    assert differ["errors"] == [{"field": "message_id", "in": "body", "code": "fields_disagree",
                                 "message": "differs from the Idempotency-Key header"}]


@pytest.mark.parametrize(("topic", "words"), [
    ("no%20spaces", "a topic is 1 to 200 letters, digits or _ . : - (no spaces or slashes), got 'no spaces'"),
    ("t" * 201, "a topic is 1 to 200 letters"),
    ("caf%C3%A9", "got 'café'"),
    ("%2E%2E", "the topic '..' cannot be named in a URL"),
])
def test_bad_topic_names_are_a_422_that_says_what_a_topic_may_hold(
        client: Any, orchestrator: FakeOrchestrator, topic: str, words: str) -> None:
    for method, path, body in (("POST", f"/v1/topics/{topic}/messages", {"message": 1}),
                               ("GET", f"/v1/topics/{topic}/events", None),
                               ("POST", f"/v1/topics/{topic}/subscriptions", {"agent_type": "cart", "key": "k"}),
                               ("GET", f"/v1/topics/{topic}/subscriptions", None),
                               ("DELETE", f"/v1/topics/{topic}/subscriptions/cart/k", None)):
        answer = problem(client.request(method, path, json=body, headers=ADMIN), 422)
        assert words in answer["detail"], (method, path)
        assert [(e["field"], e["in"]) for e in answer["errors"]] == [("topic", "path")]
    assert orchestrator.calls == []


@pytest.mark.parametrize(("body", "field"), [
    ({}, "message"),
    ({"message": 1, "source": ""}, "source"),
    ({"message": 1, "source": "k" * 257}, "source"),
    ({"message": 1, "message_id": ""}, "message_id"),
    ({"message": 1, "topic": "x"}, "topic"),
])
def test_malformed_publishes_are_a_422_naming_the_field(client: Any, orchestrator: FakeOrchestrator,
                                                       body: dict[str, Any], field: str) -> None:
    answer = problem(client.post("/v1/topics/promotions/messages", json=body, headers=ADMIN), 422)
    assert field in {error["field"] for error in answer["errors"]}
    assert orchestrator.calls == []


# ---------------------------------------------------------------------- subscriptions
def test_subscribe_list_and_unsubscribe(client: Any, orchestrator: FakeOrchestrator) -> None:
    path = "/v1/topics/promotions/subscriptions"
    added = client.post(path, json={"agent_type": "cart", "key": "user 42"}, headers=ADMIN)
    assert added.status_code == 201 and added.json() == {"topic": "promotions", "agent_type": "cart",
                                                         "key": "user 42", "added": True}
    again = client.post(path, json={"agent_type": "cart", "key": "user 42"}, headers=ADMIN)
    assert again.status_code == 200 and again.json()["added"] is False
    listed = [{"topic": "promotions", "agent_types": ["cart"],
               "agents": [{"agent_type": "cart", "key": "user 42"}]}]
    assert client.get(path, headers=READ).json() == listed
    client.post("/v1/topics/news/subscriptions", json={"agent_type": "cart", "key": "k"}, headers=ADMIN)
    assert [entry["topic"] for entry in client.get("/v1/topics", headers=READ).json()] == ["news", "promotions"]
    assert client.get("/v1/topics/quiet/subscriptions", headers=READ).json() == [
        {"topic": "quiet", "agent_types": [], "agents": []}]

    removed = client.delete(f"{path}/cart/user 42", headers=ADMIN)
    assert removed.status_code == 200 and removed.json()["removed"] is True
    assert client.delete(f"{path}/cart/user 42", headers=ADMIN).json()["removed"] is False
    assert client.get(path, headers=READ).json()[0]["agents"] == []


def test_a_type_known_not_to_be_virtual_cannot_subscribe(client: Any, orchestrator: FakeOrchestrator) -> None:
    answer = problem(client.post("/v1/topics/promotions/subscriptions", json={"agent_type": "echo", "key": "k"},
                                 headers=ADMIN), 422)
    assert "agent type 'echo' is not virtual" in answer["detail"]
    assert [(e["field"], e["code"]) for e in answer["errors"]] == [("agent_type", "fields_disagree"), ("key", "fields_disagree")]
    # A type this replica does not know (defined in a driver's script) is the orchestrator's to judge.
    assert client.post("/v1/topics/promotions/subscriptions", json={"agent_type": "my-session", "key": "k"},
                       headers=ADMIN).status_code == 201
    # A "module:Class" name is never imported on a request's behalf.
    assert client.post("/v1/topics/promotions/subscriptions", json={"agent_type": "os:system", "key": "k"},
                       headers=ADMIN).status_code == 201
    assert [args[1] for args in orchestrator.of("subscribe")] == ["my-session", "os:system"]


@pytest.mark.parametrize(("body", "field"), [
    ({"agent_type": "cart"}, "key"),
    ({"agent_type": "cart", "key": "a/b"}, "key"),  # a path could not remove it again
    ({"agent_type": "", "key": "k"}, "agent_type"),
    ({"agent_type": "cart", "key": "k" * 257}, "key"),
])
def test_malformed_subscriptions_are_a_422_naming_the_field(client: Any, orchestrator: FakeOrchestrator,
                                                            body: dict[str, Any], field: str) -> None:
    answer = problem(client.post("/v1/topics/promotions/subscriptions", json=body, headers=ADMIN), 422)
    assert field in {error["field"] for error in answer["errors"]}
    assert orchestrator.calls == []


def test_publishing_and_subscribing_need_an_admin_key_and_reading_a_read_key(client: Any) -> None:
    for method, path, body in (("POST", "/v1/topics/t/messages", {"message": 1}),
                               ("POST", "/v1/topics/t/subscriptions", {"agent_type": "cart", "key": "k"}),
                               ("DELETE", "/v1/topics/t/subscriptions/cart/k", None)):
        problem(client.request(method, path, json=body), 401)
        assert "admin key" in problem(client.request(method, path, json=body, headers=READ), 403)["detail"]
    for path in ("/v1/topics", "/v1/topics/t/subscriptions", "/v1/topics/t/events"):
        problem(client.get(path), 401)
        assert client.get(path, headers=READ).status_code == 200
    assert client.get("/v1/topics/t/messages", headers=ADMIN).headers["allow"] == "POST"


# ---------------------------------------------------------------------- following
def test_a_topic_is_followed_as_server_sent_events_and_resumed_with_last_event_id(
        client: Any, orchestrator: FakeOrchestrator) -> None:
    sequences = [client.post("/v1/topics/promotions/messages", json={"message": {"n": n}, "message_id": f"m{n}"},
                             headers=ADMIN).json()["sequence"] for n in range(3)]
    streamed = client.get("/v1/topics/promotions/events", headers=READ)
    assert streamed.status_code == 200 and streamed.headers["content-type"].startswith("text/event-stream")
    assert streamed.headers["cache-control"] == "no-cache" and streamed.text.startswith("retry: 1000\n\n")
    frames = sse(streamed.text)
    assert [(f["event"], int(f["id"])) for f in frames] == [("message", s) for s in sequences]
    assert [f["data"]["message"] for f in frames] == [{"n": 0}, {"n": 1}, {"n": 2}]
    assert frames[0]["data"] | {"time": 0} == {"topic": "promotions", "sequence": sequences[0], "time": 0,
                                               "source": None, "message_id": "m0", "message": {"n": 0},
                                               "deliveries": 0}
    assert ": heartbeat" in streamed.text  # an idle poll says the stream is alive
    resumed = sse(client.get("/v1/topics/promotions/events",
                             headers={**READ, "Last-Event-ID": str(sequences[1])}).text)
    assert [int(f["id"]) for f in resumed] == sequences[2:]
    after = sse(client.get("/v1/topics/promotions/events", params={"after": sequences[0]}, headers=READ).text)
    assert [int(f["id"]) for f in after] == sequences[1:]
    assert sse(client.get("/v1/topics/other/events", headers=READ).text) == []  # nothing yet, no error
    assert all(0 < args[2] <= 0.5 for args in orchestrator.of("topic_messages"))  # polls bounded by the stream


def test_a_follower_that_fell_behind_gets_a_missed_marker_then_the_oldest_kept() -> None:
    orchestrator = FakeOrchestrator(log_length=2)  # the topic keeps its last 2 messages
    client = app_client(orchestrator)
    sequences = [client.post("/v1/topics/news/messages", json={"message": n}, headers=ADMIN).json()["sequence"]
                 for n in range(5)]
    frames = sse(client.get("/v1/topics/news/events", params={"after": sequences[0]}, headers=READ).text)
    assert [f.get("event") for f in frames] == ["missed", "message", "message"]
    assert "id" not in frames[0]  # a marker does not move Last-Event-ID
    assert frames[0]["data"] == {"topic": "news", "after": sequences[0], "next": sequences[3]}
    assert [f["data"]["message"] for f in frames[1:]] == [3, 4]
    # From the start (after=0) nothing is "missed": the follower asked for what is kept.
    assert [f["event"] for f in sse(client.get("/v1/topics/news/events", headers=READ).text)] == ["message"] * 2


# ---------------------------------------------------------------------- the document
def test_the_document_states_every_topic_operation(client: Any) -> None:
    document = client.get("/openapi.json", headers=READ).json()
    paths = document["paths"]
    publish = paths["/v1/topics/{topic}/messages"]["post"]
    assert {"202", "409", "422", "429"} <= set(publish["responses"])
    assert publish["responses"]["202"]["content"]["application/json"]["schema"]["$ref"].endswith("/TopicPublished")
    assert publish["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("/TopicMessage")
    assert list(paths["/v1/topics/{topic}/events"]["get"]["responses"]["200"]["content"]) == ["text/event-stream"]
    subscribe = paths["/v1/topics/{topic}/subscriptions"]["post"]
    assert {"200", "201"} <= set(subscribe["responses"])
    listed = paths["/v1/topics"]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
    assert listed["items"]["$ref"].endswith("/TopicSubscriptions")
    assert "delete" in paths["/v1/topics/{topic}/subscriptions/{agent_type}/{key}"]
    schemas = document["components"]["schemas"]
    assert schemas["TopicPublished"]["required"] == ["topic", "sequence", "deliveries", "task_ids",
                                                     "undeliverable", "duplicate"]
    topic = next(p for p in publish["parameters"] if p["name"] == "topic")["schema"]
    assert (topic["minLength"], topic["maxLength"]) == (1, 200)


@pytest.mark.parametrize("name", ["a", "promotions", "orders.eu", "a:b-c_d", "...", ".a", "a.", "-", "_", "..x",
                                  ".", "..", "", "a b", "a/b", "é", "a" * 200, "a" * 201, "a\n"])
def test_the_path_pattern_is_the_topic_pattern_minus_dot_segments(name: str) -> None:
    from hive_ray._api._http_topics import TOPIC_IN_PATH
    from hive_ray._topics import TOPIC_PATTERN

    stated = bool(re.fullmatch(TOPIC_IN_PATH, name)) and 1 <= len(name) <= 200
    assert stated == (bool(TOPIC_PATTERN.match(name)) and "\n" not in name and name not in (".", ".."))
