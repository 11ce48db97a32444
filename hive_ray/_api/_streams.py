"""Task event streams, shared by Server-Sent Events and the gRPC server stream.

:func:`task_events` long-polls the orchestrator's ``events(after, timeout,
task_id)`` and yields events in sequence order, a ``None`` heartbeat when a
poll found nothing, and stops after ``max_seconds`` (the client resumes from
the last sequence it saw) or, for one task's stream, after its final event.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from hive_ray._api._telemetry import TERMINAL

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
