"""Task event streams, streaming tasks' parts and topics' messages, shared by SSE and gRPC.

:func:`task_events` long-polls the orchestrator's ``events(after, timeout,
task_id)`` and yields events in sequence order, a ``None`` heartbeat when a
poll found nothing, and stops after ``max_seconds`` (the client resumes from
the last sequence it saw) or, for one task's stream, after its final event.
:func:`task_parts` and :func:`topic_messages` do the same over a streaming
task's parts and a topic's log.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from hive_ray._api._telemetry import TERMINAL
from hive_ray._stream_buffer import PART
from hive_ray._streaming import StreamCursor

#: Longest single long-poll: also the heartbeat interval of an idle stream.
POLL_SECONDS = 10.0


async def task_events(call: Callable[..., Any], *, after: int = 0, task_id: str | None = None,
                      max_seconds: float = 60.0) -> AsyncIterator[dict[str, Any] | None]:
    deadline = time.monotonic() + max_seconds
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return
        answer = await call("events", after, min(POLL_SECONDS, remaining), task_id)
        events = answer["events"]
        if not events:
            if task_id is not None:
                # The task's final event may have left the orchestrator's buffer.
                record = await call("task", task_id)
                if record["state"] in TERMINAL:
                    yield {"sequence": answer["last_sequence"], "time": record["finished_at"],
                           "task_id": task_id, "pool": record["pool"], "state": record["state"]}
                    return
            yield None
            continue
        for event in events:
            yield event
            if task_id is not None and event["state"] in TERMINAL:
                return
        after = events[-1]["sequence"]


def sse_frame(event: dict[str, Any] | None) -> bytes:
    """One Server-Sent Events frame; ``id`` is the sequence, so Last-Event-ID resumes."""
    if event is None:
        return b": heartbeat\n\n"
    return f"id: {event['sequence']}\ndata: {json.dumps(event, separators=(',', ':'))}\n\n".encode()


SSE_END = b"event: end\ndata: {}\n\n"


async def task_parts(call: Callable[..., Any], resolve: Callable[[str, Any], Any], task_id: str, *,
                     after: int = 0, max_seconds: float = 60.0) -> AsyncIterator[tuple[str, int | None, Any] | None]:
    """A streaming task's items from the one after sequence ``after``, for SSE and gRPC.

    Yields ``(kind, sequence, data)``: ``part`` (the part), ``restart`` (the
    task runs again from its start: ``{"attempt": n}``), ``missed``
    (``{"count": n}`` parts were dropped before this consumer read them) and
    last ``end`` (``{"task_id", "state", "error"}``); ``None`` when a poll
    found nothing (a heartbeat). A task whose handler is not a generator
    yields its whole result as its one part. Stops after ``max_seconds``
    without the end: the client resumes from the last sequence.
    """
    deadline = time.monotonic() + max_seconds
    cursor = StreamCursor(after)
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return
        reply = await call("stream_parts", task_id, cursor.after, min(POLL_SECONDS, remaining))
        if reply["missed"]:
            yield ("missed", None, {"count": reply["missed"]})
        for sequence, kind, value in cursor.take(reply):
            yield ("part", sequence, value) if kind == PART else ("restart", sequence, {"attempt": value})
        if cursor.answer is not None:
            state, result, error = cursor.answer
            if cursor.result_is_the_part():
                yield ("part", cursor.last_sequence, await resolve(task_id, result))
            yield ("end", None, {"task_id": task_id, "state": state, "error": error})
            return
        if not reply["items"] and not reply["missed"]:
            yield None


def sse_part_frame(item: tuple[str, int | None, Any] | None) -> bytes:
    """One Server-Sent Events frame of :func:`task_parts`; ``id`` is the sequence."""
    if item is None:
        return b": heartbeat\n\n"
    kind, sequence, data = item
    head = f"id: {sequence}\n" if sequence is not None else ""
    body = json.dumps(data, separators=(",", ":"), default=str)
    return f"{head}event: {kind}\ndata: {body}\n\n".encode()


async def topic_messages(call: Callable[..., Any], topic: str, *, after: int = 0,
                         max_seconds: float = 60.0) -> AsyncIterator[tuple[str, dict[str, Any]] | None]:
    """A topic's messages numbered above ``after``, as they are published, for SSE and gRPC.

    Yields ``("message", message)`` (the orchestrator's record: ``topic``,
    ``sequence``, ``time``, ``source``, ``message_id``, ``message``,
    ``deliveries``), ``("missed", {"topic", "after", "next"})`` when messages
    after ``after`` were dropped before this follower read them (a topic's log
    keeps its last 1,000, and none from before an orchestrator restart; ``next``
    is the oldest kept, which follows), and ``None`` when a poll found nothing
    (a heartbeat). Each poll waits at most :data:`POLL_SECONDS`; stops after
    ``max_seconds`` (the client resumes after the last sequence it saw).
    """
    deadline = time.monotonic() + max_seconds
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return
        answer = await call("topic_messages", topic, after, min(POLL_SECONDS, remaining), 1000)
        messages = answer["messages"]
        if answer["missed"] and messages:
            yield ("missed", {"topic": topic, "after": after, "next": messages[0]["sequence"]})
        if not messages:
            yield None
            continue
        for message in messages:
            yield ("message", message)
        after = messages[-1]["sequence"]


def sse_topic_frame(item: tuple[str, dict[str, Any]] | None) -> bytes:
    """One Server-Sent Events frame of :func:`topic_messages`: a message's ``id`` is its
    sequence (Last-Event-ID resumes after it); a ``missed`` marker has none."""
    if item is None:
        return b": heartbeat\n\n"
    kind, data = item
    head = f"id: {data['sequence']}\n" if kind == "message" else ""
    body = json.dumps(data, separators=(",", ":"), default=str)
    return f"{head}event: {kind}\ndata: {body}\n\n".encode()
