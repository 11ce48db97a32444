"""Virtual agents through the HTTP app, without Ray: what a message becomes, what a state reads as.

The app is built over a fake orchestrator that runs one virtual type, ``cart``
(and one ordinary type, ``echo``); the live API is tested in
``tests/integration/test_api_http.py`` and ``test_api_grpc.py``.
"""

from __future__ import annotations

import pickle
import sys
import types
import warnings
from typing import Any

import pytest

from hive_ray._errors import ConfigurationError, UnknownAgentTypeError, UnknownPoolError

PROBLEM = "application/problem+json"
ADMIN = {"Authorization": "Bearer admin-key"}
READ = {"Authorization": "Bearer read-key"}


class FakeOrchestrator:
    """``cart`` is virtual; its states are pickled, as the orchestrator answers them."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[Any, ...]]] = []
        self.states: dict[str, Any] = {}
        self.outcome: tuple[str, Any, Any] = ("succeeded", {"count": 2}, None)
        self.more: dict[str, Any] = {}  # fields agent_state answers beside the documented ones

    async def __call__(self, method: str, *args: Any) -> Any:
        self.calls.append((method, args))
        if method == "agent_state":
            agent_type, key = args
            if agent_type != "cart":
                raise UnknownAgentTypeError(f"no pool runs virtual agent type {agent_type!r}; running "
                                            "virtual types: cart. Spawn one first: hive.spawn(YourVirtualAgent)")
            saved = key in self.states
            return {"agent_type": "cart", "key": key, "pool": "carts", "owner": "carts-0",
                    "version": 3 if saved else 0,
                    "state": self.states[key] if saved else None, "activation": None, **self.more}
        if method in ("submit", "run") and args[0].get("affinity_key") is None and (
                args[0].get("agent_type") == "cart" or args[0].get("pool") == "carts"):
            raise ConfigurationError("agent type 'cart' is virtual: each message goes to one agent, named by "
                                     "its key")  # the orchestrator's refusal, in words alone
        if method == "submit":
            return {"task_id": "t-1", "pool": "carts", "state": "queued"}
        if method == "run":
            return "t-1", self.outcome
        if method == "pool":
            if args[0] not in ("carts", "echo"):
                raise UnknownPoolError(pool=args[0], known=["carts", "echo"])
            virtual = {"active": 0} if args[0] == "carts" else None
            return {"name": args[0], "agent_type": "cart", "desired": 2, "virtual": virtual}
        raise AssertionError(f"the orchestrator should not be asked {method}{args}")

    def of(self, method: str) -> list[tuple[Any, ...]]:
        return [args for name, args in self.calls if name == method]


@pytest.fixture
def orchestrator() -> FakeOrchestrator:
    return FakeOrchestrator()


@pytest.fixture
def client(orchestrator: FakeOrchestrator) -> Any:
    from hive_ray._api._http import build_http_app
    from hive_ray._api._keys import KeyRing, key_digests
    from hive_ray._api._service import ApiService
    from hive_ray._settings import Settings

    keys = KeyRing(key_digests({"admin-key": "admin", "read-key": "read"}, None))
    service = ApiService(Settings(api_max_wait_seconds=10), orchestrator, keys)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # starlette's note about its httpx-based test client
        from starlette.testclient import TestClient

        yield TestClient(build_http_app(service))


def problem(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    return response.json()


# ---------------------------------------------------------------------- messages
def test_a_message_is_a_task_of_the_type_with_the_key_as_its_affinity_key(
        client: Any, orchestrator: FakeOrchestrator) -> None:
    message = {"op": "add", "item": "apple", "quantity": 2}
    accepted = client.post("/v1/agents/cart/user 42/messages", json={"message": message, "message_id": "m-1"},
                           headers=ADMIN)
    assert accepted.status_code == 202, accepted.text
    assert accepted.json() == {"task_id": "t-1", "pool": "carts", "state": "queued", "replayed": False}
    assert accepted.headers["location"] == "/v1/tasks/t-1"
    [(template, payload)] = orchestrator.of("submit")
    assert payload == message
    assert (template["agent_type"], template["affinity_key"], template["idempotency_key"]) == (
        "cart", "user 42", "m-1")
    assert template["pool"] is None and template["capability"] is None

    answered = client.post("/v1/agents/cart/user 42/messages", params={"wait": 5}, json={"message": message},
                           headers=ADMIN)
    assert answered.status_code == 200
    assert answered.json() == {"task_id": "t-1", "state": "succeeded", "result": {"count": 2}, "error": None}
    [(template, payload, wait)] = orchestrator.of("run")
    assert wait == 5 and template["idempotency_key"] is None
    # The type was checked once: the replica remembers that it is virtual.
    assert orchestrator.of("agent_state") == [("cart", "user 42")]


def test_a_message_not_answered_within_wait_is_a_504_that_says_where_to_look(
        client: Any, orchestrator: FakeOrchestrator) -> None:
    orchestrator.outcome = ("pending", None, None)
    late = client.post("/v1/agents/cart/k/messages", params={"wait": 0.5}, json={"message": 1}, headers=ADMIN)
    body = problem(late, 504)
    assert late.headers["location"] == "/v1/tasks/t-1" and "GET /v1/tasks/t-1" in body["detail"]


def test_messages_to_types_no_pool_runs_as_virtual_agents_are_404_and_never_sent(
        client: Any, orchestrator: FakeOrchestrator) -> None:
    for agent_type in ("echo", "no-such-type"):
        body = problem(client.post(f"/v1/agents/{agent_type}/k/messages", json={"message": 1}, headers=ADMIN), 404)
        assert f"no pool runs virtual agent type {agent_type!r}" in body["detail"] and "cart" in body["detail"]
        problem(client.get(f"/v1/agents/{agent_type}/k", headers=READ), 404)
    assert orchestrator.of("submit") == orchestrator.of("run") == []


def test_the_idempotency_key_header_is_the_message_id(client: Any, orchestrator: FakeOrchestrator) -> None:
    path = "/v1/agents/cart/k/messages"
    first = client.post(path, json={"message": {"op": "view"}}, headers={**ADMIN, "Idempotency-Key": "m-9"})
    again = client.post(path, json={"message": {"op": "view"}, "message_id": "m-9"}, headers=ADMIN)
    assert not first.json()["replayed"] and again.json()["replayed"]
    assert [template["idempotency_key"] for template, _ in orchestrator.of("submit")] == ["m-9", "m-9"]
    other = problem(client.post(path, json={"message": {"op": "checkout"}, "message_id": "m-9"}, headers=ADMIN), 409)
    assert "before with another message" in other["detail"]
    differ = problem(client.post(path, json={"message": 1, "message_id": "a"},
                                 headers={**ADMIN, "Idempotency-Key": "b"}), 422)
    assert differ["errors"] == [{"field": "message_id", "in": "body", "code": "fields_disagree",
                                 "message": "differs from the Idempotency-Key header"}]


@pytest.mark.parametrize(("path", "body", "field"), [
    ("/v1/agents/cart/" + "k" * 257 + "/messages", {"message": 1}, "key"),
    ("/v1/agents/cart/k/messages", {}, "message"),
    ("/v1/agents/cart/k/messages", {"message": 1, "message_id": ""}, "message_id"),
    ("/v1/agents/cart/k/messages", {"message": 1, "to": "k"}, "to"),
])
def test_malformed_messages_are_a_422_naming_the_field(client: Any, orchestrator: FakeOrchestrator,
                                                       path: str, body: dict[str, Any], field: str) -> None:
    answer = problem(client.post(path, json=body, headers=ADMIN), 422)
    assert field in {error["field"] for error in answer["errors"]}
    assert orchestrator.calls == []


def test_messages_need_an_admin_key_and_states_a_read_key(client: Any, orchestrator: FakeOrchestrator) -> None:
    problem(client.post("/v1/agents/cart/k/messages", json={"message": 1}), 401)
    assert "admin key" in problem(client.post("/v1/agents/cart/k/messages", json={"message": 1},
                                              headers=READ), 403)["detail"]
    problem(client.get("/v1/agents/cart/k"), 401)
    assert client.get("/v1/agents/cart/k", headers=READ).status_code == 200
    assert client.get("/v1/agents/cart/k/messages", headers=ADMIN).headers["allow"] == "POST"


# ---------------------------------------------------------------------- states
def test_a_state_is_unpickled_and_answered_as_json(client: Any, orchestrator: FakeOrchestrator) -> None:
    assert client.get("/v1/agents/cart/new", headers=READ).json() == {
        "agent_type": "cart", "key": "new", "pool": "carts", "owner": "carts-0", "version": 0, "state": None,
        "activation": None, "reminders": []}
    orchestrator.states["user-42"] = pickle.dumps({"items": {"apple": 2}, "orders": 1})
    answer = client.get("/v1/agents/cart/user-42", headers=READ)
    assert answer.status_code == 200 and answer.headers["content-type"] == "application/json"
    assert answer.json()["state"] == {"items": {"apple": 2}, "orders": 1} and answer.json()["version"] == 3


@pytest.mark.parametrize(("state", "shown"), [
    ({"seen": {3}}, {"seen": "{3}"}),  # a value JSON cannot hold: its str(), as in results
    ({("a", 1): 2}, "{('a', 1): 2}"),  # keys JSON cannot hold: the whole state's repr()
])
def test_what_json_cannot_hold_is_shown_as_text(client: Any, orchestrator: FakeOrchestrator,
                                               state: Any, shown: Any) -> None:
    orchestrator.states["k"] = pickle.dumps(state)
    assert client.get("/v1/agents/cart/k", headers=READ).json()["state"] == shown


def test_a_state_the_api_cannot_unpickle_is_a_500_that_says_how_to_read_it(
        client: Any, orchestrator: FakeOrchestrator, monkeypatch: pytest.MonkeyPatch) -> None:
    # A state holding an instance of a class from a module the replica does not have.
    module = types.ModuleType("only_where_the_agents_run")
    module.Item = type("Item", (), {"__module__": module.__name__})  # type: ignore[attr-defined]
    with monkeypatch.context() as patched:
        patched.setitem(sys.modules, module.__name__, module)
        orchestrator.states["k"] = pickle.dumps({"items": [module.Item()]})  # type: ignore[attr-defined]
    body = problem(client.get("/v1/agents/cart/k", headers=READ), 500)
    assert "ModuleNotFoundError" in body["detail"] and "hive.agent(type, key).state()" in body["detail"]
    assert "cart/k (version 3)" in body["detail"]


def test_the_document_states_both_operations(client: Any) -> None:
    document = client.get("/openapi.json", headers=READ).json()
    send = document["paths"]["/v1/agents/{agent_type}/{key}/messages"]["post"]
    assert {"200", "202", "404", "409", "422", "504"} <= set(send["responses"])
    assert send["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("/AgentMessage")
    read = document["paths"]["/v1/agents/{agent_type}/{key}"]["get"]
    assert read["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith("/AgentState")
    key = next(p for p in read["parameters"] if p["name"] == "key")["schema"]
    assert (key["minLength"], key["maxLength"]) == (1, 256)
    assert document["components"]["schemas"]["AgentState"]["required"] == [
        "agent_type", "key", "pool", "owner", "version", "state", "activation"]



def test_only_the_documented_fields_are_answered(client: Any, orchestrator: FakeOrchestrator) -> None:
    from hive_ray._api._service import AGENT_FIELDS

    orchestrator.more = {"reminders": [{"name": "nudge", "due_at": 1.0, "period_seconds": None}],
                         "internal": b"x"}  # what the orchestrator adds beyond them is not API
    answer = client.get("/v1/agents/cart/k", headers=READ).json()
    assert tuple(answer) == AGENT_FIELDS and answer["reminders"][0]["name"] == "nudge"


# ---------------------------------------------------------------------- rules no schema can state
@pytest.mark.parametrize(("target", "field"), [({"agent_type": "cart"}, "agent_type"), ({"pool": "carts"}, "pool")])
@pytest.mark.parametrize("wait", [None, 5])
def test_a_task_for_virtual_agents_without_a_key_is_a_422_naming_both_fields(
        client: Any, orchestrator: FakeOrchestrator, target: dict[str, str], field: str, wait: int | None) -> None:
    answer = problem(client.post("/v1/tasks", params={"wait": wait} if wait else {}, json=target, headers=ADMIN), 422)
    assert [(e["field"], e["code"]) for e in answer["errors"]] == [(field, "fields_disagree"),
                                                                   ("affinity_key", "fields_disagree")]
    assert "runs virtual agents: each message goes to one agent, named by its key" in answer["detail"]
    assert "/v1/agents/{agent_type}/{key}/messages" in answer["detail"]
    keyed = client.post("/v1/tasks", json={**target, "affinity_key": "user-42"}, headers=ADMIN)
    assert keyed.status_code == 202


def test_a_virtual_pool_keeps_its_size_and_another_count_is_a_409(client: Any, orchestrator: FakeOrchestrator) -> None:
    answer = problem(client.patch("/v1/pools/carts", json={"count": 3}, headers=ADMIN), 409)
    assert "pool 'carts' runs virtual agents: its 2 shard(s) own their keys" in answer["detail"]
    assert answer["pool"] == "carts" and "delete the pool and create it again" in answer["detail"]
    problem(client.patch("/v1/pools/nope", json={"count": 3}, headers=ADMIN), 404)
    assert [name for name, _ in orchestrator.calls] == ["pool", "pool"]  # no scale was asked

