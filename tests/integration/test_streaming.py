"""Streaming tasks from a notebook-style client: generator handlers end to end on real Ray."""

# ruff: noqa: F811
from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Iterator
from typing import Any

import pytest

from hive_ray import Agent, StreamRestart, TaskFailedError, TaskTimeoutError

pytestmark = pytest.mark.ray


class Countdown(Agent):
    """A plain generator: runs step by step on the host's worker threads."""

    agent_type = "countdown-test"

    def handle(self, task):
        yield from range(task.payload, 0, -1)


class Tokens(Agent):
    """An async generator that can fail half-way, wait for a release, or count how far it got."""

    agent_type = "tokens-test"
    concurrent = True
    max_concurrency = 10

    async def handle(self, task):
        payload = task.payload
        for index, token in enumerate(payload["tokens"]):
            if token == "FAIL":
                raise RuntimeError("the model went away")
            if token == "WAIT":
                await asyncio.sleep(payload.get("wait", 30))
                continue
            self.context.report_progress((index + 1) / len(payload["tokens"]))
            yield token


class KilledOnce(Agent):
    """Streams its host's pid on the first attempt, then waits to be killed; the retry streams on."""

    agent_type = "killed-once-test"

    async def handle(self, task):
        if task.attempt == 1:
            yield {"pid": os.getpid()}
            await asyncio.sleep(120)  # the test kills this host meanwhile
        yield f"attempt {task.attempt} "
        yield "done"


class Relay(Agent):
    """Streams what a sub-task streams, each part marked: delegation that streams to its parent."""

    agent_type = "relay-test"
    concurrent = True
    max_concurrency = 10

    async def handle(self, task):
        async for part in self.context.delegate_stream(task.payload, agent_type="tokens-test"):
            yield f"[{part}]"


@pytest.fixture(scope="module")
def streaming_pools(hive) -> Iterator[Any]:
    for agent in (Countdown, Tokens, Relay):
        hive.spawn(agent, 1)
    yield hive
    for agent in (Countdown, Tokens, Relay):
        hive.stop(agent.agent_type)


def test_a_delegated_sub_task_streams_to_its_parent(streaming_pools):
    hive = streaming_pools
    stream = hive.stream("relay-test", {"tokens": ["x", "y"]})
    assert list(stream) == ["[x]", "[y]"]
    children = [t for t in hive.tasks(pool="tokens-test") if t.metadata.get("parent_task_id") == stream.task_id]
    assert len(children) == 1 and children[0].state == "succeeded" and children[0].result == "xy"


def test_a_sub_task_error_reaches_the_parent_after_its_parts(streaming_pools):
    hive = streaming_pools
    received = []
    with pytest.raises(TaskFailedError, match="the model went away"):
        for part in hive.stream("relay-test", {"tokens": ["x", "FAIL"]}):
            received.append(part)
    assert received == ["[x]"]


def test_a_plain_generator_streams_its_parts_and_the_record_keeps_them_combined(streaming_pools):
    hive = streaming_pools
    stream = hive.stream("countdown-test", 5)
    assert list(stream) == [5, 4, 3, 2, 1]
    assert stream.done and stream.result() == [5, 4, 3, 2, 1]
    assert hive.task(stream.task_id).result == [5, 4, 3, 2, 1]


def test_an_async_generator_streams_text_whose_result_is_the_joined_text(streaming_pools):
    hive = streaming_pools
    stream = hive.stream("tokens-test", {"tokens": ["Hello", ", ", "world"]})
    assert list(stream) == ["Hello", ", ", "world"]
    assert hive.result(stream.task_id) == "Hello, world"


def test_async_for_over_a_submitted_handle(streaming_pools):
    hive = streaming_pools

    async def consume():
        handle = hive.submit("tokens-test", {"tokens": ["a", "b", "c"]})
        return [part async for part in handle]

    assert asyncio.run(consume()) == ["a", "b", "c"]


def test_the_task_error_comes_after_the_parts_before_it(streaming_pools):
    hive = streaming_pools
    received = []
    with pytest.raises(TaskFailedError, match="the model went away"):
        for part in hive.stream("tokens-test", {"tokens": ["one", "two", "FAIL"]}):
            received.append(part)
    assert received == ["one", "two"]


def test_a_task_that_does_not_stream_yields_its_result_as_one_part(hive):
    hive.spawn("echo", 1, pool="stream-echo-test")
    try:
        assert list(hive.stream(pool="stream-echo-test", payload={"x": 1})) == [{"x": 1}]
    finally:
        hive.stop("stream-echo-test")


def test_stopping_early_cancels_the_task_unless_detached(streaming_pools, wait_until):
    hive = streaming_pools
    payload = {"tokens": ["first", "WAIT", "never"], "wait": 30}
    stream = hive.stream("tokens-test", payload)
    for part in stream:
        assert part == "first"
        break
    assert wait_until(lambda: hive.task(stream.task_id).state == "cancelled", 30)

    detached = hive.stream("tokens-test", {"tokens": ["first", "WAIT", "last"], "wait": 0.2}, detach=True)
    with detached:
        assert next(iter(detached)) == "first"
    assert hive.result(detached.task_id, timeout=30) == "firstlast"


def test_an_idle_timeout_bounds_the_wait_for_the_next_part(streaming_pools, wait_until):
    hive = streaming_pools
    stream = hive.stream("tokens-test", {"tokens": ["first", "WAIT", "never"], "wait": 30}, idle_timeout=1.0)
    received = []
    with pytest.raises(TaskTimeoutError, match="idle_timeout"):
        for part in stream:
            received.append(part)
    assert received == ["first"]
    assert wait_until(lambda: hive.task(stream.task_id).state == "cancelled", 30)


def test_a_slow_consumer_holds_the_generator_back(streaming_pools, wait_until):
    hive = streaming_pools
    tokens = [f"t{index}" for index in range(4000)]
    stream = hive.stream("tokens-test", {"tokens": tokens})
    parts = iter(stream)
    assert next(parts) == "t0"
    # The generator runs ahead by what the buffers hold (the orchestrator's 256, the host's 256
    # and the batch on its way), then waits for this consumer: it does not finish.
    assert wait_until(lambda: (hive.task(stream.task_id).progress or 0) > 0.05, 30)
    record = hive.task(stream.task_id)
    assert record.state == "running" and record.progress < 0.5
    assert list(parts) == tokens[1:]  # reading on lets it finish, nothing lost or reordered
    assert hive.result(stream.task_id) == "".join(tokens)


def test_a_stream_whose_host_is_killed_restarts_and_tells_the_consumer(hive):
    hive.spawn(KilledOnce, 1)
    try:
        stream = hive.stream("killed-once-test", None, idle_timeout=120)
        parts = iter(stream)
        first = next(parts)
        os.kill(first["pid"], signal.SIGKILL)  # the agent's host, mid-stream
        rest = list(parts)
    finally:
        hive.stop("killed-once-test")
    assert isinstance(rest[0], StreamRestart) and rest[0].attempt == 2
    assert rest[1:] == ["attempt 2 ", "done"]
    assert hive.result(stream.task_id) == "attempt 2 done"
