"""Language-model agents and streaming, measured side by side in one run.

A fake OpenAI-compatible server (``tests/fake_openai.py``) runs in a process of
its own: 200 ms to the first token, then 50 tokens 5 ms apart, and it counts
requests beyond 256 at once (the limit callers are told to keep).

- ``fanout_throughput@1000``: 1,000 streamed completions at once through
  ``llm`` agents (4 agents, the endpoint limited to 256 requests in flight by
  the shared limiter), read as streams by one client, completions per second;
  baseline: the same ``openai`` client calling the server directly, 256 at once.
- ``ttft_overhead_p50_ms``: time to the first token through hive-ray (submit
  to first part) minus the direct client's, p50, one completion at a time on an
  idle system (the sides alternating); the row also keeps both p50s during the
  fan-out, where waiting for the endpoint's turn dominates.
- ``rate_limit_violations``: requests the server saw beyond 256 at once while
  hive-ray ran.
- ``inflight_kib``: memory (USS) the orchestrator and hosts held per completion
  in flight, at the peak, above what they held idle.
- ``stream_part_overhead_p50_ms``: a generator agent (``words``) yielding 1,000
  small parts to ``hive.stream``, milliseconds per part; baseline: a Ray Serve
  deployment streaming the same 1,000 parts as a ``StreamingResponse`` read
  with httpx. p50 over rounds, the two sides interleaved.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from _measure import (
    WAIT_SECONDS,
    close_isolated,
    isolated_settings,
    local_ray,
    progress,
    row,
    uss_bytes,
)

ROOT = Path(__file__).resolve().parent.parent
COMPLETIONS = 1000
ENDPOINT_LIMIT = 256
AGENTS = 4
FIRST_TOKEN_SECONDS, TOKENS, TOKEN_SECONDS = 0.2, 50, 0.005
PARTS = 1000
TTFT_SAMPLES = 60


def run(quick: bool = False) -> list[dict[str, Any]]:
    rounds = 2 if quick else 5
    state = tempfile.mkdtemp(prefix="hive-bench-llm-")
    server = _FakeServer()
    try:
        with local_ray():
            return _measure(rounds, server, state)
    finally:
        server.stop()
        shutil.rmtree(state, ignore_errors=True)


def _measure(rounds: int, server: _FakeServer, state: str) -> list[dict[str, Any]]:
    from hive_ray.actors.llm import LLMAgent

    from hive_ray import Hive

    rows = []
    hive = Hive.connect(settings=isolated_settings("llm", state))
    try:
        agent = type("BenchLLM", (LLMAgent,), {
            "agent_type": "bench-llm", "base_url": server.base_url, "model": "bench", "max_retries": 0,
            "max_concurrent_requests": ENDPOINT_LIMIT})
        hive.spawn(agent, AGENTS)
        hive.spawn("words", 1)
        pids = [int(hive.statistics()["pid"])] + [a.pid for a in hive.agents("bench-llm") if a.pid]
        asyncio.run(_through_hive(hive, 20))  # warm: connections, limiter, code paths
        asyncio.run(_direct(server.base_url, 20))
        direct_rates, hive_rates, direct_ttft, hive_ttft, peaks = [], [], [], [], []
        violations_before = server.stats()["violations"]
        for number in range(rounds):
            progress(f"llm: fan-out round {number + 1} of {rounds}")
            rate, ttfts = asyncio.run(_direct(server.base_url, COMPLETIONS))
            direct_rates.append(rate)
            direct_ttft.extend(ttfts)
            idle = uss_bytes(pids)
            with _PeakMemory(pids) as peak:
                rate, ttfts = asyncio.run(_through_hive(hive, COMPLETIONS))
            peaks.append((peak.value - idle) / COMPLETIONS / 1024)
            hive_rates.append(rate)
            hive_ttft.extend(ttfts)
        violations = server.stats()["violations"] - violations_before
        rows.append(row("fanout_throughput@1000", statistics.median(hive_rates), "completions/s",
                        "the openai client calling the server directly, 256 at once",
                        statistics.median(direct_rates), goal=">= 0.9", rounds=rounds,
                        hive_rates=[round(r, 1) for r in hive_rates],
                        direct_rates=[round(r, 1) for r in direct_rates]))
        loaded_hive, loaded_direct = statistics.median(hive_ttft) * 1e3, statistics.median(direct_ttft) * 1e3
        # Time to first token on an idle system: one completion at a time, the sides alternating.
        hive_ttft, direct_ttft = [], []
        for _ in range(TTFT_SAMPLES // 2 if rounds < 5 else TTFT_SAMPLES):
            direct_ttft.extend(asyncio.run(_direct(server.base_url, 1))[1])
            hive_ttft.extend(asyncio.run(_through_hive(hive, 1))[1])
        hive_p50, direct_p50 = statistics.median(hive_ttft) * 1e3, statistics.median(direct_ttft) * 1e3
        rows.append(row("ttft_overhead_p50_ms", hive_p50 - direct_p50, "ms", goal="<= 5",
                        samples=len(hive_ttft), hive_ttft_p50_ms=round(hive_p50, 2),
                        direct_ttft_p50_ms=round(direct_p50, 2),
                        at_1000_hive_ttft_p50_ms=round(loaded_hive, 1), at_1000_direct_ttft_p50_ms=round(loaded_direct, 1)))
        rows.append(row("rate_limit_violations", violations, "requests", goal="0",
                        limit=ENDPOINT_LIMIT, requests=server.stats()["requests"]))
        rows.append(row("inflight_kib", statistics.median(peaks), "KiB/completion", rounds=rounds))
        rows.append(_part_overhead(hive, rounds))
    finally:
        close_isolated(hive)
    return rows


# ---------------------------------------------------------------------- the fan-out
async def _direct(base_url: str, count: int) -> tuple[float, list[float]]:
    from openai import AsyncOpenAI

    client = AsyncOpenAI(base_url=base_url, api_key="bench", max_retries=0, timeout=WAIT_SECONDS)
    gate = asyncio.Semaphore(ENDPOINT_LIMIT)
    ttfts: list[float] = []

    async def one() -> None:
        started = time.perf_counter()  # before the gate: a queued request's wait counts, as in hive-ray
        async with gate:
            stream = await client.chat.completions.create(
                model="bench", messages=[{"role": "user", "content": "go"}], stream=True)
            first = None
            async with stream:
                async for chunk in stream:
                    if first is None and chunk.choices and chunk.choices[0].delta.content:
                        first = time.perf_counter() - started
            ttfts.append(first if first is not None else float("nan"))

    started = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(count)))
    seconds = time.perf_counter() - started
    await client.close()
    return count / seconds, ttfts


async def _through_hive(hive: Any, count: int) -> tuple[float, list[float]]:
    ttfts: list[float] = []
    payload = {"messages": [{"role": "user", "content": "go"}]}

    async def one() -> None:
        started = time.perf_counter()
        stream = await asyncio.to_thread(hive.stream, "bench-llm", payload)
        first = None
        async for part in stream:
            if first is None and isinstance(part, str) and part:
                first = time.perf_counter() - started
        ttfts.append(first if first is not None else float("nan"))

    started = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(count)))
    return count / (time.perf_counter() - started), ttfts


class _PeakMemory:
    """The highest summed USS of some processes, sampled every 0.2 s while the block runs."""

    def __init__(self, pids: list[int]) -> None:
        self.pids = pids
        self.value = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> _PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()

    def _sample(self) -> None:
        while not self._stop.wait(0.2):
            self.value = max(self.value, uss_bytes(self.pids))


# ---------------------------------------------------------------------- parts
def _part_overhead(hive: Any, rounds: int) -> dict[str, Any]:
    import httpx
    from ray import serve

    text = " ".join(f"w{index}" for index in range(PARTS))
    port = _free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(_streaming_app(), name="bench-stream", route_prefix="/bench-stream", blocking=False)
    url = f"http://127.0.0.1:{port}/bench-stream/parts"
    _wait_for(url)
    hive_ms, serve_ms = [], []
    try:
        with httpx.Client(timeout=WAIT_SECONDS) as client:
            for _ in range(2):  # warm both
                _serve_parts(client, url)
                list(hive.stream("words", text))
            for number in range(max(5, rounds * 5)):
                progress(f"llm: parts round {number + 1}")
                started = time.perf_counter()
                parts = list(hive.stream("words", text))
                hive_ms.append((time.perf_counter() - started) * 1e3 / len(parts))
                started = time.perf_counter()
                count = _serve_parts(client, url)
                serve_ms.append((time.perf_counter() - started) * 1e3 / count)
    finally:
        serve.delete("bench-stream")
    return row("stream_part_overhead_p50_ms", statistics.median(hive_ms), "ms/part",
               "a Ray Serve StreamingResponse of the same parts, read with httpx", statistics.median(serve_ms),
               goal="<= 1.2", parts=PARTS, rounds=len(hive_ms))


def _streaming_app() -> Any:
    from fastapi import FastAPI
    from fastapi.responses import StreamingResponse
    from ray import serve

    app = FastAPI()

    @serve.deployment(max_ongoing_requests=100)
    @serve.ingress(app)
    class Parts:
        @app.get("/parts")
        def parts(self) -> StreamingResponse:
            async def words() -> Any:
                for index in range(PARTS):
                    yield f"w{index} \n"

            return StreamingResponse(words(), media_type="text/plain")

    return Parts.bind()


def _serve_parts(client: Any, url: str) -> int:
    count = 0
    with client.stream("GET", url) as response:
        for line in response.iter_lines():
            if line:
                count += 1
    return count


# ---------------------------------------------------------------------- the fake server
class _FakeServer:
    def __init__(self) -> None:
        self.port = _free_port()
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.fake_openai", "--port", str(self.port),
             "--first-token-delay", str(FIRST_TOKEN_SECONDS), "--token-delay", str(TOKEN_SECONDS),
             "--tokens", str(TOKENS), "--max-concurrent", str(ENDPOINT_LIMIT)],
            cwd=ROOT, env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait_for(f"http://127.0.0.1:{self.port}/stats")

    def stats(self) -> dict[str, Any]:
        import httpx

        return httpx.get(f"http://127.0.0.1:{self.port}/stats", timeout=30).json()

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _wait_for(url: str, seconds: float = 60.0) -> None:
    import httpx

    deadline = time.monotonic() + seconds
    while True:
        try:
            if httpx.get(url, timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url} did not answer within {seconds:g} s")
        time.sleep(0.1)
