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
    from hypothesis import HealthCheck, given, settings

    schema = schemathesis.openapi.from_url(api.base_url + "/openapi.json")
    failures: list[str] = []
    statuses: list[int] = []
    with httpx.Client(base_url=api.base_url, headers=api.headers("admin"), timeout=30) as client:
        for method, path in FUZZED:
            operation = schema[path][method]

            @given(case=operation.as_strategy())
            @settings(max_examples=40, deadline=None, database=None,
                      suppress_health_check=list(HealthCheck))
            def check(case: object) -> None:
                kwargs = case.as_transport_kwargs(base_url=api.base_url)  # type: ignore[attr-defined]
                if path == "/v1/tasks" and method == "POST":
                    kwargs.setdefault("params", {})
                    if isinstance(kwargs["params"], dict) and "wait" in kwargs["params"]:
                        kwargs["params"]["wait"] = min(float(kwargs["params"]["wait"] or 0.1), 0.5) or 0.1
                headers = {k: v for k, v in (kwargs.get("headers") or {}).items()
                           if k.lower() != "authorization"}
                response = client.request(kwargs["method"], kwargs["url"], params=kwargs.get("params"),
                                          headers=headers, content=_content(kwargs))
                statuses.append(response.status_code)
                if response.status_code >= 500:
                    failures.append(f"{method} {path} -> {response.status_code}: {response.text[:300]}")
                elif response.status_code >= 400:
                    assert response.headers["content-type"] == "application/problem+json", response.text

            check()
    assert failures == []
    assert len(set(statuses)) >= 4, f"the fuzz reached too few outcomes: {sorted(set(statuses))}"
    print("fuzz statuses:", {s: statuses.count(s) for s in sorted(set(statuses))})


def _content(kwargs: dict[str, object]) -> bytes | None:
    import json

    if "json" in kwargs:
        return json.dumps(kwargs["json"]).encode()
    data = kwargs.get("data")
    if isinstance(data, str):
        return data.encode()
    return data if isinstance(data, bytes) else None
