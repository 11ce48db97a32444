"""The HTTP routes of topics: publish, follow, subscribe (see :mod:`hive_ray._topics`).

Added to the app by :func:`hive_ray._api._http.build_http_app`, kept apart so
that module stays under 500 lines. (Added to the app itself, not through an
``APIRouter``: FastAPI includes a router as one opaque route, which would hide
these routes' methods from the 405 answer's ``Allow``.) Publishing and subscribing need
an admin key; reading subscriptions and following a topic's messages (as
Server-Sent Events) a read key.
"""

from __future__ import annotations

from enum import Enum
from typing import Annotated, Any

from fastapi import FastAPI, Header, Path, Query
from fastapi.responses import Response, StreamingResponse
from pydantic import AfterValidator

from hive_ray._api._http import (
    SSE_DOC,
    STREAM_HEADERS,
    _json,
    _problem_responses,
    resume_point,
)
from hive_ray._api._middleware import request_span
from hive_ray._api._problems import from_header_or_body
from hive_ray._api._schemas import (
    NO_SLASH,
    SubscriptionAdded,
    SubscriptionRemoved,
    SubscriptionRequest,
    TopicMessage,
    TopicPublished,
    TopicSubscriptions,
)
from hive_ray._api._service import ApiService, dumps
from hive_ray._api._streams import sse_topic_frame, topic_messages
from hive_ray._topics import LOG_LENGTH, check_topic
from hive_ray._virtual import MAX_KEY_LENGTH

#: ``hive_ray._topics.TOPIC_PATTERN`` without ``.`` and ``..``: clients resolve those as path
#: segments (``/v1/topics/../messages`` is ``/v1/messages``), so such topics are reachable from
#: Python only. The length (1 to 200) is stated beside it, as minLength and maxLength.
TOPIC_IN_PATH = r"^(?:[A-Za-z0-9_.:-]*[A-Za-z0-9_:-][A-Za-z0-9_.:-]*|\.{3,})$"


def _topic_in_path(topic: str) -> str:
    """The topic named in a path, or a ValueError whose words the 422 shows."""
    check_topic(topic)
    if topic in (".", ".."):
        raise ValueError(f"the topic {topic!r} cannot be named in a URL (clients resolve it as a path "
                         "segment); publish to it from Python, or choose another name")
    return topic


Topic = Annotated[str, Path(
    description="The topic: 1 to 200 letters, digits or `_ . : -` (no spaces or slashes), e.g. "
    "`promotions` or `orders.eu`.", examples=["promotions"],
    # Checked by _topic_in_path, whose message says what a topic may hold; stated here as well.
    json_schema_extra={"minLength": 1, "maxLength": 200, "pattern": TOPIC_IN_PATH}),
    AfterValidator(_topic_in_path)]
AgentType = Annotated[str, Path(min_length=1, max_length=200, pattern=NO_SLASH, examples=["cart"],
                                description="A virtual agent type (e.g. `cart`).")]
AgentKey = Annotated[str, Path(min_length=1, max_length=MAX_KEY_LENGTH, pattern=NO_SLASH,
                               examples=["user-42"], description="The agent's key: 1 to "
                               f"{MAX_KEY_LENGTH} characters, without `/`.")]


def add_topic_routes(app: FastAPI, service: ApiService, *, read: list[Any], admin: list[Any]) -> None:
    """Add the topic routes over ``service`` to ``app``; ``read`` and ``admin`` are the key checks."""
    settings = service.settings
    auth_errors = _problem_responses(401, 403)
    tags: list[str | Enum] = ["topics"]

    @app.post(
        "/v1/topics/{topic}/messages", tags=tags, dependencies=admin, status_code=202,
        response_model=TopicPublished,
        responses={**auth_errors, **_problem_responses(409, 413, 422, 429)},
        summary="Publish a message to a topic: one message task per subscribed virtual agent",
        description="Agent types subscribed by type (their pools' `subscriptions`) receive it at the "
        "agent whose key is `source`; agents subscribed one by one (`POST "
        "/v1/topics/{topic}/subscriptions`) each receive it. Answers 202 once every delivery is "
        "accepted (journaled): each is a task (`task_ids`), handled in publish order per agent. "
        "Subscribers whose type no pool runs now are listed as `undeliverable`. A `message_id` (or "
        "the `Idempotency-Key` header) published again is not delivered again: the first answer "
        "comes back with `duplicate` true (another message under the same id is a 409). A full "
        "queue of a subscriber's pool is a 429.")
    async def publish(
        topic: Topic,
        body: TopicMessage,
        idempotency_key: Annotated[str | None, Header(min_length=1, max_length=256)] = None,
    ) -> Response:
        message_id = from_header_or_body(idempotency_key, body.message_id, "message_id")
        span = request_span.get()
        answer = await service.publish(topic, body.message, body.source, message_id,
                                       span.context() if span is not None else None)
        return _json(dumps(answer), 202)

    @app.get(
        "/v1/topics/{topic}/events", tags=tags, dependencies=read, response_class=StreamingResponse,
        responses={**SSE_DOC, **auth_errors, **_problem_responses(422)},
        summary="A topic's messages as Server-Sent Events, as they are published",
        description="Each `event: message` carries one message as JSON (`topic`, `sequence`, `time`, "
        "`source`, `message_id`, `message`, `deliveries`); its `id` is its sequence, so "
        "`Last-Event-ID` (or `?after=`) resumes after it. Starts with the messages kept "
        f"(the last {LOG_LENGTH:,} of the topic, since the orchestrator started) after that point. "
        "`event: missed` (`{\"topic\", \"after\", \"next\"}`) says that messages after `after` "
        "were dropped before this follower read them; the next message sent is the oldest kept. "
        "Comment lines are heartbeats. The stream ends after the `api_stream_max_seconds` setting "
        f"({settings.api_stream_max_seconds:g} s): reconnect with the last id (EventSource does so by "
        "itself).")
    async def follow(
        topic: Topic,
        after: Annotated[int, Query(ge=0, le=2**62, description="Send the messages numbered above this.")] = 0,
        last_event_id: Annotated[str | None, Header(max_length=32)] = None,
    ) -> StreamingResponse:
        start = resume_point(after, last_event_id)

        async def frames() -> Any:
            yield b"retry: 1000\n\n"
            async for item in topic_messages(service.call, topic, after=start,
                                             max_seconds=settings.api_stream_max_seconds):
                yield sse_topic_frame(item)

        return StreamingResponse(frames(), media_type="text/event-stream", headers=STREAM_HEADERS)

    @app.post(
        "/v1/topics/{topic}/subscriptions", tags=tags, dependencies=admin, status_code=201,
        response_model=SubscriptionAdded,
        responses={200: {"model": SubscriptionAdded, "description": "The agent was subscribed already."},
                   **auth_errors, **_problem_responses(422)},
        summary="Subscribe one virtual agent to every message of a topic",
        description="Journaled: the subscription outlives restarts, and its agent's pool (messages "
        "published while no pool runs the type are `undeliverable`). 201 when added, 200 when it "
        "existed. A type known not to be virtual is a 422.")
    async def subscribe(topic: Topic, body: SubscriptionRequest) -> Response:
        answer = await service.subscribe(topic, body.agent_type, body.key)
        return _json(dumps(answer), 201 if answer["added"] else 200)

    @app.delete(
        "/v1/topics/{topic}/subscriptions/{agent_type}/{key}", tags=tags, dependencies=admin,
        response_model=SubscriptionRemoved, responses={**auth_errors, **_problem_responses(422)},
        summary="Remove one agent's subscription to a topic",
        description="`removed` is false when there was no such subscription. Type subscriptions "
        "come with their pools and go with them.")
    async def unsubscribe(topic: Topic, agent_type: AgentType, key: AgentKey) -> Response:
        return _json(dumps(await service.unsubscribe(topic, agent_type, key)))

    @app.get(
        "/v1/topics/{topic}/subscriptions", tags=tags, dependencies=read,
        response_model=list[TopicSubscriptions],
        responses={**auth_errors, **_problem_responses(422)},
        summary="Who receives a topic's messages: agent types by source, and single agents",
        description="A list of one entry, as `GET /v1/topics` answers it for every topic.")
    async def topic_subscriptions(topic: Topic) -> Response:
        return _json(dumps(await service.subscriptions(topic)))

    @app.get(
        "/v1/topics", tags=tags, dependencies=read, response_model=list[TopicSubscriptions],
        responses=auth_errors,
        summary="Every topic that has subscribers, and who receives its messages")
    async def topics() -> Response:
        return _json(dumps(await service.subscriptions(None)))
