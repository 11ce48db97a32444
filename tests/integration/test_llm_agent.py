"""The ``llm`` agent against a fake OpenAI-compatible server (tests/fake_openai.py), on real Ray."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from hive_ray.actors.llm import LLMAgent, chat_request

from hive_ray import TaskFailedError, TaskTimeoutError
from tests.fake_openai import FakeServer, serving
from tests.integration.test_api_support import api  # noqa: F401 - the session's API app

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


def samples(text: str) -> dict[tuple[str, frozenset], float]:
    """A Prometheus scrape as {(sample name, its labels): value}."""
    from prometheus_client.parser import text_string_to_metric_families

    return {(sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def test_each_task_counts_its_tokens_and_cost_and_the_totals_show_them(llm, fake, api):  # noqa: F811
    import httpx

    task = llm.submit("llm-test", "count these four words")
    assert task.result(timeout=60) == "echo: count these four words"
    usage = llm.task(task.task_id).usage
    # The fake server counts a word as a token: 4 prompt words; "echo:" and 4 words back.
    assert (usage.requests, usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (1, 4, 5, 9)
    [model] = usage.models
    assert (model.endpoint, model.model) == (fake.base_url.rstrip("/"), "fake")
    assert usage.cost_usd == pytest.approx((4 * 1.0 + 5 * 2.0) / 1e6)  # the session's llm_prices
    with httpx.Client(base_url=api.base_url, headers=api.headers("read"), timeout=30) as client:
        record = client.get(f"/v1/tasks/{task.task_id}").json()
        assert record["usage"]["total_tokens"] == 9 and record["usage"]["models"][0]["model"] == "fake"
        metrics = client.get("/metrics").text
        overview = client.get("/v1/overview").json()
    labels = {"pool": "llm-test", "endpoint": fake.base_url.rstrip("/"), "model": "fake"}
    scraped = samples(metrics)
    assert scraped["hive_model_tokens_total", frozenset({**labels, "kind": "completion"}.items())] >= 5
    assert scraped["hive_model_requests_total", frozenset(labels.items())] >= 1
    assert scraped["hive_model_cost_usd_total", frozenset(labels.items())] > 0
    [row] = [row for row in overview["usage"] if (row["pool"], row["model"]) == ("llm-test", "fake")]
    assert row["completion_tokens"] >= 5 and row["cost_usd"] > 0


def test_a_failed_call_still_counts_its_request(llm, fake):
    fake.state.fail_next[:] = [500] * 10
    task = llm.submit("llm-test", "doomed again")
    with pytest.raises(TaskFailedError):
        task.result(timeout=60)
    usage = llm.task(task.task_id).usage
    assert (usage.requests, usage.total_tokens, usage.cost_usd) == (1, 0, 0.0)  # the request, no tokens


def test_an_endpoints_shared_limits_show_in_metrics(hive, fake, api):  # noqa: F811
    import httpx

    agent = type("MeteredTest", (LLMAgent,), {"agent_type": "metered-test", "base_url": fake.base_url,
                                              "model": "fake", "max_concurrent_requests": 3})
    hive.spawn(agent, 1)
    try:
        assert hive.run("metered-test", "hello") == "echo: hello"
        with httpx.Client(base_url=api.base_url, headers=api.headers("read"), timeout=30) as client:
            metrics = client.get("/metrics").text
            overview = client.get("/v1/overview").json()
        endpoint = fake.base_url.rstrip("/")
        scraped = samples(metrics)
        assert scraped["hive_endpoint_limit", frozenset({"endpoint": endpoint, "limit": "max_concurrent"}.items())] == 3
        assert scraped["hive_endpoint_requests_waiting", frozenset({"endpoint": endpoint}.items())] == 0
        assert scraped["hive_endpoint_requests_granted_total", frozenset({"endpoint": endpoint}.items())] >= 1
        [limiter] = [each for each in overview["endpoints"] if each["endpoint"] == endpoint]
        assert limiter["granted"] >= 1 and limiter["in_flight"] == 0
    finally:
        hive.stop("metered-test")


def test_a_pool_config_names_the_endpoint_and_model_over_http(fake, api):  # noqa: F811
    import httpx

    with httpx.Client(base_url=api.base_url, headers=api.headers("admin"), timeout=60) as client:
        created = client.post("/v1/pools", json={
            "name": "llm-configured", "agent_type": "llm", "count": 1,
            "config": {"base_url": fake.base_url, "model": "fake", "max_retries": 0}})
        assert created.status_code == 201, created.text
        try:
            done = client.post("/v1/tasks", params={"wait": 10},
                               json={"pool": "llm-configured", "payload": "configured by the pool"})
            assert done.status_code == 200, done.text
            assert done.json()["result"] == "echo: configured by the pool"
            assert client.get("/v1/pools/llm-configured").json()["spec"]["config"]["model"] == "fake"
            # A secret is refused before anything starts, with what to do instead.
            refused = client.post("/v1/pools", json={"name": "llm-secret", "agent_type": "llm",
                                                     "config": {"base_url": fake.base_url, "api_key": "sk-1"}})
            assert refused.status_code == 422 and "api_key_env" in refused.text
        finally:
            client.delete("/v1/pools/llm-configured")


def test_an_unknown_config_key_fails_the_agents_setup_with_the_keys_it_takes(hive, fake):
    from hive_ray import HiveError

    with pytest.raises(HiveError, match="unknown key.*modle.*base_url"):
        hive.spawn("llm", 1, pool="llm-typo", config={"base_url": fake.base_url, "modle": "fake"},
                   wait_seconds=60)
    assert "llm-typo" not in [pool.name for pool in hive.pools()]  # nothing was left running


@pytest.mark.parametrize(("config", "message"), [
    ({"model": ""}, "model must be a non-empty string"),
    ({"max_retries": -1}, "max_retries must be a whole number of at least 0"),
    ({"request_timeout": None}, "request_timeout must be a number of seconds above 0"),
    ({"max_concurrent_requests": 2.5}, "max_concurrent_requests must be a whole number of at least 1"),
    ({"tokens_per_minute": True}, "tokens_per_minute must be a whole number of at least 1"),
])
def test_a_bad_pool_config_value_says_what_it_must_be(config, message):
    from hive_ray._agent import AgentContext

    agent = LLMAgent(AgentContext(agent_id="a", pool="p", agent_type="llm", config=config))
    with pytest.raises(ValueError, match=message):
        agent._apply_pool_config()


def test_a_good_pool_config_sets_the_agents_endpoint():
    from hive_ray._agent import AgentContext

    agent = LLMAgent(AgentContext(agent_id="a", pool="p", agent_type="llm", config={
        "base_url": "http://e/v1", "model": "m", "max_retries": 0, "request_timeout": 2.5,
        "requests_per_minute": None}))
    agent._apply_pool_config()
    assert (agent.base_url, agent.model, agent.max_retries, agent.request_timeout) == ("http://e/v1", "m", 0, 2.5)
