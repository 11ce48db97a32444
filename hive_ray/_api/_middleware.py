"""One pure-ASGI middleware: the request body limit (413), HTTP metrics and request spans.

Pure ASGI rather than Starlette's ``BaseHTTPMiddleware``: that one wraps
every response in an extra task and stream, which costs a measurable share of
a cached read's latency.

With tracing on, every request gets a server span (an incoming ``traceparent``
is honoured). The span is named after the route *template* once routing has
found it, is visible to handlers through :data:`request_span` (the submit
handler puts its context into the task), and its trace id goes back to the
caller in ``traceresponse`` and ``x-trace-id`` headers. With tracing off the
cost is one attribute check per request.
"""

from __future__ import annotations

import contextvars
import time
from typing import Any

from hive_ray._api._metrics import ApiMetrics
from hive_ray._api._problems import problem
from hive_ray._api._trace_ingress import finish_http_span, http_server_span, response_headers
from hive_ray._tracing import Span

#: The server span of the request being handled (None: tracing off, or not sampled).
request_span: contextvars.ContextVar[Span | None] = contextvars.ContextVar("hive_request_span", default=None)


class _BodyTooLarge(Exception):
    pass


class ApiMiddleware:
    def __init__(self, app: Any, *, metrics: ApiMetrics, max_body_bytes: int, settings: Any = None) -> None:
        self.app = app
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes
        self.settings = settings
        self.tracing = bool(settings is not None and settings.tracing)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.tracing:
            await self._traced(scope, receive, send)
            return
        await self._measured(scope, receive, send)

    async def _traced(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        span = _start_span(self.settings, scope)
        if span is None:
            await self._measured(scope, receive, send)
            return
        extra = [(name.encode(), value.encode()) for name, value in response_headers(span).items()]
        status = 500

        async def send_with_trace(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message = {**message, "headers": [*message.get("headers", ()), *extra]}
            await send(message)

        token = request_span.set(span)
        failure: BaseException | None = None
        try:
            await self._measured(scope, receive, send_with_trace)
        except BaseException as error:
            failure = error
            raise
        finally:
            request_span.reset(token)
            route = getattr(scope.get("route"), "path", None)
            # Named by the route template (low cardinality), known only once routing ran.
            span.name = f"{scope['method']} {route}" if route else scope["method"]
            if route:
                span.attributes["http.route"] = route
            else:
                span.attributes.pop("http.route", None)
            finish_http_span(span, status, failure)

    async def _measured(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
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


def _start_span(settings: Any, scope: dict[str, Any]) -> Span | None:
    incoming: dict[str, str] = {}
    user_agent = None
    for name, value in scope.get("headers", ()):
        if name == b"traceparent":
            incoming["traceparent"] = value.decode("latin-1")
        elif name == b"user-agent":
            user_agent = value.decode("latin-1")
    server = scope.get("server") or (None, None)
    return http_server_span(settings, scope["method"], "", incoming, path=scope.get("path"),
                            scheme=scope.get("scheme", "http"), server_address=server[0],
                            server_port=server[1], user_agent=user_agent)


def _content_length(scope: dict[str, Any]) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None
