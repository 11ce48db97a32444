"""``llm``: chat completions from any OpenAI-compatible endpoint, streamed token by token.

vLLM, Ray Serve LLM, Ollama and the hosted APIs all speak the protocol; the
agent uses the ``openai`` package (its retries honour ``Retry-After`` on 429
and 5xx answers, with backoff). Payload: a string (one user message) or
``{"messages": [...], "model": ..., "tools": [...], "temperature": ...,
"max_tokens": ...}``. Each text delta is a part of the task's stream, so the
task's result is the whole reply; a reply that calls tools ends with one part
``{"tool_calls": [...], "finish_reason": "tool_calls"}`` (the result is then
the list of parts) for the caller to run them.

Where the endpoint is, in order: the class attributes of a subclass (one
agent type per endpoint or model), else the environment of the agent's host:
``HIVE_LLM_BASE_URL`` (or ``OPENAI_BASE_URL``), ``HIVE_LLM_MODEL``, and the
API key from the variable named by ``api_key_env`` (``OPENAI_API_KEY``). The
key is never part of a pool's spec, its journal or its API answers::

    class Planner(LLMAgent):
        agent_type = "planner"
        base_url = "http://127.0.0.1:8001/v1"    # a vLLM server
        model = "Qwen/Qwen2.5-7B-Instruct"

Cancelling or timing out a task closes its HTTP request.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from typing import Any, ClassVar

from hive_ray._agent import Agent
from hive_ray._task import Task

#: Request fields a payload may set beside ``messages`` and ``model``.
OPTIONS = ("tools", "tool_choice", "temperature", "top_p", "max_tokens", "max_completion_tokens", "stop",
           "seed", "response_format", "parallel_tool_calls", "presence_penalty", "frequency_penalty")


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

    def setup(self) -> None:
        from openai import AsyncOpenAI

        base_url = self.base_url or os.environ.get("HIVE_LLM_BASE_URL") or os.environ.get("OPENAI_BASE_URL")
        if not base_url:
            raise RuntimeError(
                f"{type(self).__name__} has no endpoint: set base_url on the class, or HIVE_LLM_BASE_URL "
                "in the environment of the cluster (e.g. http://127.0.0.1:8000/v1 for a vLLM server)")
        self.client = AsyncOpenAI(base_url=base_url, api_key=os.environ.get(self.api_key_env) or "not-needed",
                                  max_retries=self.max_retries, timeout=self.request_timeout)
        self.default_model = self.model or os.environ.get("HIVE_LLM_MODEL")

    async def teardown(self) -> None:
        client = getattr(self, "client", None)
        if client is not None:
            await client.close()

    async def handle(self, task: Task) -> AsyncIterator[Any]:
        request = chat_request(task.payload, self.default_model)
        stream = await self.client.chat.completions.create(**request, stream=True)
        calls: dict[int, dict[str, Any]] = {}
        finish_reason = None
        async with stream:  # leaving early (cancelled, timed out) closes the HTTP request
            async for chunk in stream:
                for choice in chunk.choices:
                    delta = choice.delta
                    if delta.content:
                        yield delta.content
                    for call in delta.tool_calls or ():
                        _merge_tool_call(calls, call)
                    finish_reason = choice.finish_reason or finish_reason
        if calls:
            yield {"tool_calls": [calls[index] for index in sorted(calls)], "finish_reason": finish_reason}


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


def _merge_tool_call(calls: dict[int, dict[str, Any]], delta: Any) -> None:
    """Tool calls arrive in pieces: the first names the call, the rest extend its arguments."""
    call = calls.setdefault(delta.index, {"id": None, "type": "function",
                                          "function": {"name": "", "arguments": ""}})
    if delta.id:
        call["id"] = delta.id
    if delta.function is not None:
        call["function"]["name"] += delta.function.name or ""
        call["function"]["arguments"] += delta.function.arguments or ""
