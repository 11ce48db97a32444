"""``compute``: CPU-bound work whose size the payload sets.

Payload: ``{"rounds": N, "seed": "text"}`` (or just N). It hashes ``seed`` N
times with SHA-256 and returns the hex digest and the round count, so callers
can check the result (:func:`expected_digest` computes it locally).
"""

from __future__ import annotations

import hashlib
from typing import Any

from hive_ray._agent import Agent
from hive_ray._task import Task

MAX_ROUNDS = 50_000_000


def expected_digest(rounds: int, seed: str = "hive") -> str:
    digest = seed.encode()
    for _ in range(rounds):
        digest = hashlib.sha256(digest).digest()
    return digest.hex()


class ComputeAgent(Agent):
    agent_type = "compute"
    capabilities = frozenset({"compute", "hash"})

    def handle(self, task: Task) -> dict[str, Any]:
        payload = task.payload
        if isinstance(payload, int):
            payload = {"rounds": payload}
        if not isinstance(payload, dict) or not isinstance(payload.get("rounds"), int):
            raise ValueError('compute expects {"rounds": <int>, "seed": <str, optional>} or an int')
        rounds = payload["rounds"]
        if not 0 <= rounds <= MAX_ROUNDS:
            raise ValueError(f"rounds must be between 0 and {MAX_ROUNDS}, got {rounds}")
        seed = str(payload.get("seed", "hive"))
        digest = seed.encode()
        for index in range(rounds):
            digest = hashlib.sha256(digest).digest()
            if index % 10_000 == 9_999:
                if self.context.cancel_requested():
                    raise RuntimeError("cancelled")
                self.context.report_progress((index + 1) / rounds)
        return {"rounds": rounds, "seed": seed, "digest": digest.hex()}
