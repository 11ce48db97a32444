"""The HTTP app without Ray: its OpenAPI document, its refusals, and who may read what.

The app is built over a fake orchestrator call; nothing here starts Ray or
Serve. The live API is fuzzed from the same document by
``tests/integration/test_api_fuzz.py``.
"""

from __future__ import annotations

import warnings
from typing import Any

import pytest

from hive_ray._errors import UnknownPoolError

PROBLEM = "application/problem+json"
ADMIN = {"Authorization": "Bearer admin-key"}
READ = {"Authorization": "Bearer read-key"}


@pytest.fixture
def client() -> Any:
    from hive_ray._api._http import build_http_app
    from hive_ray._api._keys import KeyRing, key_digests
    from hive_ray._api._service import ApiService
    from hive_ray._settings import Settings

    pools = {"echo": {"name": "echo", "agent_type": "echo", "desired": 2}}

    async def call(method: str, *args: Any) -> Any:
        if method == "pool":
            if args[0] not in pools:
                raise UnknownPoolError(pool=args[0], known=sorted(pools))
            return pools[args[0]]
        raise AssertionError(f"the orchestrator should not be asked {method}{args}")

    settings = Settings(max_agents_per_pool=3)
    service = ApiService(settings, call, KeyRing(key_digests({"admin-key": "admin", "read-key": "read"}, None)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # starlette's note about its httpx-based test client
        from starlette.testclient import TestClient

        yield TestClient(build_http_app(service))


def problem(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    return response.json()


def test_the_document_needs_a_key_and_the_pages_do_not(client: Any) -> None:
    problem(client.get("/openapi.json"), 401)
    assert client.get("/openapi.json", headers=READ).status_code == 200
    for page in ("/docs", "/dashboard"):
        answer = client.get(page)
        assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/html")
        # The pages carry no data: they ask for a key and fetch with it.
        assert 'id="login-form"' in answer.text and "sessionStorage" in answer.text
        assert "/v1/pools" not in answer.text


def test_every_error_is_documented_as_problem_json(client: Any) -> None:
    document = client.get("/openapi.json", headers=READ).json()
    assert "HTTPValidationError" not in document["components"]["schemas"]
    seen = set()
    for path, item in document["paths"].items():
        for method, operation in item.items():
            statuses = {int(status) for status in operation["responses"]}
            for status in statuses:
                if status >= 400:
                    content = operation["responses"][str(status)]["content"]
                    assert list(content) == [PROBLEM], (method, path, status)
                    seen.add(status)
            if operation.get("security"):
                assert {401, 403} <= statuses, (method, path)
            if "requestBody" in operation:
                assert {400, 413, 422} <= statuses, (method, path)
            if path != "/healthz":
                assert 503 in statuses, (method, path)
    assert {400, 401, 403, 404, 409, 413, 422, 429, 503, 504} <= seen
    assert "400" in document["paths"]["/v1/pools"]["post"]["responses"]


def test_the_submit_body_says_exactly_one_target(client: Any) -> None:
    document = client.get("/openapi.json", headers=READ).json()
    spec = document["components"]["schemas"]["TaskSpec"]
    assert [branch["required"] for branch in spec["oneOf"]] == [["agent_type"], ["capability"], ["pool"]]
    for body in ({}, {"payload": 1}, {"pool": "echo", "agent_type": "echo"}, {"pool": ""}):
        answer = problem(client.post("/v1/tasks", json=body, headers=ADMIN), 422)
        assert answer["errors"], answer


def test_pool_sizes_are_integers_up_to_the_setting(client: Any) -> None:
    document = client.get("/openapi.json", headers=READ).json()
    schemas = document["components"]["schemas"]
    assert schemas["PoolScale"]["properties"]["count"] == {
        **schemas["PoolScale"]["properties"]["count"], "type": "integer", "maximum": 3, "minimum": 0}
    assert schemas["PoolRequest"]["properties"]["count"]["maximum"] == 3
    assert schemas["AutoscaleRequest"]["properties"]["max_agents"]["maximum"] == 3
    as_float = problem(client.patch("/v1/pools/echo", json={"count": 22605.0}, headers=ADMIN), 422)
    assert as_float["errors"] == [{"field": "count", "in": "body", "code": "int_from_float",
                                   "message": "write 22605.0 as the integer 22605: this field takes "
                                              "integers only"}]
    too_many = problem(client.patch("/v1/pools/echo", json={"count": 22605}, headers=ADMIN), 422)
    assert "above the max_agents_per_pool setting (3)" in too_many["detail"]
    problem(client.patch("/v1/pools/echo", json={"count": "2"}, headers=ADMIN), 422)
    # Adding to an existing pool counts what it has (2 + 2 > 3), before any agent starts.
    added = problem(client.post("/v1/pools", json={"name": "echo", "agent_type": "echo", "count": 2},
                                headers=ADMIN), 409)
    assert "would make 4" in added["detail"]
    other = problem(client.post("/v1/pools", json={"name": "echo", "agent_type": "sleep"}, headers=ADMIN), 409)
    assert "already runs agent type 'echo'" in other["detail"]


@pytest.mark.parametrize(("body", "fields"), [
    ({"restart": {"backoff_initial_seconds": 20}},
     ["restart.backoff_initial_seconds", "restart.backoff_max_seconds"]),
    ({"retry": {"backoff_initial_seconds": 9}}, ["retry.backoff_initial_seconds", "retry.backoff_max_seconds"]),
    ({"autoscale": {"min_agents": 3, "max_agents": 2}}, ["autoscale.min_agents", "autoscale.max_agents"]),
])
def test_fields_valid_alone_but_not_together_are_a_422_naming_them(
        client: Any, body: dict[str, Any], fields: list[str]) -> None:
    answer = problem(client.post("/v1/pools", json={"name": "new", "agent_type": "echo", **body},
                                 headers=ADMIN), 422)
    assert [error["field"] for error in answer["errors"]] == fields
    assert {error["code"] for error in answer["errors"]} == {"fields_disagree"}
    assert all(field in answer["detail"] for field in fields)


@pytest.mark.parametrize("body", [
    {"num_cpus": 0.00001}, {"resources": {"CPU": 1}}, {"resources": {"slot": -1}},
    {"retry": {"never_retry": [" ValueError"]}}, {"restart": {"window_seconds": float("inf")}},
    {"health_check": "yes"}, {"max_queue": 1.5},
    {"num_gpus": 1.5}, {"num_gpus": 0.5, "placement": "packed", "agents_per_host": 3},  # Ray: 1.5 GPUs, no
])
def test_what_ray_or_the_policies_would_refuse_is_a_422_here(client: Any, body: dict[str, Any]) -> None:
    import json

    content = json.dumps({"name": "new", "agent_type": "echo", **body})  # Infinity as JSON allows
    problem(client.post("/v1/pools", content=content, headers={**ADMIN, "content-type": "application/json"}), 422)


def test_subscriptions_of_a_type_that_is_not_virtual_are_a_422_naming_both_fields(client: Any) -> None:
    answer = problem(client.post("/v1/pools", json={"name": "new", "agent_type": "echo", "subscriptions": ["news"]},
                                 headers=ADMIN), 422)
    assert [(e["field"], e["code"]) for e in answer["errors"]] == [("agent_type", "fields_disagree"),
                                                                   ("subscriptions", "fields_disagree")]
    assert "agent type 'echo' is not virtual" in answer["detail"]


def test_malformed_bodies_are_400_and_405_lists_every_method(client: Any) -> None:
    headers = {**ADMIN, "content-type": "application/json"}
    assert "not valid JSON" in problem(client.post("/v1/tasks", content=b"{not json", headers=headers), 400)["detail"]
    problem(client.post("/v1/tasks", content=b"\xff\xfe", headers=headers), 400)
    for method, path, allowed in (("OPTIONS", "/v1/pools/echo", "DELETE, GET, PATCH"),
                                  ("PUT", "/v1/pools", "GET, POST"),
                                  ("DELETE", "/v1/tasks/abc", "GET")):
        answer = client.request(method, path, headers=ADMIN)
        problem(answer, 405)
        assert answer.headers["allow"] == allowed, (method, path)


def test_every_constraint_is_stated_in_json_schema_terms(client: Any) -> None:
    """Pydantic's own words (ge, le...) in the document would be ignored by clients and fuzzers."""
    document = client.get("/openapi.json", headers=READ).json()
    stray: list[str] = []

    def walk(node: Any, where: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key in ("ge", "le", "gt", "lt", "min_length", "max_length"):
                    stray.append(f"{where}.{key}")
                walk(value, f"{where}.{key}")
        elif isinstance(node, list):
            for index, value in enumerate(node):
                walk(value, f"{where}[{index}]")

    walk(document, "$")
    assert stray == []
    memory = document["components"]["schemas"]["PoolRequest"]["properties"]["memory"]["anyOf"][0]
    assert memory == {"type": "integer", "exclusiveMinimum": 0}
