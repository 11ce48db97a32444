"""One pure-ASGI middleware: the request body limit (413) and HTTP metrics by route.

Pure ASGI rather than Starlette's ``BaseHTTPMiddleware``: that one wraps
every response in an extra task and stream, which costs a measurable share of
a cached read's latency.
"""

from __future__ import annotations

import time
from typing import Any

from hive_ray._api._metrics import ApiMetrics
from hive_ray._api._problems import problem


class _BodyTooLarge(Exception):
    pass


class ApiMiddleware:
    def __init__(self, app: Any, *, metrics: ApiMetrics, max_body_bytes: int) -> None:
        self.app = app
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500
        response_started = False

        async def send_and_note(message: dict[str, Any]) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                status = message["status"]
                response_started = True
            await send(message)

        limit = self.max_body_bytes
        try:
            declared = _content_length(scope)
            if declared is not None and declared > limit:
                raise _BodyTooLarge
            received = 0

            async def receive_bounded() -> dict[str, Any]:
                nonlocal received
                message = await receive()
                if message["type"] == "http.request":
                    received += len(message.get("body", b""))
                    if received > limit:
                        raise _BodyTooLarge
                return message

            await self.app(scope, receive_bounded if scope["method"] in ("POST", "PUT", "PATCH")
                           else receive, send_and_note)
        except _BodyTooLarge:
            if response_started:
                raise
            response = problem(413, f"the request body is larger than the limit of {limit} bytes; "
                               "send less, or raise the api_max_body_bytes setting",
                               instance=scope.get("path"), limit=limit)
            await response(scope, receive, send_and_note)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            self.metrics.observe_http(template, scope["method"], status, time.perf_counter() - started)


def _content_length(scope: dict[str, Any]) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None
