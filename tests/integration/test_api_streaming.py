"""Streaming tasks over HTTP: Server-Sent Events read by httpx, against the deployed app."""

# ruff: noqa: F811 - the shared fixtures are imported, and pytest passes them as arguments
from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.integration.test_api_support import ApiServer, admin_client, api  # noqa: F401

pytestmark = pytest.mark.ray


@pytest.fixture
def words_pool(admin_client: httpx.Client, unique_name: str) -> Iterator[str]:
    response = admin_client.post("/v1/pools", json={"name": unique_name, "agent_type": "words", "count": 1})
    assert response.status_code == 201, response.text
    yield unique_name
    admin_client.delete(f"/v1/pools/{unique_name}")


def read_events(response: httpx.Response, stop_after: int | None = None) -> list[tuple[str, str | None, Any]]:
    """(event, id, data) of each SSE frame, until ``end`` or ``stop_after`` frames."""
    assert response.status_code == 200, response.read()
    assert response.headers["content-type"].startswith("text/event-stream")
    events: list[tuple[str, str | None, Any]] = []
    name, event_id = None, None
    for line in response.iter_lines():
        if line.startswith("event:"):
            name = line.split(":", 1)[1].strip()
        elif line.startswith("id:"):
            event_id = line.split(":", 1)[1].strip()
        elif line.startswith("data:") and name is not None:
            events.append((name, event_id, json.loads(line[5:])))
            if name == "end" or (stop_after is not None and len(events) >= stop_after):
                break
            name, event_id = None, None
    return events


def test_submit_with_stream_answers_the_parts_as_they_come_then_the_end(admin_client, words_pool):
    with admin_client.stream("POST", "/v1/tasks", params={"stream": "true"},
                             json={"pool": words_pool, "payload": "the quick brown fox"}) as response:
        location = response.headers["location"]
        events = read_events(response)
    assert [data for name, _, data in events if name == "part"] == ["the ", "quick ", "brown ", "fox"]
    ids = [int(event_id) for name, event_id, _ in events if name == "part"]
    assert ids == sorted(ids)  # Last-Event-ID resumes from them
    assert events[-1][0] == "end" and events[-1][2]["state"] == "succeeded"
    record = admin_client.get(location).json()
    assert record["result"] == "the quick brown fox"


def test_a_watcher_resumes_after_the_last_event_id(admin_client, words_pool):
    payload = {"pool": words_pool, "payload": {"text": "a b c d", "delay": 0.3}}
    with admin_client.stream("POST", "/v1/tasks", params={"stream": "true", "detach": "true"},
                             json=payload) as response:
        task_id = response.headers["location"].rsplit("/", 1)[1]
        first = read_events(response, stop_after=2)
    assert [data for _, _, data in first] == ["a ", "b "]
    with admin_client.stream("GET", f"/v1/tasks/{task_id}/stream",
                             headers={"Last-Event-ID": first[-1][1]}) as response:
        rest = read_events(response)
    assert [data for name, _, data in rest if name == "part"] == ["c ", "d"]
    assert rest[-1][2]["state"] == "succeeded"


def test_a_task_that_does_not_stream_sends_its_result_as_one_part(admin_client, unique_name):
    created = admin_client.post("/v1/pools", json={"name": unique_name, "agent_type": "echo", "count": 1})
    assert created.status_code == 201
    try:
        task = admin_client.post("/v1/tasks", params={"wait": 10}, json={"pool": unique_name, "payload": {"x": 1}})
        task_id = task.json()["task_id"]
        with admin_client.stream("GET", f"/v1/tasks/{task_id}/stream") as response:
            events = read_events(response)
        assert [(name, data) for name, _, data in events] == [
            ("part", {"x": 1}), ("end", {"task_id": task_id, "state": "succeeded", "error": None})]
    finally:
        admin_client.delete(f"/v1/pools/{unique_name}")


def test_a_consumer_that_disconnects_cancels_its_task_unless_detached(admin_client, words_pool, wait_until):
    slow = {"pool": words_pool, "payload": {"text": "one two three four five six", "delay": 2}}
    with admin_client.stream("POST", "/v1/tasks", params={"stream": "true"}, json=slow) as response:
        task_id = response.headers["location"].rsplit("/", 1)[1]
        assert read_events(response, stop_after=1)[0][2] == "one "
    assert wait_until(lambda: admin_client.get(f"/v1/tasks/{task_id}").json()["state"] == "cancelled", 30)

    quick = {"pool": words_pool, "payload": {"text": "one two", "delay": 0.5}}
    with admin_client.stream("POST", "/v1/tasks", params={"stream": "true", "detach": "true"},
                             json=quick) as response:
        detached = response.headers["location"].rsplit("/", 1)[1]
        read_events(response, stop_after=1)
    assert wait_until(lambda: admin_client.get(f"/v1/tasks/{detached}").json()["state"] == "succeeded", 30)


def test_watching_a_stream_needs_a_key_and_a_known_task(api: ApiServer):
    assert httpx.get(api.base_url + "/v1/tasks/nope/stream").status_code == 401
    unknown = httpx.get(api.base_url + "/v1/tasks/no-such-task/stream", headers=api.headers("read"))
    assert unknown.status_code == 404


def test_stream_and_wait_together_are_refused(admin_client, words_pool):
    response = admin_client.post("/v1/tasks", params={"stream": "true", "wait": 5},
                                 json={"pool": words_pool, "payload": "a"})
    assert response.status_code == 422 and "not both" in response.json()["detail"]
