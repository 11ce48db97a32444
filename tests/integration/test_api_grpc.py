"""The gRPC API through Serve's gRPC proxy, with the API key in metadata."""

# ruff: noqa: F811 - the shared fixtures are imported, and pytest passes them as arguments
from __future__ import annotations

import json
from collections.abc import Iterator

import grpc
import pytest

from hive_ray._api import hive_pb2, hive_pb2_grpc
from tests.integration.test_api_support import ApiServer, admin_client, api  # noqa: F401

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def stub(api: ApiServer) -> Iterator[hive_pb2_grpc.HiveStub]:
    with grpc.insecure_channel(api.grpc_target) as channel:
        grpc.channel_ready_future(channel).result(timeout=30)
        yield hive_pb2_grpc.HiveStub(channel)


def auth(key: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {key}")]


@pytest.fixture
def echo_pool(admin_client: object, unique_name: str) -> Iterator[str]:
    admin_client.post("/v1/pools", json={"name": unique_name, "agent_type": "echo", "count": 1})  # type: ignore[attr-defined]
    yield unique_name
    admin_client.delete(f"/v1/pools/{unique_name}")  # type: ignore[attr-defined]


def test_submit_with_wait_get_and_stream(stub: hive_pb2_grpc.HiveStub, api: ApiServer, echo_pool: str) -> None:
    reply = stub.Submit(hive_pb2.SubmitRequest(pool=echo_pool, payload_json='{"n": 1}', wait=5),
                        metadata=auth(api.admin_key), timeout=30)
    assert reply.state == "succeeded" and json.loads(reply.result_json) == {"n": 1}
    task = stub.GetTask(hive_pb2.GetTaskRequest(task_id=reply.task_id), metadata=auth(api.read_key), timeout=30)
    assert task.pool == echo_pool and task.state == "succeeded"
    assert json.loads(task.record_json)["result"] == {"n": 1}
    events = list(stub.StreamEvents(hive_pb2.StreamEventsRequest(task_id=reply.task_id),
                                    metadata=auth(api.read_key), timeout=30))
    assert [e.state for e in events] == ["queued", "running", "succeeded"]
    assert [e.sequence for e in events] == sorted(e.sequence for e in events)


def test_submit_without_wait_then_cancel_and_idempotency(
        stub: hive_pb2_grpc.HiveStub, api: ApiServer, admin_client: object, unique_name: str) -> None:
    admin_client.post("/v1/pools", json={"name": unique_name, "agent_type": "sleep", "count": 1})  # type: ignore[attr-defined]
    request = hive_pb2.SubmitRequest(pool=unique_name, payload_json='{"seconds": 30}', idempotency_key=unique_name)
    first = stub.Submit(request, metadata=auth(api.admin_key), timeout=30)
    again = stub.Submit(request, metadata=auth(api.admin_key), timeout=30)
    assert first.state in ("queued", "running") and again.task_id == first.task_id and again.replayed
    cancelled = stub.Cancel(hive_pb2.CancelRequest(task_id=first.task_id), metadata=auth(api.admin_key), timeout=30)
    assert cancelled.state == "cancelled"
    with pytest.raises(grpc.RpcError) as conflict:
        stub.Submit(hive_pb2.SubmitRequest(pool=unique_name, payload_json="2", idempotency_key=unique_name),
                    metadata=auth(api.admin_key), timeout=30)
    assert conflict.value.code() == grpc.StatusCode.ALREADY_EXISTS
    admin_client.delete(f"/v1/pools/{unique_name}")  # type: ignore[attr-defined]


@pytest.mark.parametrize(("key", "code"), [(None, grpc.StatusCode.UNAUTHENTICATED),
                                           ("wrong", grpc.StatusCode.UNAUTHENTICATED),
                                           ("read", grpc.StatusCode.PERMISSION_DENIED)])
def test_submit_refuses_missing_wrong_and_read_only_keys(
        stub: hive_pb2_grpc.HiveStub, api: ApiServer, key: str | None, code: grpc.StatusCode) -> None:
    metadata = [] if key is None else auth(api.read_key if key == "read" else key)
    with pytest.raises(grpc.RpcError) as refused:
        stub.Submit(hive_pb2.SubmitRequest(agent_type="echo"), metadata=metadata, timeout=30)
    assert refused.value.code() == code and "key" in refused.value.details()


def test_errors_map_to_status_codes(stub: hive_pb2_grpc.HiveStub, api: ApiServer, echo_pool: str) -> None:
    cases = [
        (lambda: stub.GetTask(hive_pb2.GetTaskRequest(task_id="nope"), metadata=auth(api.read_key), timeout=30),
         grpc.StatusCode.NOT_FOUND),
        (lambda: stub.Submit(hive_pb2.SubmitRequest(pool=echo_pool, agent_type="echo"),
                             metadata=auth(api.admin_key), timeout=30), grpc.StatusCode.INVALID_ARGUMENT),
        (lambda: stub.Submit(hive_pb2.SubmitRequest(pool=echo_pool, payload_json="{bad"),
                             metadata=auth(api.admin_key), timeout=30), grpc.StatusCode.INVALID_ARGUMENT),
        (lambda: list(stub.StreamEvents(hive_pb2.StreamEventsRequest(task_id="nope"),
                                        metadata=auth(api.read_key), timeout=30)), grpc.StatusCode.NOT_FOUND),
    ]
    for call, code in cases:
        with pytest.raises(grpc.RpcError) as failed:
            call()
        assert failed.value.code() == code, failed.value.details()


def test_nothing_listens_beyond_loopback(api: ApiServer) -> None:
    import psutil

    ports = {int(api.base_url.rsplit(":", 1)[1]), int(api.grpc_target.rsplit(":", 1)[1])}
    listening = [c for c in psutil.net_connections(kind="inet")
                 if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port in ports]
    assert {c.laddr.port for c in listening} == ports
    assert {c.laddr.ip for c in listening} <= {"127.0.0.1", "::1", "::ffff:127.0.0.1"}, listening


@pytest.fixture
def words_pool(admin_client: object, unique_name: str) -> Iterator[str]:
    admin_client.post("/v1/pools", json={"name": unique_name, "agent_type": "words", "count": 1})  # type: ignore[attr-defined]
    yield unique_name
    admin_client.delete(f"/v1/pools/{unique_name}")  # type: ignore[attr-defined]


def test_submit_stream_sends_parts_as_they_come_then_the_end(stub: hive_pb2_grpc.HiveStub, api: ApiServer,
                                                            words_pool: str) -> None:
    parts = list(stub.SubmitStream(hive_pb2.SubmitRequest(pool=words_pool, payload_json='"to be or not"'),
                                   metadata=auth(api.admin_key), timeout=30))
    assert [json.loads(p.part_json) for p in parts if p.kind == "part"] == ["to ", "be ", "or ", "not"]
    assert parts[-1].kind == "end" and parts[-1].state == "succeeded"
    task_id = parts[-1].task_id
    again = list(stub.StreamParts(hive_pb2.StreamPartsRequest(task_id=task_id), metadata=auth(api.read_key),
                                  timeout=30))  # its parts are gone: the result is the one part
    assert [(p.kind, p.part_json) for p in again] == [("part", '"to be or not"'), ("end", "")]


def test_cancelling_a_submit_stream_cancels_its_task(stub: hive_pb2_grpc.HiveStub, api: ApiServer,
                                                     admin_client: object, words_pool: str, wait_until) -> None:
    # 2 s a word, 20 words: the task cannot end by itself while the cancellation travels
    # (through Serve's gRPC proxy, slow on a loaded machine).
    payload = json.dumps({"text": " ".join(["one"] * 20), "delay": 2})
    call = stub.SubmitStream(hive_pb2.SubmitRequest(pool=words_pool, payload_json=payload),
                             metadata=auth(api.admin_key), timeout=120)
    first = next(call)
    assert first.kind == "part" and json.loads(first.part_json) == "one "
    call.cancel()
    path = f"/v1/tasks/{first.task_id}"
    assert wait_until(lambda: admin_client.get(path).json()["state"] == "cancelled", 60)  # type: ignore[attr-defined]


def test_stream_calls_need_their_keys(stub: hive_pb2_grpc.HiveStub, api: ApiServer, words_pool: str) -> None:
    with pytest.raises(grpc.RpcError) as refused:
        list(stub.SubmitStream(hive_pb2.SubmitRequest(pool=words_pool, payload_json='"a"'),
                               metadata=auth(api.read_key), timeout=30))
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.RpcError) as unknown:
        list(stub.StreamParts(hive_pb2.StreamPartsRequest(task_id="nope"), metadata=auth(api.read_key), timeout=30))
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND


# ---------------------------------------------------------------------- virtual agents
def test_ask_and_get_a_virtual_cart(stub: hive_pb2_grpc.HiveStub, api: ApiServer, admin_client: object,
                                    unique_name: str, wait_until) -> None:
    created = admin_client.post("/v1/pools", json={"name": unique_name, "agent_type": "cart", "count": 1})  # type: ignore[attr-defined]
    assert created.status_code == 201, created.text
    key = f"grpc-{unique_name}"
    added = stub.AskAgent(hive_pb2.AskAgentRequest(agent_type="cart", key=key, wait=10,
                                                   message_json='{"op": "add", "item": "apple", "quantity": 2}'),
                          metadata=auth(api.admin_key), timeout=30)
    assert added.state == "succeeded" and json.loads(added.result_json) == {"key": key, "items": {"apple": 2},
                                                                            "count": 2}
    tell = hive_pb2.AskAgentRequest(agent_type="cart", key=key, message_json='{"op": "add", "item": "pear"}',
                                    message_id=f"pear-{unique_name}")
    told = stub.AskAgent(tell, metadata=auth(api.admin_key), timeout=30)
    again = stub.AskAgent(tell, metadata=auth(api.admin_key), timeout=30)
    assert again.task_id == told.task_id and again.replayed and not told.replayed
    task = f"/v1/tasks/{told.task_id}"
    assert wait_until(lambda: admin_client.get(task).json()["state"] == "succeeded", 10)  # type: ignore[attr-defined]

    agent = stub.GetAgent(hive_pb2.GetAgentRequest(agent_type="cart", key=key), metadata=auth(api.read_key),
                          timeout=30)
    assert (agent.agent_type, agent.key, agent.pool, agent.version, agent.active) == ("cart", key, unique_name, 2, True)
    assert json.loads(agent.state_json) == {"items": {"apple": 2, "pear": 1}}
    assert agent.owner.startswith(unique_name)
    whole = json.loads(agent.agent_json)
    assert whole["state"] == {"items": {"apple": 2, "pear": 1}} and whole["activation"]["version"] == 2

    refused = stub.AskAgent(hive_pb2.AskAgentRequest(agent_type="cart", key=key, message_json='{"op": "fly"}',
                                                     wait=10), metadata=auth(api.admin_key), timeout=30)
    assert refused.state == "failed" and refused.result_json == ""
    assert "a cart message is a dict with op" in json.loads(refused.error_json)["message"]


def test_virtual_agent_calls_map_errors_to_status_codes(stub: hive_pb2_grpc.HiveStub, api: ApiServer,
                                                        echo_pool: str) -> None:
    def ask(**fields: object) -> object:
        return stub.AskAgent(hive_pb2.AskAgentRequest(**fields), metadata=auth(api.admin_key), timeout=30)

    cases = [
        (lambda: ask(agent_type="echo", key="k", message_json="1"), grpc.StatusCode.NOT_FOUND, "virtual agent type"),
        (lambda: ask(agent_type="no-such-type", key="k"), grpc.StatusCode.NOT_FOUND, "no-such-type"),
        (lambda: ask(agent_type="cart", key=""), grpc.StatusCode.INVALID_ARGUMENT, "key"),
        (lambda: ask(agent_type="cart", key="k" * 257), grpc.StatusCode.INVALID_ARGUMENT, "at most 256"),
        (lambda: ask(agent_type="", key="k"), grpc.StatusCode.INVALID_ARGUMENT, "agent_type"),
        (lambda: ask(agent_type="cart", key="k", message_json="{bad"), grpc.StatusCode.INVALID_ARGUMENT,
         "message_json is not JSON"),
        (lambda: ask(agent_type="cart", key="k", wait=-1), grpc.StatusCode.INVALID_ARGUMENT, "wait"),
        (lambda: stub.AskAgent(hive_pb2.AskAgentRequest(agent_type="cart", key="k"), metadata=auth(api.read_key),
                               timeout=30), grpc.StatusCode.PERMISSION_DENIED, "admin key"),
        (lambda: stub.GetAgent(hive_pb2.GetAgentRequest(agent_type="echo", key="k"), metadata=auth(api.read_key),
                               timeout=30), grpc.StatusCode.NOT_FOUND, "echo"),
        (lambda: stub.GetAgent(hive_pb2.GetAgentRequest(agent_type="cart", key="k"), timeout=30),
         grpc.StatusCode.UNAUTHENTICATED, "key"),
    ]
    for call, code, words in cases:
        with pytest.raises(grpc.RpcError) as failed:
            call()
        assert failed.value.code() == code, failed.value.details()
        assert words in failed.value.details()


# ---------------------------------------------------------------------- topics
def test_publish_subscribe_and_follow_a_topic(stub: hive_pb2_grpc.HiveStub, api: ApiServer, admin_client: object,
                                              unique_name: str, wait_until) -> None:
    topic = f"grpc.{unique_name}"
    created = admin_client.post("/v1/pools", json={"name": unique_name, "agent_type": "cart", "count": 1,  # type: ignore[attr-defined]
                                                   "subscriptions": [topic]})
    assert created.status_code == 201, created.text
    ann, cat = f"ann-{unique_name}", f"cat-{unique_name}"
    subscription = hive_pb2.SubscriptionRequest(topic=topic, agent_type="cart", key=ann)
    added = stub.Subscribe(subscription, metadata=auth(api.admin_key), timeout=30)
    assert (added.topic, added.agent_type, added.key, added.added) == (topic, "cart", ann, True)
    assert not stub.Subscribe(subscription, metadata=auth(api.admin_key), timeout=30).added

    publish = hive_pb2.PublishRequest(topic=topic, message_json='{"op": "add", "item": "coupon"}', source=cat,
                                      message_id=f"spring-{unique_name}")
    first = stub.Publish(publish, metadata=auth(api.admin_key), timeout=30)
    assert first.deliveries == 2 and len(first.task_ids) == 2 and not first.duplicate and first.topic == topic
    again = stub.Publish(publish, metadata=auth(api.admin_key), timeout=30)
    assert again.duplicate and list(again.task_ids) == list(first.task_ids) and again.sequence == first.sequence
    for task_id in first.task_ids:
        assert wait_until(lambda t=task_id: admin_client.get(f"/v1/tasks/{t}").json()["state"] == "succeeded", 30)  # type: ignore[attr-defined]
    for key in (ann, cat):
        agent = stub.GetAgent(hive_pb2.GetAgentRequest(agent_type="cart", key=key), metadata=auth(api.read_key),
                              timeout=30)
        assert json.loads(agent.state_json) == {"items": {"coupon": 1}}, key

    # Following: the message kept, then one published while following; resumed after the first.
    follow = stub.FollowTopic(hive_pb2.FollowTopicRequest(topic=topic), metadata=auth(api.read_key), timeout=60)
    kept = next(follow)
    assert (kept.kind, kept.sequence, kept.topic, kept.source, kept.message_id, kept.deliveries) == (
        "message", first.sequence, topic, cat, f"spring-{unique_name}", 2)
    assert json.loads(kept.message_json) == {"op": "add", "item": "coupon"} and kept.time > 0
    live = stub.Publish(hive_pb2.PublishRequest(topic=topic, message_json='"hello"'), metadata=auth(api.admin_key),
                        timeout=30)
    assert live.deliveries == 1  # ann only: no source
    arrived = next(follow)
    assert (arrived.kind, arrived.sequence, json.loads(arrived.message_json), arrived.source) == (
        "message", live.sequence, "hello", "")
    follow.cancel()
    resumed = stub.FollowTopic(hive_pb2.FollowTopicRequest(topic=topic, after=first.sequence),
                               metadata=auth(api.read_key), timeout=60)
    assert next(resumed).sequence == live.sequence
    resumed.cancel()

    removed = stub.Unsubscribe(subscription, metadata=auth(api.admin_key), timeout=30)
    assert removed.removed and not removed.added
    assert not stub.Unsubscribe(subscription, metadata=auth(api.admin_key), timeout=30).removed
    assert stub.Publish(hive_pb2.PublishRequest(topic=topic, message_json="1"), metadata=auth(api.admin_key),
                        timeout=30).deliveries == 0
    admin_client.delete(f"/v1/pools/{unique_name}")  # type: ignore[attr-defined]


def test_topic_calls_map_errors_to_status_codes(stub: hive_pb2_grpc.HiveStub, api: ApiServer) -> None:
    admin, read = auth(api.admin_key), auth(api.read_key)
    cases = [
        (lambda: stub.Publish(hive_pb2.PublishRequest(topic="no spaces"), metadata=admin, timeout=30),
         grpc.StatusCode.INVALID_ARGUMENT, "a topic is 1 to 200 letters, digits or _ . : -"),
        (lambda: stub.Publish(hive_pb2.PublishRequest(topic="t", message_json="{bad"), metadata=admin, timeout=30),
         grpc.StatusCode.INVALID_ARGUMENT, "message_json is not JSON"),
        (lambda: stub.Publish(hive_pb2.PublishRequest(topic="t", source="k" * 257), metadata=admin, timeout=30),
         grpc.StatusCode.INVALID_ARGUMENT, "at most 256"),
        (lambda: stub.Publish(hive_pb2.PublishRequest(topic="t"), metadata=read, timeout=30),
         grpc.StatusCode.PERMISSION_DENIED, "admin key"),
        (lambda: stub.Publish(hive_pb2.PublishRequest(topic="t"), timeout=30),
         grpc.StatusCode.UNAUTHENTICATED, "key"),
        (lambda: stub.Subscribe(hive_pb2.SubscriptionRequest(topic="t", agent_type="echo", key="k"), metadata=admin,
                                timeout=30), grpc.StatusCode.INVALID_ARGUMENT, "agent type 'echo' is not virtual"),
        (lambda: stub.Subscribe(hive_pb2.SubscriptionRequest(topic="t", agent_type="", key="k"), metadata=admin,
                                timeout=30), grpc.StatusCode.INVALID_ARGUMENT, "agent_type"),
        (lambda: stub.Subscribe(hive_pb2.SubscriptionRequest(topic="t/x", agent_type="cart", key="k"),
                                metadata=admin, timeout=30), grpc.StatusCode.INVALID_ARGUMENT, "a topic is"),
        (lambda: stub.Unsubscribe(hive_pb2.SubscriptionRequest(topic="", agent_type="cart", key="k"),
                                  metadata=admin, timeout=30), grpc.StatusCode.INVALID_ARGUMENT, "a topic is"),
        (lambda: stub.Unsubscribe(hive_pb2.SubscriptionRequest(topic="t", agent_type="cart", key="k"),
                                  metadata=read, timeout=30), grpc.StatusCode.PERMISSION_DENIED, "admin key"),
        (lambda: list(stub.FollowTopic(hive_pb2.FollowTopicRequest(topic="bad topic"), metadata=read, timeout=30)),
         grpc.StatusCode.INVALID_ARGUMENT, "a topic is"),
        (lambda: list(stub.FollowTopic(hive_pb2.FollowTopicRequest(topic="t"), timeout=30)),
         grpc.StatusCode.UNAUTHENTICATED, "key"),
    ]
    for call, code, words in cases:
        with pytest.raises(grpc.RpcError) as failed:
            call()
        assert failed.value.code() == code, failed.value.details()
        assert words in failed.value.details()
