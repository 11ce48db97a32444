"""``research-team``: a planner, workers and a reviewer, all ``llm`` agents, through delegation.

A multi-agent example built from hive-ray's parts: the planner splits a
question into at most ``max_steps`` sub-questions (one per line), workers
answer them in parallel (``delegate_many``: each a task, supervised and
retried like any), and the reviewer writes the answer, streamed to the caller
token by token as it comes (``delegate_stream``). Payload: the question, or
``{"question": "...", "max_steps": N}``.

Every role is a task of the ``llm_type`` agent type (``llm`` by default; a
subclass names another, for another endpoint or model), with the team's task
as its parent (``metadata.parent_task_id``), so ``hive.tasks()`` and the
traces show the whole conversation.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, ClassVar

from hive_ray._agent import Agent
from hive_ray._task import Task

PLANNER = ("You plan research. Split the user's question into at most {steps} short, independent "
           "sub-questions, one per line, with nothing else.")
WORKER = "Answer the question briefly and precisely."
REVIEWER = ("You review research. Using the notes, answer the original question clearly; say where "
            "the notes disagree or fall short.")


class ResearchTeam(Agent):
    agent_type = "research-team"
    capabilities = frozenset({"research"})
    concurrent = True
    max_concurrency = 100  # each waits on its llm sub-tasks

    llm_type: ClassVar[str] = "llm"
    max_steps: ClassVar[int] = 4

    async def handle(self, task: Task) -> AsyncIterator[str]:
        question, steps = _parse(task.payload, self.max_steps)
        plan = await self.context.delegate(_chat(PLANNER.format(steps=steps), question), agent_type=self.llm_type)
        subquestions = [line.strip(" -*•\t0123456789.)") for line in str(plan).splitlines()]
        subquestions = [line for line in subquestions if line][:steps] or [question]
        answers = await self.context.delegate_many([_chat(WORKER, sub) for sub in subquestions],
                                                   agent_type=self.llm_type)
        notes = "\n\n".join(f"Q: {sub}\nA: {answer}" for sub, answer in zip(subquestions, answers, strict=True))
        review = _chat(REVIEWER, f"Question: {question}\n\nNotes:\n{notes}")
        async for token in self.context.delegate_stream(review, agent_type=self.llm_type):
            if isinstance(token, str):
                yield token


def _chat(system: str, user: str) -> dict[str, Any]:
    return {"messages": [{"role": "system", "content": system}, {"role": "user", "content": user}]}


def _parse(payload: Any, max_steps: int) -> tuple[str, int]:
    if isinstance(payload, str) and payload.strip():
        return payload, max_steps
    if isinstance(payload, dict) and isinstance(payload.get("question"), str) and payload["question"].strip():
        steps = payload.get("max_steps", max_steps)
        if isinstance(steps, int) and not isinstance(steps, bool) and 1 <= steps <= 20:
            return payload["question"], steps
    raise ValueError('research-team expects a question, or {"question": "...", "max_steps": <1..20>}')
