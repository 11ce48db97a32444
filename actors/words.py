"""``words``: streams its text back one word at a time, as a language model streams tokens.

Payload: a string, or ``{"text": "...", "delay": S}`` to wait ``S`` seconds
(at most 10) before each word. Each part is a word with the space that
follows it, so the task's result (its parts joined) is the text itself::

    for word in hive.stream("words", "the quick brown fox"):
        print(word, end="", flush=True)

Runs concurrently (up to 100 streams per agent), as an I/O-bound agent would.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from typing import Any

from hive_ray._agent import Agent
from hive_ray._task import Task


class WordsAgent(Agent):
    agent_type = "words"
    capabilities = frozenset({"stream", "text"})
    concurrent = True
    max_concurrency = 100

    async def handle(self, task: Task) -> AsyncIterator[str]:
        text, delay = _parse(task.payload)
        for word in re.findall(r"\S+\s*", text):
            if delay:
                await asyncio.sleep(delay)
            yield word


def _parse(payload: Any) -> tuple[str, float]:
    if isinstance(payload, str):
        return payload, 0.0
    if isinstance(payload, dict) and isinstance(payload.get("text"), str):
        delay = payload.get("delay", 0.0)
        if isinstance(delay, (int, float)) and not isinstance(delay, bool) and 0 <= delay <= 10:
            return payload["text"], float(delay)
    raise ValueError('words expects a string, or {"text": "<string>", "delay": <0..10 seconds>}')
