"""The ``llm`` agent against a fake OpenAI-compatible server (tests/fake_openai.py), on real Ray."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from hive_ray.actors.llm import LLMAgent, chat_request

from hive_ray import TaskFailedError, TaskTimeoutError
from tests.fake_openai import FakeServer, serving

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeServer]:
    with serving() as server:
        yield server


@pytest.fixture(scope="module")
def llm(hive, fake) -> Iterator[Any]:
    # One agent type per endpoint: a subclass names it (built here, so it travels by value).
    agent = type("FakeLLM", (LLMAgent,), {"agent_type": "llm-test", "base_url": fake.base_url,
                                           "model": "fake", "max_retries": 2})
    hive.spawn(agent, 1)
    yield hive
    hive.stop("llm-test")


@pytest.fixture(autouse=True)
def _clean(fake) -> None:
    fake.state.fail_next.clear()
    fake.state.token_delay = 0.0


def test_tokens_stream_through_and_the_result_is_the_reply(llm):
    stream = llm.stream("llm-test", "hello there world")
    assert list(stream) == ["echo:", " hello", " there", " world"]
    assert llm.result(stream.task_id) == "echo: hello there world"


def stream_parts(hive: Any, payload: Any) -> list[Any]:
    return list(hive.stream("llm-test", payload))


def test_tool_calls_are_passed_to_the_caller(llm):
    parts = stream_parts(llm, {"messages": [{"role": "user", "content": "weather?"}], "model": "tools",
                               "tools": [{"type": "function", "function": {"name": "lookup", "parameters": {}}}]})
    call = parts[-1]
    assert call["finish_reason"] == "tool_calls"
    assert call["tool_calls"] == [{"id": "call_1", "type": "function",
                                   "function": {"name": "lookup", "arguments": '{"city": "Paris"}'}}]


def test_a_429_with_retry_after_is_retried(llm, fake):
    before = fake.state.requests
    fake.state.fail_next[:] = [429, 503]
    assert llm.run("llm-test", "again please") == "echo: again please"
    assert fake.state.requests - before == 3  # refused twice, answered the third time


def test_an_endpoint_that_keeps_failing_fails_the_task_with_its_error(llm, fake):
    fake.state.fail_next[:] = [500] * 10
    with pytest.raises(TaskFailedError, match="injected 500"):
        llm.run("llm-test", "doomed")


def test_a_timeout_closes_the_request(llm, fake, wait_until):
    fake.state.token_delay = 1.0
    aborted = fake.state.aborted
    with pytest.raises(TaskTimeoutError):
        llm.run("llm-test", "one two three four five six", timeout=1.5)
    assert wait_until(lambda: fake.state.aborted == aborted + 1, 30)  # the server saw the client leave


def test_cancelling_a_stream_closes_the_request(llm, fake, wait_until):
    fake.state.token_delay = 0.5
    aborted = fake.state.aborted
    stream = llm.stream("llm-test", "a b c d e f g h i j")
    for part in stream:
        if part.strip():
            break  # leaving the loop cancels the task
    assert wait_until(lambda: llm.task(stream.task_id).state == "cancelled", 30)
    assert wait_until(lambda: fake.state.aborted == aborted + 1, 30)


@pytest.mark.parametrize(("payload", "message"), [
    (42, "llm expects a string"),
    ({"messages": []}, "llm expects a string"),
    ({"messages": [{"role": "user", "content": "x"}], "temprature": 1}, "does not know temprature"),
])
def test_bad_payloads_say_what_is_wrong(payload, message):
    with pytest.raises(ValueError, match=message):
        chat_request(payload, "fake")


def test_a_request_needs_a_model():
    with pytest.raises(ValueError, match="no model"):
        chat_request("hi", None)
    assert chat_request({"messages": [{"role": "user", "content": "x"}], "temperature": 0}, "m") == {
        "messages": [{"role": "user", "content": "x"}], "model": "m", "temperature": 0}


def test_two_pools_share_the_endpoints_concurrency_limit(hive, fake):
    # Two agent types (two pools) calling one endpoint, limited to 2 requests at once in all.
    def limited(name: str) -> type:
        return type(name, (LLMAgent,), {"agent_type": name.lower(), "base_url": fake.base_url,
                                        "model": "fake", "max_concurrent_requests": 2})

    pools = [limited("PlannerTest"), limited("ReviewerTest")]
    for agent in pools:
        hive.spawn(agent, 1)
    try:
        fake.state.token_delay = 0.05
        fake.state.peak_in_flight = 0
        handles = [hive.submit(agent.agent_type, f"question {index} a b c")
                   for index in range(4) for agent in pools]
        results = [handle.result(timeout=120) for handle in handles]
        assert all(result.startswith("echo: question") for result in results)
        assert fake.state.peak_in_flight == 2  # never more, across both pools; and they did overlap
    finally:
        for agent in pools:
            hive.stop(agent.agent_type)


def test_a_research_team_plans_delegates_reviews_and_streams_the_review(llm, fake):
    from hive_ray.actors.team import ResearchTeam

    team = type("TeamTest", (ResearchTeam,), {"agent_type": "team-test", "llm_type": "llm-test"})
    llm.spawn(team, 1)
    try:
        requests = fake.state.requests
        stream = llm.stream("team-test", "How do actor runtimes place agents?")
        tokens = list(stream)
        assert len(tokens) > 5 and tokens[0] == "echo:"  # the reviewer's reply, token by token
        answer = llm.result(stream.task_id)
        assert answer.startswith("echo: Question: How do actor runtimes place agents?")
        assert "Notes:" in answer and "A: echo:" in answer  # the worker's answer reached the reviewer
        roles = [t for t in llm.tasks(pool="llm-test", limit=50)
                 if t.metadata.get("parent_task_id") == stream.task_id]
        assert len(roles) == 3 and fake.state.requests - requests == 3  # planner, one worker, reviewer
    finally:
        llm.stop("team-test")
