"""The OpenAPI document, made to say what the API really answers.

FastAPI documents every error as ``application/json`` with its own validation
shape; this API answers every error as an RFC 9457 ``application/problem+json``
document. :func:`openapi_document` takes FastAPI's document and states, per
operation, each error status it can answer (with the problem schema):

* every operation with a key: 401 (no or unknown key) and 403 (scope too small);
* every operation with parameters or a body: 422 (a parameter or field is invalid);
* every operation with a JSON body: 400 (the body is not JSON), 413 (too large);
* every operation that asks the orchestrator: 503 (it is not reachable);
* what each route declares besides (404, 409, 429, 504).

A test (``tests/integration/test_api_fuzz.py``) fuzzes the live API from this
document with every schemathesis check, so a status or media type that the
document does not state fails CI.
"""

from __future__ import annotations

from typing import Any

from hive_ray._api._problems import PROBLEM_TYPE, TITLES

#: Operations answered by the replica alone (no orchestrator call, so no 503).
_LOCAL = {("get", "/healthz")}
_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")

_DESCRIPTIONS = {
    400: "The body is not valid JSON.",
    401: "No API key, or an unknown one: send `Authorization: Bearer <key>`.",
    403: "The key's scope does not allow this (pool changes, submissions, messages to agents, "
         "publishing and subscribing need an admin key).",
    404: "The pool, agent type, capability or task named does not exist (for a virtual agent: no pool "
    "runs its type as virtual agents); the problem's `known` or detail lists what does, where that applies.",
    409: "Conflict with the current state: an Idempotency-Key (or a topic's message_id) reused with "
    "another body, or a pool that runs another agent type or would pass max_agents_per_pool.",
    413: "The body is larger than the api_max_body_bytes setting.",
    422: "A parameter or body field is invalid; the problem's `errors` names each one.",
    429: "The pool's queue is full (for a publish: a subscriber's pool); retry after the "
         "Retry-After header's seconds.",
    503: "The orchestrator is not reachable (starting or restarting; retry after a few seconds), "
         "or its journal cannot record tasks (`reason`: full, locked, io, ...; an admin must act).",
    504: "`wait` ran out before the task ended; the task keeps running.",
}


def openapi_document(document: dict[str, Any]) -> dict[str, Any]:
    """Rewrite FastAPI's OpenAPI ``document`` in place (and return it); see the module docstring."""
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    schemas.pop("HTTPValidationError", None)
    schemas.pop("ValidationError", None)
    for path, item in document.get("paths", {}).items():
        for method in _METHODS:
            operation = item.get(method)
            if operation is not None:
                _document_errors(method, path, operation)
    return document


def _document_errors(method: str, path: str, operation: dict[str, Any]) -> None:
    responses: dict[str, Any] = operation.setdefault("responses", {})
    statuses = {int(status) for status in responses if status.isdigit() and int(status) >= 400}
    if operation.get("security"):
        statuses |= {401, 403}
    if operation.get("parameters") or "requestBody" in operation:
        statuses.add(422)
    if "requestBody" in operation:
        statuses |= {400, 413}
    if (method, path) not in _LOCAL:
        statuses.add(503)
    for status in sorted(statuses):
        existing = responses.get(str(status), {})
        description = existing.get("description")
        if not description or description in ("Validation Error", "Successful Response"):
            description = _DESCRIPTIONS.get(status, TITLES.get(status, "Error"))
        responses[str(status)] = {
            "description": description,
            "content": {PROBLEM_TYPE: {"schema": {"$ref": "#/components/schemas/Problem"}}},
        }
