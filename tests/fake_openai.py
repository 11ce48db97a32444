"""A small OpenAI-compatible chat completions server for tests: deterministic, scriptable.

``POST /v1/chat/completions`` answers the last user message with ``echo:`` and
its words, one token per word (streamed as Server-Sent Events when asked, with
``token_delay`` seconds between tokens). A model named ``tools`` answers with
one tool call streamed in pieces. ``fail_next`` holds statuses to answer the
next requests with (a 429 carries ``Retry-After``). The server counts requests
and the streams a client closed before their end.

Run it in a thread with :func:`serving` (hosts in other processes reach it on
127.0.0.1).
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse


@dataclass
class FakeState:
    token_delay: float = 0.0
    first_token_delay: float = 0.0  # before the first token (time to first token)
    token_count: int | None = None  # answer with this many tokens ("tok") instead of the echo
    max_concurrent: int | None = None  # the limit callers should keep; requests beyond it count
    violations: int = 0
    fail_next: list[int] = field(default_factory=list)
    retry_after: str = "0.1"
    requests: int = 0
    in_flight: int = 0
    peak_in_flight: int = 0  # the most requests answered at once
    refused: int = 0
    aborted: int = 0  # streams whose client went away before the last token
    completed: int = 0


def build_app(state: FakeState) -> Any:
    app = FastAPI()

    @app.post("/v1/chat/completions")
    async def completions(request: Request) -> Any:
        body = await request.json()
        state.requests += 1
        if state.fail_next:
            status = state.fail_next.pop(0)
            state.refused += 1
            headers = {"retry-after": state.retry_after} if status == 429 else {}
            return JSONResponse({"error": {"message": f"injected {status}", "type": "fake"}}, status, headers)
        user = [m for m in body["messages"] if m.get("role") == "user"]
        words = str(user[-1]["content"] if user else "").split()
        tokens = ["echo:"] + [f" {word}" for word in words]
        if state.token_count is not None:
            tokens = ["tok "] * state.token_count
        model = body["model"]
        created = int(time.time())

        def chunk(delta: dict[str, Any], finish: str | None = None) -> str:
            return "data: " + json.dumps({
                "id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": created, "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}) + "\n\n"

        if not body.get("stream"):
            message = {"role": "assistant", "content": "".join(tokens)}
            state.completed += 1
            return {"id": "chatcmpl-fake", "object": "chat.completion", "created": created, "model": model,
                    "choices": [{"index": 0, "message": message, "finish_reason": "stop"}]}

        usage = body.get("stream_options", {}).get("include_usage")
        prompt_tokens = sum(len(str(m.get("content") or "").split()) for m in body["messages"])

        async def events() -> Any:
            finished = False
            state.in_flight += 1
            state.peak_in_flight = max(state.peak_in_flight, state.in_flight)
            if state.max_concurrent is not None and state.in_flight > state.max_concurrent:
                state.violations += 1
            try:
                if state.first_token_delay:
                    await asyncio.sleep(state.first_token_delay)
                yield chunk({"role": "assistant", "content": ""})
                if model == "tools":
                    call = {"index": 0, "id": "call_1", "type": "function",
                            "function": {"name": "lookup", "arguments": ""}}
                    yield chunk({"tool_calls": [call]})
                    for piece in ('{"city": ', '"Paris"}'):
                        yield chunk({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]})
                    yield chunk({}, "tool_calls")
                else:
                    for token in tokens:
                        if state.token_delay:
                            await asyncio.sleep(state.token_delay)
                        yield chunk({"content": token})
                    yield chunk({}, "stop")
                if usage:
                    yield "data: " + json.dumps({
                        "id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": created,
                        "model": model, "choices": [],
                        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": len(tokens),
                                  "total_tokens": prompt_tokens + len(tokens)}}) + "\n\n"
                yield "data: [DONE]\n\n"
                finished = True
                state.completed += 1
            finally:
                state.in_flight -= 1
                if not finished:
                    state.aborted += 1

        return StreamingResponse(events(), media_type="text/event-stream")

    @app.get("/stats")
    async def stats() -> dict[str, Any]:
        return {"requests": state.requests, "peak_in_flight": state.peak_in_flight,
                "violations": state.violations, "completed": state.completed, "aborted": state.aborted}

    return app


@dataclass
class FakeServer:
    state: FakeState
    base_url: str


@contextmanager
def serving() -> Iterator[FakeServer]:
    """The fake server on a free loopback port, in a thread, for the ``with`` block."""
    import uvicorn

    state = FakeState()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(build_app(state), host="127.0.0.1", port=port, log_level="warning",
                                           lifespan="off"))
    thread = threading.Thread(target=server.run, name="fake-openai", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the fake OpenAI server did not start")
        time.sleep(0.01)
    try:
        yield FakeServer(state, f"http://127.0.0.1:{port}/v1")
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def main() -> None:
    """``python -m tests.fake_openai --port P [...]``: the server in a process of its own (benchmarks)."""
    import argparse

    import uvicorn

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--first-token-delay", type=float, default=0.0)
    parser.add_argument("--token-delay", type=float, default=0.0)
    parser.add_argument("--tokens", type=int, default=None)
    parser.add_argument("--max-concurrent", type=int, default=None)
    args = parser.parse_args()
    state = FakeState(token_delay=args.token_delay, first_token_delay=args.first_token_delay,
                      token_count=args.tokens, max_concurrent=args.max_concurrent)
    uvicorn.run(build_app(state), host="127.0.0.1", port=args.port, log_level="warning", lifespan="off",
                backlog=4096, timeout_keep_alive=60)


if __name__ == "__main__":
    main()
