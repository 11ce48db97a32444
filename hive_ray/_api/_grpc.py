"""gRPC methods of ``hive.proto``, translated onto the same :class:`ApiService` as HTTP.

Serve's gRPC proxy hands each call to the deployment method of the same name
with a ``grpc_context``; errors become gRPC status codes with the hive
error's message as details (the same text HTTP puts in ``detail``).

With tracing on, each unary call is a server span (``hive.v1.Hive/Submit``…)
that honours a ``traceparent`` in the metadata; Submit puts its context into
the task, and the trace id goes back in the trailing metadata
(``traceresponse``, ``x-trace-id``), as HTTP returns it in headers.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import grpc
from pydantic import ValidationError

from hive_ray._api import hive_pb2
from hive_ray._api._keys import KeyRing, bearer_token
from hive_ray._api._middleware import request_span
from hive_ray._api._problems import ProblemError, field_errors, status_of
from hive_ray._api._service import ApiService, dumps
from hive_ray._api._streams import task_events, task_parts, topic_messages
from hive_ray._api._trace_ingress import (
    finish_grpc_span,
    grpc_server_span,
    inject_into,
    response_headers,
)
from hive_ray._errors import HiveError
from hive_ray._models import TaskSpec
from hive_ray._topics import check_topic
from hive_ray._virtual import check_key

#: The service's full name in ``hive.proto``: gRPC span names are ``<SERVICE>/<method>``.
SERVICE = "hive.v1.Hive"

_CODES = {
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    409: grpc.StatusCode.ALREADY_EXISTS,
    422: grpc.StatusCode.INVALID_ARGUMENT,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}


class _Refused(Exception):
    def __init__(self, status: int, detail: str) -> None:
        super().__init__(status, detail)
        self.status, self.detail = status, detail


class _StreamRefused(Exception):
    """Ends a stream refused before its first message (its gRPC code is the argument)."""


def _authorize(service: ApiService, context: Any, needed: str) -> None:
    metadata = {key.lower(): value for key, value in context.invocation_metadata()}
    scope = service.keys.scope_of(bearer_token(metadata.get("authorization")))
    if scope is None:
        raise _Refused(401, "send a valid API key in metadata as 'authorization: Bearer <key>'")
    if not KeyRing.allows(scope, needed):
        raise _Refused(403, f"this needs an {needed} key; the key sent has the {scope} scope")


def _fail(context: Any, status: int, detail: str) -> int:
    """Set the call's status from an HTTP-style ``status``; returns the gRPC code's number."""
    code = _CODES.get(status, grpc.StatusCode.INTERNAL)
    context.set_code(code)
    context.set_details(detail)
    return int(code.value[0])


async def _guarded(service: ApiService, context: Any, needed: str, work: Any, empty: Any,
                   method: str = "") -> Any:
    """Authorize, run ``work`` and turn errors into status codes; traced when tracing is on."""
    if not service.settings.tracing:
        return (await _answer(service, context, needed, work, empty))[0]
    span = grpc_server_span(service.settings, SERVICE, method, context.invocation_metadata())
    if span is None:
        return (await _answer(service, context, needed, work, empty))[0]
    context.set_trailing_metadata(list(response_headers(span).items()))
    token = request_span.set(span)
    failure: BaseException | None = None
    code = 0
    try:
        answer, code = await _answer(service, context, needed, work, empty)
        return answer
    except BaseException as error:
        failure, code = error, int(grpc.StatusCode.INTERNAL.value[0])
        raise
    finally:
        request_span.reset(token)
        finish_grpc_span(span, code, failure)


async def _answer(service: ApiService, context: Any, needed: str, work: Any, empty: Any) -> tuple[Any, int]:
    """``work``'s answer and status code 0, or ``empty`` and the code of the error it raised."""
    try:
        _authorize(service, context, needed)
        return await work(), 0
    except _Refused as refused:
        code = _fail(context, refused.status, refused.detail)
    except ProblemError as error:
        code = _fail(context, error.status, error.detail)
    except HiveError as error:
        code = _fail(context, status_of(error), error.message)
    except ValidationError as error:
        listed = field_errors(error.errors())
        code = _fail(context, 422, "invalid " + "; ".join(f"{e['field']}: {e['message']}" for e in listed))
    return empty, code


def _task_spec(request: Any) -> tuple[TaskSpec, Any]:
    try:
        payload = json.loads(request.payload_json) if request.payload_json else None
    except ValueError as error:
        raise ProblemError(422, f"payload_json is not JSON: {error}") from None
    spec = TaskSpec(
        agent_type=request.agent_type or None, capability=request.capability or None,
        pool=request.pool or None, payload=payload, priority=request.priority,
        timeout=request.timeout or None, affinity_key=request.affinity_key or None,
        idempotency_key=request.idempotency_key or None, metadata=dict(request.metadata),
    )
    return spec, payload


async def submit(service: ApiService, request: Any, context: Any) -> Any:
    async def work() -> Any:
        spec, payload = _task_spec(request)
        _checked_wait(service, request.wait)
        replayed = False
        if spec.idempotency_key:
            replayed = service.check_idempotency(
                spec.idempotency_key, spec.model_dump(mode="json", exclude={"idempotency_key"}))
        template = inject_into(spec.template(), request_span.get())
        return await _submitted(service, template, payload, request.wait, replayed)

    return await _guarded(service, context, "admin", work, hive_pb2.SubmitReply(), "Submit")


def _checked_wait(service: ApiService, wait: float) -> None:
    maximum = service.settings.api_max_wait_seconds
    if not 0 <= wait <= maximum:
        raise ProblemError(422, f"wait must be between 0 and {maximum:g} seconds")


async def _submitted(service: ApiService, template: dict[str, Any], payload: Any, wait: float,
                     replayed: bool) -> Any:
    """Submit; with ``wait`` > 0, answer with the outcome (DEADLINE_EXCEEDED if it has not ended)."""
    if wait <= 0:
        accepted = await service.submit(template, payload)
        return hive_pb2.SubmitReply(task_id=accepted["task_id"], state=accepted["state"], replayed=replayed)
    task_id, (state, result, error) = await service.run(template, payload, wait)
    if state == "pending":
        raise ProblemError(504, f"task {task_id} did not finish within wait={wait:g} s; "
                           "it keeps running: call GetTask for its state")
    return hive_pb2.SubmitReply(
        task_id=task_id, state=state, replayed=replayed,
        result_json=dumps(result).decode() if state == "succeeded" else "",
        error_json=dumps(error).decode() if error else "")


def _task_reply(record: dict[str, Any]) -> Any:
    return hive_pb2.TaskReply(task_id=record["task_id"], pool=record["pool"], state=record["state"],
                              record_json=dumps(record).decode())


async def get_task(service: ApiService, request: Any, context: Any) -> Any:
    async def work() -> Any:
        body, _ = await service.task_json(request.task_id)
        return _task_reply(json.loads(body))

    return await _guarded(service, context, "read", work, hive_pb2.TaskReply(), "GetTask")


async def cancel(service: ApiService, request: Any, context: Any) -> Any:
    async def work() -> Any:
        return _task_reply(await service.cancel(request.task_id))

    return await _guarded(service, context, "admin", work, hive_pb2.TaskReply(), "Cancel")


def _agent_address(request: Any) -> tuple[str, str]:
    """The request's ``(agent_type, key)``, or a 422 that says which is wrong."""
    if not request.agent_type:
        raise ProblemError(422, "agent_type is empty: name a virtual agent type that a pool runs, e.g. cart")
    try:
        return request.agent_type, check_key(request.key)
    except ValueError as error:
        raise ProblemError(422, str(error)) from None


async def ask_agent(service: ApiService, request: Any, context: Any) -> Any:
    """A message to a virtual agent: Submit of a task of its type, its key the affinity key."""

    async def work() -> Any:
        agent_type, key = _agent_address(request)
        try:
            message = json.loads(request.message_json) if request.message_json else None
        except ValueError as error:
            raise ProblemError(422, f"message_json is not JSON: {error}") from None
        _checked_wait(service, request.wait)
        spec = TaskSpec(agent_type=agent_type, affinity_key=key, idempotency_key=request.message_id or None,
                        payload=message)
        await service.ensure_virtual(agent_type, key)
        replayed = False
        if spec.idempotency_key:
            replayed = service.check_message_id(agent_type, key, spec.idempotency_key,
                                                spec.model_dump(mode="json", exclude={"idempotency_key"}))
        template = inject_into(spec.template(), request_span.get())
        return await _submitted(service, template, message, request.wait, replayed)

    return await _guarded(service, context, "admin", work, hive_pb2.SubmitReply(), "AskAgent")


async def get_agent(service: ApiService, request: Any, context: Any) -> Any:
    async def work() -> Any:
        agent = await service.agent(*_agent_address(request))
        return hive_pb2.AgentReply(
            agent_type=agent["agent_type"], key=agent["key"], pool=agent["pool"], owner=agent["owner"] or "",
            version=agent["version"], state_json=dumps(agent["state"]).decode(),
            active=agent["activation"] is not None, agent_json=dumps(agent).decode())

    return await _guarded(service, context, "read", work, hive_pb2.AgentReply(), "GetAgent")


async def _opened(service: ApiService, context: Any, needed: str, opening: Any) -> Any:
    """What a stream does before its first message (authorize, check, submit); a refusal sets
    the call's status and raises: a stream's status reaches the client only if the generator
    raises after setting it (Serve then keeps the code and details that were set)."""
    answer, code = await _answer(service, context, needed, opening, None)
    if code:
        raise _StreamRefused(code)  # the status and details are set on the context already
    return answer


async def stream_events(service: ApiService, request: Any, context: Any) -> AsyncIterator[Any]:
    task_id = request.task_id or None

    async def opening() -> None:
        if task_id is not None:
            await service.task_json(task_id)  # NOT_FOUND before streaming

    await _opened(service, context, "read", opening)
    async for event in task_events(service.call, after=request.after, task_id=task_id,
                                   max_seconds=service.settings.api_stream_max_seconds):
        if event is None:
            continue  # gRPC has its own keepalives
        yield hive_pb2.TaskEvent(
            sequence=event["sequence"], time=event["time"], task_id=event["task_id"],
            pool=event["pool"], state=event["state"], progress=event.get("progress"),
            message=event.get("message") or "")


async def submit_stream(service: ApiService, request: Any, context: Any) -> AsyncIterator[Any]:
    """Submit a task and stream its parts; a call cancelled before the end cancels the task."""

    async def opening() -> str:
        if request.wait:
            raise ProblemError(422, "SubmitStream answers as the task runs: leave wait at 0")
        spec, payload = _task_spec(request)
        if spec.idempotency_key:
            service.check_idempotency(spec.idempotency_key, spec.model_dump(mode="json", exclude={"idempotency_key"}))
        template = inject_into(spec.template(), request_span.get())
        return (await service.submit({**template, "stream": True}, payload))["task_id"]

    task_id = await _opened(service, context, "admin", opening)
    async for part in _parts(service, task_id, 0, cancel_on_disconnect=not request.detach):
        yield part


async def stream_parts(service: ApiService, request: Any, context: Any) -> AsyncIterator[Any]:
    """A streaming task's parts after ``request.after``; a cancelled call leaves the task running."""

    async def opening() -> None:
        await service.task_json(request.task_id)  # NOT_FOUND before streaming

    await _opened(service, context, "read", opening)
    async for part in _parts(service, request.task_id, request.after, cancel_on_disconnect=False):
        yield part


async def _parts(service: ApiService, task_id: str, after: int, *, cancel_on_disconnect: bool) -> AsyncIterator[Any]:
    ended = False
    try:
        async for item in task_parts(service.call, service.resolve, task_id, after=after,
                                     max_seconds=service.settings.api_stream_max_seconds):
            if item is None:
                continue  # gRPC has its own keepalives
            kind, sequence, data = item
            if kind == "part":
                yield hive_pb2.TaskPart(kind=kind, sequence=sequence or 0, task_id=task_id,
                                        part_json=dumps(data).decode())
            elif kind == "restart":
                yield hive_pb2.TaskPart(kind=kind, sequence=sequence or 0, task_id=task_id, attempt=data["attempt"])
            elif kind == "missed":
                yield hive_pb2.TaskPart(kind=kind, task_id=task_id, missed=data["count"])
            else:
                yield hive_pb2.TaskPart(kind=kind, task_id=task_id, state=data["state"],
                                        error_json=dumps(data["error"]).decode() if data["error"] else "")
        ended = True  # the end, or the stream's time limit (resume with StreamParts)
    finally:
        if not ended and cancel_on_disconnect:
            service.cancel_soon(task_id)  # the caller cancelled the call before the end


# ---------------------------------------------------------------------- topics
def _message_json(text: str) -> Any:
    try:
        return json.loads(text) if text else None
    except ValueError as error:
        raise ProblemError(422, f"message_json is not JSON: {error}") from None


async def publish(service: ApiService, request: Any, context: Any) -> Any:
    """A message to every agent subscribed to a topic; the orchestrator checks the topic's name."""

    async def work() -> Any:
        message = _message_json(request.message_json)
        span = request_span.get()
        trace_context = span.context() if span is not None else None
        answer = await service.publish(request.topic, message, request.source or None,
                                       request.message_id or None, trace_context)
        return hive_pb2.PublishReply(
            topic=answer["topic"], sequence=answer["sequence"], deliveries=answer["deliveries"],
            task_ids=answer["task_ids"], duplicate=answer["duplicate"],
            undeliverable=[hive_pb2.AgentAddress(**address) for address in answer["undeliverable"]])

    return await _guarded(service, context, "admin", work, hive_pb2.PublishReply(), "Publish")


def _subscriber(request: Any) -> tuple[str, str]:
    """The request's ``(agent_type, key)``, or a 422 that says which is wrong."""
    if not request.agent_type:
        raise ProblemError(422, "agent_type is empty: name a virtual agent type, e.g. cart")
    try:
        return request.agent_type, check_key(request.key)
    except ValueError as error:
        raise ProblemError(422, str(error)) from None


def _subscription_reply(answer: dict[str, Any]) -> Any:
    return hive_pb2.SubscriptionReply(
        topic=answer["topic"], agent_type=answer["agent_type"], key=answer["key"],
        added=answer.get("added", False), removed=answer.get("removed", False))


async def subscribe(service: ApiService, request: Any, context: Any) -> Any:
    async def work() -> Any:
        return _subscription_reply(await service.subscribe(request.topic, *_subscriber(request)))

    return await _guarded(service, context, "admin", work, hive_pb2.SubscriptionReply(), "Subscribe")


async def unsubscribe(service: ApiService, request: Any, context: Any) -> Any:
    async def work() -> Any:
        _checked_topic(request.topic)
        return _subscription_reply(await service.unsubscribe(request.topic, *_subscriber(request)))

    return await _guarded(service, context, "admin", work, hive_pb2.SubscriptionReply(),
                          "Unsubscribe")


def _checked_topic(topic: str) -> str:
    try:
        return check_topic(topic)
    except ValueError as error:
        raise ProblemError(422, str(error)) from None


async def follow_topic(service: ApiService, request: Any, context: Any) -> AsyncIterator[Any]:
    """A topic's messages after ``request.after``, for ``api_stream_max_seconds``."""

    async def opening() -> None:
        _checked_topic(request.topic)  # INVALID_ARGUMENT before streaming

    await _opened(service, context, "read", opening)
    async for item in topic_messages(service.call, request.topic, after=request.after,
                                     max_seconds=service.settings.api_stream_max_seconds):
        if item is None:
            continue  # gRPC has its own keepalives
        kind, data = item
        if kind == "missed":
            yield hive_pb2.TopicMessage(kind=kind, topic=data["topic"])
            continue
        yield hive_pb2.TopicMessage(
            kind=kind, sequence=data["sequence"], time=data["time"], topic=data["topic"],
            source=data["source"] or "", message_id=data["message_id"] or "",
            message_json=dumps(data["message"]).decode(), deliveries=data["deliveries"])
