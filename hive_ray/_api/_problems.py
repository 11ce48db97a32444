"""RFC 9457 problem details: every error the API answers is ``application/problem+json``.

A problem names what went wrong (``title``), this occurrence (``detail``, the
hive error's message, which says how to fix it) and, for invalid input, each
offending field (``errors``). Tracebacks never leave the replica: an
unexpected error is logged there and answered with a bare 500 problem.
"""

from __future__ import annotations

import json
import logging
import math
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from hive_ray._errors import (
    ConfigurationError,
    HiveConnectionError,
    HiveError,
    IdempotencyConflictError,
    JournalError,
    NoRouteError,
    OverloadedError,
    ResultLostError,
    TaskNotFoundError,
    UnknownAgentTypeError,
    UnknownPoolError,
)

logger = logging.getLogger("hive_ray.api")

PROBLEM_TYPE = "application/problem+json"
_TYPE_BASE = "https://hive-ray.dev/problems/"

TITLES = {
    400: "Bad request",
    401: "Missing or unknown API key",
    403: "The API key's scope does not allow this",
    404: "Not found",
    405: "Method not allowed",
    409: "Conflict",
    410: "Gone",
    413: "Request body too large",
    415: "Unsupported media type",
    422: "Invalid request",
    429: "Too many requests",
    500: "Internal error",
    503: "Service unavailable",
    504: "The wait ran out",
}

#: Which status each hive error means at the API boundary. A well-formed request that names
#: something that does not exist (a pool, an agent type, a capability no pool offers, a task)
#: is a 404, whose problem lists what does exist; 422 is kept for malformed input.
_STATUS: list[tuple[type[HiveError], int]] = [
    (UnknownPoolError, 404),
    (TaskNotFoundError, 404),
    (UnknownAgentTypeError, 404),
    (NoRouteError, 404),
    (IdempotencyConflictError, 409),
    (ResultLostError, 410),
    (OverloadedError, 429),
    (ConfigurationError, 422),
    (HiveConnectionError, 503),
    # The orchestrator cannot record tasks (disk full, journal locked, I/O errors): nothing is
    # accepted until an admin fixes it; the problem's `reason` says which.
    (JournalError, 503),
]


class ProblemError(Exception):
    """Raised by route code to answer a problem; carries everything the body needs."""

    def __init__(self, status: int, detail: str, *, slug: str | None = None,
                 headers: dict[str, str] | None = None, **extensions: Any) -> None:
        super().__init__(status, detail, slug, headers, extensions)
        self.status = status
        self.detail = detail
        self.slug = slug
        self.headers = headers or {}
        self.extensions = extensions


def problem(status: int, detail: str, *, instance: str | None = None, slug: str | None = None,
            headers: dict[str, str] | None = None, **extensions: Any) -> Response:
    body: dict[str, Any] = {
        "type": _TYPE_BASE + (slug or str(status)),
        "title": TITLES.get(status, "Error"),
        "status": status,
        "detail": detail,
    }
    if instance:
        body["instance"] = instance
    body.update(extensions)
    return Response(json.dumps(body, default=str), status_code=status, media_type=PROBLEM_TYPE,
                    headers=headers)


def from_header_or_body(header: str | None, body: str | None, field: str) -> str | None:
    """The id a request gives in the ``Idempotency-Key`` header or in its body's ``field``.

    Raises:
        ProblemError: 422 when it gives both and they differ.
    """
    if header is None:
        return body
    if body not in (None, header):
        raise ProblemError(422, f"the Idempotency-Key header and the body's {field} differ; send one of them",
                           slug="validation", errors=[{"field": field, "in": "body",
                                                       "message": "differs from the Idempotency-Key header",
                                                       "code": "fields_disagree"}])
    return header


def status_of(error: HiveError) -> int:
    for kind, status in _STATUS:
        if isinstance(error, kind):
            return status
    return 500


def from_hive_error(error: HiveError, instance: str | None = None) -> Response:
    status = status_of(error)
    headers: dict[str, str] = {}
    extensions: dict[str, Any] = {"error": type(error).__name__}
    if isinstance(error, OverloadedError):
        headers["Retry-After"] = str(max(1, math.ceil(error.retry_after)))
        extensions["retry_after"] = error.retry_after
    elif isinstance(error, HiveConnectionError):
        headers["Retry-After"] = "2"
    elif isinstance(error, JournalError):
        headers["Retry-After"] = "30"  # a disk to free or a lock to release: not a blip
        extensions["reason"] = error.reason
    if status == 500:
        logger.error("unmapped hive error %s: %s", type(error).__name__, error)
    for name in ("pool", "task_id", "agent_type", "known"):
        if name in error.details:
            extensions[name] = error.details[name]
    return problem(status, error.message, instance=instance, slug=_slug(type(error).__name__),
                   headers=headers, **extensions)


def field_errors(errors: Any) -> list[dict[str, str]]:
    """Pydantic/FastAPI validation errors as ``{"field", "in", "message", "code"}``, field dotted.

    ``code`` is pydantic's error type (``missing``, ``int_type``, ``less_than_equal``...).

    An error about fields that disagree (``fields_disagree``, from the models'
    cross-field checks) is listed once per field it names.
    """
    listed = []
    for error in errors:
        location = [str(part) for part in error.get("loc", ())]
        if location and location[0] in ("body", "query", "path", "header"):
            where, location = location[0], location[1:]
        else:
            where = "body"
        message = str(error.get("msg", "invalid")).removeprefix("Value error, ")
        kind = str(error.get("type", ""))
        if kind.endswith("_type") and "input" in error:
            shown = repr(error["input"])
            message += f", not {shown if len(shown) <= 40 else shown[:39] + '…'}"
        fields = (error.get("ctx") or {}).get("fields") if kind == "fields_disagree" else None
        for name in fields or [None]:
            dotted = ".".join([*location, name] if name else location)
            listed.append({"field": dotted or where, "in": where, "message": message, "code": kind or "invalid"})
    return listed


def validation_problem(errors: Any, instance: str | None = None) -> Response:
    listed = field_errors(errors)
    names = sorted({e["field"] for e in listed})
    fields_of: dict[str, list[str]] = {}
    for each in listed:
        fields_of.setdefault(each["message"], []).append(each["field"])
    detail = f"invalid {', '.join(names)}: " + "; ".join(
        message if all(field in message for field in fields) else f"{', '.join(fields)}: {message}"
        for message, fields in fields_of.items())
    return problem(422, detail[:2000], instance=instance, slug="validation", errors=listed)


def install(app: Any) -> None:
    """Answer every error of ``app`` as a problem."""
    from fastapi.exceptions import RequestValidationError
    from pydantic import ValidationError
    from starlette.exceptions import HTTPException

    async def on_problem(request: Request, error: ProblemError) -> Response:
        return problem(error.status, error.detail, instance=request.url.path, slug=error.slug,
                       headers=error.headers, **error.extensions)

    async def on_http(request: Request, error: HTTPException) -> Response:
        detail = error.detail if isinstance(error.detail, str) else json.dumps(error.detail)
        headers = dict(error.headers or {})
        if error.status_code == 405:
            # Starlette names only the first route that matched the path; a path served by
            # several routes (GET, PATCH and DELETE /v1/pools/{name}) allows all their methods.
            allowed = allowed_methods(request)
            headers["Allow"] = ", ".join(allowed)
            detail = f"{request.method} is not allowed on {request.url.path}; use {', '.join(allowed)}"
        elif error.status_code == 400 and detail == "There was an error parsing the body":
            detail = "the body could not be read as JSON (is it UTF-8?); send a JSON object"
        return problem(error.status_code, detail, instance=request.url.path, headers=headers)

    async def on_validation(request: Request, error: RequestValidationError) -> Response:
        errors = error.errors()
        if errors and all(each.get("type") == "json_invalid" for each in errors):
            where = errors[0].get("ctx", {}).get("error", "invalid JSON")
            return problem(400, f"the body is not valid JSON ({where}); send a JSON object",
                           instance=request.url.path, slug="malformed-body")
        return validation_problem(errors, instance=request.url.path)

    async def on_model_validation(request: Request, error: ValidationError) -> Response:
        return validation_problem(error.errors(), instance=request.url.path)

    async def on_hive(request: Request, error: HiveError) -> Response:
        return from_hive_error(error, instance=request.url.path)

    async def on_unexpected(request: Request, error: Exception) -> Response:
        logger.exception("unexpected error answering %s %s", request.method, request.url.path)
        return problem(500, "the server failed to answer this request; the error is in its log",
                       instance=request.url.path)

    app.add_exception_handler(ProblemError, on_problem)
    app.add_exception_handler(HTTPException, on_http)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(ValidationError, on_model_validation)
    app.add_exception_handler(HiveError, on_hive)
    app.add_exception_handler(Exception, on_unexpected)


def allowed_methods(request: Request) -> list[str]:
    """Every method some route of the app serves on the request's path."""
    from starlette.routing import Match

    methods: set[str] = set()
    for route in request.app.router.routes:
        match, _ = route.matches({**request.scope, "method": "GET"})
        route_methods = getattr(route, "methods", None)
        if match != Match.NONE and route_methods:
            methods |= set(route_methods)
    return sorted(methods)


def _slug(name: str) -> str:
    out = []
    for index, char in enumerate(name.removesuffix("Error")):
        if char.isupper() and index:
            out.append("-")
        out.append(char.lower())
    return "".join(out)
