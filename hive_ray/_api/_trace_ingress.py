"""The API's side of tracing: a server span per HTTP request or gRPC call.

Each incoming request that is sampled (or carries a sampled ``traceparent``)
gets a server span; the submit handlers put its context into the task
(:func:`inject_into`), and the caller learns the trace id from
:func:`response_headers`. The tasks of a request that is not sampled carry no
context, so the orchestrator samples each of them like any other task.
"""

from __future__ import annotations

from typing import Any

from hive_ray._tracing import SERVER, Span, format_traceparent, tracer_from_settings


def start_server_span(settings: Any, name: str, headers: Any = None,
                      attributes: dict[str, Any] | None = None) -> Span | None:
    """Start the server span of an incoming request; None when tracing is off or unsampled.

    Args:
        settings: The :class:`hive_ray.Settings` of the API process.
        name: Low-cardinality span name: ``"POST /v1/tasks"`` (method and route
            template) for HTTP, ``"hive.v1.Hive/Submit"`` for gRPC.
        headers: The request headers (any mapping; case-insensitive ones work) or gRPC
            invocation metadata (pairs). A valid ``traceparent`` in it is honoured,
            including its sampled flag.
        attributes: Semantic-convention attributes (see :func:`http_server_span`).

    Returns:
        The span; end it with ``span.end()`` (or use it as a context manager), put its
        context into the task template with :func:`inject_into`, and return
        :func:`response_headers` to the caller so that it learns the trace id.
    """
    tracer = tracer_from_settings(settings, "api")
    if tracer is None:
        return None
    return tracer.start_root_span(name, kind=SERVER, headers=headers, attributes=attributes)


def http_server_span(settings: Any, method: str, route: str, headers: Any = None, *,
                     path: str | None = None, scheme: str = "http", server_address: str | None = None,
                     server_port: int | None = None, user_agent: str | None = None) -> Span | None:
    """:func:`start_server_span` for HTTP, with the stable HTTP semantic-convention attributes.

    Set ``http.response.status_code`` on the span before ending it (a 5xx marks it failed):
    ``finish_http_span(span, status_code)``.
    """
    attributes: dict[str, Any] = {"http.request.method": method.upper(), "http.route": route,
                                  "url.scheme": scheme, "url.path": path or route}
    if server_address:
        attributes["server.address"] = server_address
    if server_port:
        attributes["server.port"] = server_port
    if user_agent:
        attributes["user_agent.original"] = user_agent
    return start_server_span(settings, f"{method.upper()} {route}", headers, attributes)


def finish_http_span(span: Span | None, status_code: int, error: BaseException | None = None) -> None:
    """End an HTTP server span with its response status (5xx is an error, 4xx is not)."""
    if span is None:
        return
    span.attributes["http.response.status_code"] = status_code
    if error is not None:
        span.record_exception(error)
    elif status_code >= 500:
        span.set_error(str(status_code))
        span.attributes["error.type"] = str(status_code)
    span.end()


def grpc_server_span(settings: Any, service: str, method: str, metadata: Any = None) -> Span | None:
    """:func:`start_server_span` for a gRPC call (``rpc.*`` semantic-convention attributes)."""
    return start_server_span(settings, f"{service}/{method}", metadata,
                             {"rpc.system": "grpc", "rpc.service": service, "rpc.method": method})


def finish_grpc_span(span: Span | None, status_code: int = 0, error: BaseException | None = None) -> None:
    """End a gRPC server span with its numeric status code (0 is OK)."""
    if span is None:
        return
    span.attributes["rpc.grpc.status_code"] = status_code
    if error is not None:
        span.record_exception(error)
    elif status_code != 0:
        span.set_error(f"gRPC status {status_code}")
    span.end()


def inject_into(template: dict[str, Any], span: Span | None) -> dict[str, Any]:
    """Make the tasks submitted with ``template`` children of ``span`` (no-op for None)."""
    if span is not None:
        template["trace_context"] = span.context()
    return template


def response_headers(span: Span | None) -> dict[str, str]:
    """Headers that tell the caller its trace: W3C ``traceresponse`` and ``x-trace-id``."""
    if span is None:
        return {}
    return {"traceresponse": format_traceparent(span.trace_id, span.span_id),
            "x-trace-id": span.trace_id_hex}
