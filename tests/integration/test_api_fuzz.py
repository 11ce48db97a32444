# ruff: noqa: F811 - the shared fixtures are imported, and pytest passes them as arguments
"""A property-based fuzz of the OpenAPI schema (schemathesis): no input makes the API answer 5xx.

Schemathesis generates requests from ``/openapi.json`` and sends them over
real HTTP with an admin key. Pool changes are left out: a generated valid
spec could start thousands of agents. Every answer must be a non-5xx, and
every error a problem+json document.
"""

from __future__ import annotations

import pytest

from tests.integration.test_api_support import ApiServer, api  # noqa: F401

pytestmark = pytest.mark.ray

FUZZED = [("GET", "/v1/pools"), ("GET", "/v1/pools/{name}"), ("GET", "/v1/tasks"),
          ("GET", "/v1/tasks/{task_id}"), ("POST", "/v1/tasks"), ("POST", "/v1/tasks/{task_id}/cancel"),
          ("GET", "/readyz"), ("GET", "/healthz")]


def test_generated_requests_never_cause_a_server_error(api: ApiServer) -> None:
    schemathesis = pytest.importorskip("schemathesis")
    import httpx

    schema = schemathesis.openapi.from_url(api.base_url + "/openapi.json")
    failures: list[str] = []
    statuses: list[int] = []
    with httpx.Client(base_url=api.base_url, headers=api.headers("admin"), timeout=30) as client:
        for method, path in FUZZED:
            _fuzz(client, api.base_url, schema[path][method], f"{method} {path}", failures, statuses)
    assert failures == []
    # Both valid requests (200) and each kind of refusal were reached, not only one of them.
    assert {200, 404, 422} <= set(statuses), sorted(set(statuses))


def _fuzz(client: object, base_url: str, operation: object, label: str,
          failures: list[str], statuses: list[int]) -> None:
    from hypothesis import HealthCheck, given, settings

    @given(case=operation.as_strategy())  # type: ignore[attr-defined]
    @settings(max_examples=40, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    def check(case: object) -> None:
        kwargs = case.as_transport_kwargs(base_url=base_url)  # type: ignore[attr-defined]
        params = kwargs.get("params")
        if label == "POST /v1/tasks" and isinstance(params, dict) and params.get("wait") is not None:
            params["wait"] = min(float(params["wait"]), 0.5)  # bounded test time; 422 stays 422 below 0
        headers = {k: v for k, v in (kwargs.get("headers") or {}).items() if k.lower() != "authorization"}
        response = client.request(kwargs["method"], kwargs["url"], params=params,  # type: ignore[attr-defined]
                                  headers=headers, content=_content(kwargs))
        statuses.append(response.status_code)
        if response.status_code >= 500:
            failures.append(f"{label} -> {response.status_code}: {response.text[:300]}")
        elif response.status_code >= 400:
            assert response.headers["content-type"] == "application/problem+json", response.text

    check()


def _content(kwargs: dict[str, object]) -> bytes | None:
    import json

    if "json" in kwargs:
        return json.dumps(kwargs["json"]).encode()
    data = kwargs.get("data")
    if isinstance(data, str):
        return data.encode()
    return data if isinstance(data, bytes) else None
