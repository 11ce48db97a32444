"""``llm``: chat completions from any OpenAI-compatible endpoint, streamed token by token.

vLLM, Ray Serve LLM, Ollama and the hosted APIs all speak the protocol; the
agent uses the ``openai`` package (its retries honour ``Retry-After`` on 429
and 5xx answers, with backoff). Payload: a string (one user message) or
``{"messages": [...], "model": ..., "tools": [...], "temperature": ...,
"max_tokens": ...}``. Each text delta is a part of the task's stream, so the
task's result is the whole reply; a reply that calls tools ends with one part
``{"tool_calls": [...], "finish_reason": "tool_calls"}`` (the result is then
the list of parts) for the caller to run them.

Where the endpoint is, in order: the pool's config (``hive.spawn("llm",
config={"base_url": ..., "model": ...})``, or ``"config"`` in ``POST
/v1/pools``; see ``CONFIG_KEYS``), the class attributes of a subclass (one
agent type per endpoint or model), else the environment of the agent's host:
``HIVE_LLM_BASE_URL`` (or ``OPENAI_BASE_URL``), ``HIVE_LLM_MODEL``, and the
API key from the variable named by ``api_key_env`` (``OPENAI_API_KEY``). The
key is never part of a pool's spec, its journal or its API answers::

    class Planner(LLMAgent):
        agent_type = "planner"
        base_url = "http://127.0.0.1:8001/v1"    # a vLLM server
        model = "Qwen/Qwen2.5-7B-Instruct"

Limits of an endpoint (requests in flight, per minute, tokens per minute) are
shared by every agent of every pool that calls it, on every node: set
``max_concurrent_requests``, ``requests_per_minute`` and ``tokens_per_minute``
on the class (or ``HIVE_LLM_MAX_CONCURRENT``, ``HIVE_LLM_REQUESTS_PER_MINUTE``,
``HIVE_LLM_TOKENS_PER_MINUTE``). Calls beyond them wait their turn, first come
first served (:mod:`hive_ray._runtime._limiter`).

Cancelling or timing out a task closes its HTTP request.

Every completion's tokens are counted in its task's ``usage`` (with a cost when
the ``llm_prices`` setting prices the model) and in the totals per pool,
endpoint and model (``/metrics``, the performance report, the dashboard).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from typing import Any, ClassVar

from hive_ray._agent import Agent
from hive_ray._rate_limits import Limits
from hive_ray._task import Task

#: Request fields a payload may set beside ``messages`` and ``model``.
OPTIONS = ("tools", "tool_choice", "temperature", "top_p", "max_tokens", "max_completion_tokens", "stop",
           "seed", "response_format", "parallel_tool_calls", "presence_penalty", "frequency_penalty")


def _text(value: Any) -> bool:
    return isinstance(value, str) and bool(value)


def _whole(least: int) -> Any:
    return lambda value: isinstance(value, int) and not isinstance(value, bool) and value >= least


def _limit_value(value: Any) -> bool:
    return value is None or _whole(1)(value)


def _seconds(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0


#: What a pool's config may set (``hive.spawn("llm", config={...})``, or ``"config"`` in
#: ``POST /v1/pools``): the check of each value and what it must be. The key itself never:
#: name its variable (``api_key_env``).
CONFIG_KEYS: dict[str, tuple[Any, str]] = {
    "base_url": (_text, "a non-empty string"), "model": (_text, "a non-empty string"),
    "api_key_env": (_text, "a non-empty string"), "max_retries": (_whole(0), "a whole number of at least 0"),
    "request_timeout": (_seconds, "a number of seconds above 0"),
    "max_concurrent_requests": (_limit_value, "a whole number of at least 1, or null"),
    "requests_per_minute": (_limit_value, "a whole number of at least 1, or null"),
    "tokens_per_minute": (_limit_value, "a whole number of at least 1, or null")}


class LLMAgent(Agent):
    agent_type = "llm"
    capabilities = frozenset({"llm", "chat"})
    concurrent = True
    max_concurrency = 256  # requests in flight per agent: waiting on a model costs nothing here

    base_url: ClassVar[str | None] = None
    model: ClassVar[str | None] = None
    api_key_env: ClassVar[str] = "OPENAI_API_KEY"
    max_retries: ClassVar[int] = 4  # on 429, 5xx and broken connections, with backoff
    request_timeout: ClassVar[float] = 600.0  # seconds per request; a task's own timeout is shorter
    # Limits of the endpoint, shared by every agent of every pool that calls it (None: none;
    # else HIVE_LLM_MAX_CONCURRENT, HIVE_LLM_REQUESTS_PER_MINUTE, HIVE_LLM_TOKENS_PER_MINUTE).
    max_concurrent_requests: ClassVar[int | None] = None
    requests_per_minute: ClassVar[int | None] = None
    tokens_per_minute: ClassVar[int | None] = None

    def setup(self) -> None:
        from openai import AsyncOpenAI

        self._apply_pool_config()
        base_url = self.base_url or os.environ.get("HIVE_LLM_BASE_URL") or os.environ.get("OPENAI_BASE_URL")
        if not base_url:
            raise RuntimeError(
                f"{type(self).__name__} has no endpoint: give the pool a config with base_url, set "
                "base_url on the class, or HIVE_LLM_BASE_URL in the environment of the cluster "
                "(e.g. http://127.0.0.1:8000/v1 for a vLLM server)")
        self.client = AsyncOpenAI(base_url=base_url, api_key=os.environ.get(self.api_key_env) or "not-needed",
                                  max_retries=self.max_retries, timeout=self.request_timeout)
        self.default_model = self.model or os.environ.get("HIVE_LLM_MODEL")
        limits = Limits(max_concurrent=_limit(self.max_concurrent_requests, "HIVE_LLM_MAX_CONCURRENT"),
                        requests_per_minute=_limit(self.requests_per_minute, "HIVE_LLM_REQUESTS_PER_MINUTE"),
                        tokens_per_minute=_limit(self.tokens_per_minute, "HIVE_LLM_TOKENS_PER_MINUTE"))
        self.limiter = None
        if limits != Limits():
            from hive_ray._runtime._limiter import endpoint_limiter

            self.limiter = endpoint_limiter(base_url, limits, lease_seconds=self.request_timeout + 60.0)

    def _apply_pool_config(self) -> None:
        """The pool's config (``"config": {"base_url": ..., "model": ...}``) over the class's attributes."""
        config = dict(self.context.config)
        unknown = sorted(set(config) - set(CONFIG_KEYS))
        if unknown:
            raise ValueError(f"the llm agent's pool config has unknown key(s) {', '.join(unknown)}; "
                             f"it takes {', '.join(CONFIG_KEYS)}")
        for key, value in config.items():
            valid, kind = CONFIG_KEYS[key]
            if not valid(value):
                raise ValueError(f"the llm agent's pool config: {key} must be {kind}, not {value!r}")
            setattr(self, key, value)

    async def teardown(self) -> None:
        client = getattr(self, "client", None)
        if client is not None:
            await client.close()

    async def handle(self, task: Task) -> AsyncIterator[Any]:
        request = chat_request(task.payload, self.default_model)
        lease = await self._acquire(request)
        usage = None
        try:
            stream = await self.client.chat.completions.create(
                **request, stream=True, stream_options={"include_usage": True})
            calls: dict[int, dict[str, Any]] = {}
            finish_reason = None
            async with stream:  # leaving early (cancelled, timed out) closes the HTTP request
                async for chunk in stream:
                    if chunk.usage is not None:
                        usage = chunk.usage
                    for choice in chunk.choices:
                        delta = choice.delta
                        if delta.content:
                            yield delta.content
                        for call in delta.tool_calls or ():
                            _merge_tool_call(calls, call)
                        finish_reason = choice.finish_reason or finish_reason
            if calls:
                yield {"tool_calls": [calls[index] for index in sorted(calls)], "finish_reason": finish_reason}
        finally:
            # Counted even when it failed or was cut short: the endpoint may bill it (tokens
            # are then unknown, 0, unless the endpoint sent its usage before the end).
            with contextlib.suppress(RuntimeError):  # closed outside its task (by the garbage collector)
                self.context.record_usage(
                    model=request["model"], endpoint=str(self.client.base_url),
                    prompt_tokens=int(getattr(usage, "prompt_tokens", 0) or 0),
                    completion_tokens=int(getattr(usage, "completion_tokens", 0) or 0))
            if lease is not None:
                self.limiter.release.remote(lease, None if usage is None else usage.total_tokens)

    async def _acquire(self, request: dict[str, Any]) -> int | None:
        """Wait for the endpoint's shared limits (first come, first served); a lease or None."""
        if self.limiter is None:
            return None
        waiting = self.limiter.acquire.remote(estimate_tokens(request))
        try:
            return await waiting
        except asyncio.CancelledError:
            import ray

            with contextlib.suppress(Exception):  # already granted or gone: the lease expires anyway
                ray.cancel(waiting)  # leave the queue: the task was cancelled or timed out
            raise


def chat_request(payload: Any, default_model: str | None) -> dict[str, Any]:
    """The request a payload asks for; ValueError says what is wrong with it."""
    if isinstance(payload, str):
        payload = {"messages": [{"role": "user", "content": payload}]}
    if not isinstance(payload, dict) or not isinstance(payload.get("messages"), list) or not payload["messages"]:
        raise ValueError('llm expects a string, or {"messages": [{"role": "user", "content": "..."}], ...}')
    unknown = sorted(set(payload) - {"messages", "model", *OPTIONS})
    if unknown:
        raise ValueError(f"llm does not know {', '.join(unknown)}; it takes messages, model and "
                         f"{', '.join(OPTIONS)}")
    model = payload.get("model") or default_model
    if not model:
        raise ValueError("no model: give one in the payload, on the agent class, or in HIVE_LLM_MODEL")
    request = {"messages": payload["messages"], "model": model}
    request.update({key: payload[key] for key in OPTIONS if key in payload})
    return request


def estimate_tokens(request: dict[str, Any]) -> int:
    """Tokens a request may use, before it runs: its text at about 4 characters a token,
    plus the completion it allows (256 if it sets no maximum). Corrected when it ends."""
    text = sum(len(str(message.get("content") or "")) for message in request["messages"])
    completion = request.get("max_completion_tokens") or request.get("max_tokens") or 256
    return text // 4 + 1 + int(completion)


def _limit(value: int | None, variable: str) -> int | None:
    if value is not None:
        return value
    raw = os.environ.get(variable)
    if raw is None or raw == "":
        return None
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"{variable} must be a whole number of at least 1, not {raw!r}") from None


def _merge_tool_call(calls: dict[int, dict[str, Any]], delta: Any) -> None:
    """Tool calls arrive in pieces: the first names the call, the rest extend its arguments."""
    call = calls.setdefault(delta.index, {"id": None, "type": "function",
                                          "function": {"name": "", "arguments": ""}})
    if delta.id:
        call["id"] = delta.id
    if delta.function is not None:
        call["function"]["name"] += delta.function.name or ""
        call["function"]["arguments"] += delta.function.arguments or ""
