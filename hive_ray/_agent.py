"""The agent programming model: subclass :class:`Agent`, implement ``handle``.

An agent is an object with state that lives as long as the agent; hive-ray
runs it inside a Ray actor and feeds it one task at a time (or several at once
when the class sets ``concurrent = True``). ``handle`` may be a plain or an
``async`` method. Through ``self.context`` an agent delegates sub-tasks to
other agents and reports progress::

    class Summarise(Agent):
        agent_type = "summarise"
        capabilities = frozenset({"text"})

        async def handle(self, task):
            parts = await self.context.delegate_many(
                [{"payload": chunk} for chunk in task.payload], agent_type="echo")
            self.context.report_progress(1.0, "combined")
            return " ".join(parts)
"""

from __future__ import annotations

import contextvars
from collections.abc import AsyncIterator, Awaitable, Iterable, Mapping
from types import MappingProxyType
from typing import Any, ClassVar

from hive_ray._task import Task
from hive_ray._usage import UsageLine, merge_lines, usage_line

#: The task whose handler is running in this asyncio task or thread.
current_task_id: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "hive_current_task_id", default=None
)


#: Tasks whose usage an agent keeps until their outcome takes it (see ``record_usage``).
MAX_UNCLAIMED_USAGE = 10_000
_NO_CONFIG: Mapping[str, Any] = MappingProxyType({})


class AgentContext:
    """What an agent can do beyond its own state: delegate, report progress, know itself.

    The runtime builds one per agent; tests may build one with a fake
    ``delegate_function`` to run an agent without Ray.
    """

    def __init__(
        self,
        *,
        agent_id: str,
        pool: str,
        agent_type: str,
        submitter: Any = None,
        progress_reporter: Any = None,
        streamer: Any = None,
        config: Mapping[str, Any] | None = None,
        teller: Any = None,
        publisher: Any = None,
    ) -> None:
        self.agent_id = agent_id
        #: The pool's ``config`` (PoolSpec.config), read-only: settings its agents share (one
        #: mapping for all the agents of a host: a packed host holds thousands).
        self.config: Mapping[str, Any] = (config if isinstance(config, MappingProxyType)
                                          else MappingProxyType(dict(config)) if config else _NO_CONFIG)
        self.pool = pool
        self.agent_type = agent_type
        self._submitter = submitter
        self._streamer = streamer
        self._teller = teller
        self._publisher = publisher
        self._progress_reporter = progress_reporter
        self.cancelled_tasks: set[str] = set()
        self._usage: dict[str, list[UsageLine]] | None = None  # task id -> model calls it reported
        self._states: dict[str, Any] | None = None  # task id -> the virtual agent state its turn left

    async def delegate(
        self,
        payload: Any = None,
        *,
        agent_type: str | None = None,
        capability: str | None = None,
        pool: str | None = None,
        priority: int = 0,
        timeout: float | None = None,
        affinity_key: str | None = None,
        metadata: dict[str, str] | None = None,
    ) -> Any:
        """Run one sub-task on another agent and return its result.

        Raises :class:`hive_ray.TaskError` subclasses when the sub-task fails.
        """
        [result] = await self.delegate_many(
            [payload],
            agent_type=agent_type,
            capability=capability,
            pool=pool,
            priority=priority,
            timeout=timeout,
            affinity_key=affinity_key,
            metadata=metadata,
        )
        return result

    async def delegate_many(
        self,
        payloads: Iterable[Any],
        *,
        agent_type: str | None = None,
        capability: str | None = None,
        pool: str | None = None,
        priority: int = 0,
        timeout: float | None = None,
        affinity_key: str | None = None,
        metadata: dict[str, str] | None = None,
    ) -> list[Any]:
        """Run sub-tasks in parallel on other agents; results come back in input order."""
        if self._submitter is None:
            raise RuntimeError(
                "this agent has no runtime to delegate through; it runs outside hive-ray. "
                "Give AgentContext a submitter, or run the agent with Hive.spawn()."
            )
        template = _sub_task(agent_type, capability, pool, priority, timeout, affinity_key, metadata)
        return await self._submitter(template, list(payloads))

    def delegate_stream(
        self,
        payload: Any = None,
        *,
        agent_type: str | None = None,
        capability: str | None = None,
        pool: str | None = None,
        priority: int = 0,
        timeout: float | None = None,
        affinity_key: str | None = None,
        metadata: dict[str, str] | None = None,
    ) -> AsyncIterator[Any]:
        """Run one sub-task and iterate its parts as its agent yields them (``async for``).

        A generator handler can pass them on (``async for part in ...: yield part``).
        The sub-task's error is raised after the parts before it; leaving the loop
        early (or this task being cancelled) cancels the sub-task. A
        :class:`hive_ray.StreamRestart` comes before the parts of a run after a lost host.
        """
        if self._streamer is None:
            raise RuntimeError(
                "this agent has no runtime to delegate through; it runs outside hive-ray. "
                "Give AgentContext a streamer, or run the agent with Hive.spawn()."
            )
        template = _sub_task(agent_type, capability, pool, priority, timeout, affinity_key, metadata)
        return self._streamer(template, payload)

    def report_progress(self, fraction: float, message: str | None = None) -> None:
        """Tell watchers how far the current task is (0.0 to 1.0). Never blocks."""
        task_id = current_task_id.get()
        if task_id is None or self._progress_reporter is None:
            return
        self._progress_reporter(task_id, max(0.0, min(1.0, float(fraction))), message)

    def record_usage(self, *, model: str, prompt_tokens: int = 0, completion_tokens: int = 0,
                     endpoint: str | None = None, requests: int = 1) -> None:
        """Count a model call in the current task's ``usage`` (and in the totals per pool,
        endpoint and model that ``/metrics`` shows). ``endpoint`` is the base URL called
        (credentials and query are dropped). The ``llm`` agent calls this for you.

        Raises:
            ValueError: a count that is not a whole number of at least 0, or no model.
            RuntimeError: called outside a task's handler.
        """
        line = usage_line(endpoint=endpoint, model=model, prompt_tokens=prompt_tokens,
                          completion_tokens=completion_tokens, requests=requests)
        task_id = current_task_id.get()
        if task_id is None:
            raise RuntimeError("record_usage counts a model call of the task being handled; call it "
                               "from handle() (or code it calls), not from setup() or a background task")
        if self._usage is None:
            self._usage = {}
        lines = self._usage.get(task_id)
        if lines is None:
            if len(self._usage) >= MAX_UNCLAIMED_USAGE:
                # Lines of tasks that ended long ago (a background task of a handler kept
                # counting): never claimed by an outcome, so they go, oldest first.
                del self._usage[next(iter(self._usage))]
            lines = self._usage[task_id] = []
        lines.append(line)

    def take_usage(self, task_id: str) -> list[UsageLine] | None:
        """The usage reported for ``task_id`` so far, removed (the host sends it with the outcome)."""
        if not self._usage:
            return None
        lines = self._usage.pop(task_id, None)
        return merge_lines(lines) if lines else None

    def agent(self, agent_type: str, key: str) -> AgentRef:
        """A reference to the virtual agent ``(agent_type, key)``: ``await ref.ask(message)``,
        ``await ref.tell(message)``. Nothing is created until a message arrives."""
        return AgentRef(self, agent_type, key)

    async def publish(self, topic: str, message: Any = None, *, source: str | None = None,
                      message_id: str | None = None) -> dict[str, Any]:
        """Publish ``message`` to ``topic``: every subscribed virtual agent gets it (see
        :meth:`hive_ray.Hive.publish`). Returns once every delivery is accepted."""
        if self._publisher is None:
            raise RuntimeError("this agent has no runtime to publish through; it runs outside hive-ray")
        return await self._publisher(topic, message, source, message_id)

    def attach_state(self, task_id: str, save: Any) -> None:
        """Send a virtual agent's new state with ``task_id``'s outcome (the shard calls this)."""
        if self._states is None:
            self._states = {}
        self._states[task_id] = save

    def take_state(self, task_id: str) -> Any:
        """The state attached to ``task_id``'s outcome, removed (None when there is none)."""
        return self._states.pop(task_id, None) if self._states else None

    def cancel_requested(self) -> bool:
        """Whether the current task was cancelled: long sync handlers should check it."""
        task_id = current_task_id.get()
        return task_id is not None and task_id in self.cancelled_tasks


class AgentRef:
    """A virtual agent as another agent addresses it (``self.context.agent(type, key)``)."""

    __slots__ = ("_context", "agent_type", "key")

    def __init__(self, context: AgentContext, agent_type: str, key: str) -> None:
        from hive_ray._virtual import check_key

        self._context = context
        self.agent_type = agent_type
        self.key = check_key(key)

    async def ask(self, message: Any = None, *, timeout: float | None = None,
                  metadata: dict[str, str] | None = None) -> Any:
        """Send ``message`` and return the agent's answer (raises its error as a TaskError)."""
        return await self._context.delegate(message, agent_type=self.agent_type, affinity_key=self.key,
                                            timeout=timeout, metadata=marked(metadata, self.key))

    async def tell(self, message: Any = None, *, metadata: dict[str, str] | None = None) -> str:
        """Send ``message`` without waiting for its answer; returns once it is accepted (its id)."""
        if self._context._teller is None:
            raise RuntimeError("this agent has no runtime to send through; it runs outside hive-ray")
        template = _sub_task(self.agent_type, None, None, 0, None, self.key, marked(metadata, self.key))
        [task_id] = await self._context._teller(template, [message])
        return task_id

    def __repr__(self) -> str:
        return f"<AgentRef {self.agent_type}/{self.key}>"


def marked(metadata: dict[str, str] | None, key: str) -> dict[str, str]:
    """A message's metadata naming its agent's key (``hive_ray._virtual.KEY_FIELD``): a pool
    that is not virtual refuses it."""
    return {**(metadata or {}), "agent_key": key}


def _sub_task(agent_type: str | None, capability: str | None, pool: str | None, priority: int,
              timeout: float | None, affinity_key: str | None, metadata: dict[str, str] | None) -> dict[str, Any]:
    """The template of a delegated sub-task: the running task is its parent (``parent_task_id``)."""
    template = {"agent_type": agent_type, "capability": capability, "pool": pool, "priority": priority,
                "timeout": timeout, "affinity_key": affinity_key, "metadata": dict(metadata or {})}
    parent = current_task_id.get()
    if parent is not None:
        template["metadata"].setdefault("parent_task_id", parent)
    return template


class Agent:
    """Base class of every agent type.

    Class attributes:
        agent_type: the name tasks use to reach this type (defaults to the
            class name in lower case).
        capabilities: what the type can do; tasks routed by capability go to
            any pool whose type offers it.
        concurrent: when True the agent may run several tasks at once (its
            ``handle`` must be safe for that); otherwise tasks are processed
            one at a time in arrival order, like an actor's mailbox.
        max_concurrency: how many tasks at once when ``concurrent`` is True.
    """

    agent_type: ClassVar[str] = ""
    capabilities: ClassVar[frozenset[str]] = frozenset()
    concurrent: ClassVar[bool] = False
    max_concurrency: ClassVar[int] = 1

    def __init__(self, context: AgentContext) -> None:
        self.context = context
        self.state: dict[str, Any] = {}

    def setup(self) -> None | Awaitable[None]:
        """Called once before the first task (may be async): open clients, load models."""
        return None

    def teardown(self) -> None | Awaitable[None]:
        """Called once when the agent stops (may be async): close what setup opened."""
        return None

    def on_passivate(self) -> Any:
        """Called before an idle agent is deactivated (packed pools with passivation).

        Return what must survive (by default ``self.state``); ``teardown`` runs
        next. It is handed to :meth:`on_activate` when the next task arrives.
        """
        return self.state

    def on_activate(self, saved: Any) -> None:
        """Called after ``setup`` when a passivated agent is activated again."""
        self.state = saved

    def handle(self, task: Task) -> Any:
        """Do one task and return its result (may be async). Raise to fail the task."""
        raise NotImplementedError(
            f"{type(self).__name__} must implement handle(self, task) to process tasks"
        )

    @classmethod
    def type_name(cls) -> str:
        return cls.agent_type or cls.__name__.lower()

    @classmethod
    def concurrency(cls) -> int:
        return max(1, int(cls.max_concurrency)) if cls.concurrent else 1

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.context.agent_id} of pool {self.context.pool!r}>"

