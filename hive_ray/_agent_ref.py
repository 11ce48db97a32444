"""``Hive.agent(type, key)``: a virtual agent addressed by identity, from a driver.

Nothing is created by naming an agent: the first message activates it on the
shard that owns its key (see :mod:`hive_ray._virtual`). A message is a task
(journaled, supervised, traced, in ``hive.tasks()``), so ``tell`` returns a
:class:`~hive_ray.TaskHandle` and ``ask`` raises what a task raises.
"""

from __future__ import annotations

import html
import pickle
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from hive_ray._agent import marked
from hive_ray._virtual import check_key

if TYPE_CHECKING:
    from hive_ray._agent import Agent
    from hive_ray._client import Hive
    from hive_ray._handle import TaskHandle


def _options(key: str, timeout: float | None, message_id: str | None,
             metadata: dict[str, str] | None) -> dict[str, Any]:
    # The key in the metadata marks a message to a virtual agent: a pool of another kind refuses it.
    options: dict[str, Any] = {"affinity_key": key, "metadata": marked(metadata, key)}
    if timeout is not None:
        options["timeout"] = timeout
    if message_id is not None:
        options["idempotency_key"] = message_id
    return options


class VirtualAgentRef:
    """One virtual agent, ``hive.agent("cart", "user-42")``: ask it, tell it, read its state.

    ``message_id`` (on ``ask`` and ``tell``) de-duplicates: a message sent again
    with the same id is not run again; its first sending's answer is returned.
    ``timeout`` bounds the whole ask: the message is cancelled if it has not
    been answered by then (:class:`hive_ray.TaskTimeoutError`).
    """

    __slots__ = ("_hive", "agent_type", "key")

    def __init__(self, hive: Hive, agent_type: str | type[Agent], key: str) -> None:
        self._hive = hive
        self.agent_type = agent_type if isinstance(agent_type, str) else agent_type.type_name()
        self.key = check_key(key)

    def ask_sync(self, message: Any = None, *, timeout: float | None = None, message_id: str | None = None,
                 metadata: dict[str, str] | None = None) -> Any:
        """Send ``message`` and wait for the agent's answer."""
        return self._hive.run(self.agent_type, message, wait_timeout=timeout,
                              **_options(self.key, timeout, message_id, metadata))

    async def ask(self, message: Any = None, *, timeout: float | None = None, message_id: str | None = None,
                  metadata: dict[str, str] | None = None) -> Any:
        """``await ref.ask(message)``: :meth:`ask_sync` for async code and notebooks."""
        return await self._hive.run_async(self.agent_type, message, wait_timeout=timeout,
                                          **_options(self.key, timeout, message_id, metadata))

    def tell(self, message: Any = None, *, message_id: str | None = None,
             metadata: dict[str, str] | None = None) -> TaskHandle:
        """Send ``message`` without waiting for the answer; returns once it is accepted
        (journaled), with a handle to its task."""
        return self._hive.submit(self.agent_type, message, **_options(self.key, None, message_id, metadata))

    def state(self) -> VirtualAgentState:
        """Its saved state and version, which shard owns it, and its activation if it is active."""
        answer = self._hive._call("agent_state", self.agent_type, self.key)
        body = answer.pop("state")
        return VirtualAgentState(**answer, state=pickle.loads(body) if body is not None else None)

    def __repr__(self) -> str:
        return f"<agent {self.agent_type}/{self.key}>"


@dataclass(frozen=True, slots=True)
class VirtualAgentState:
    """What ``VirtualAgentRef.state()`` answers (and ``GET /v1/agents/{type}/{key}``)."""

    agent_type: str
    key: str
    pool: str
    owner: str | None  # the shard (agent id) that owns the key
    version: int  # 0: never saved
    state: Any
    activation: dict[str, Any] | None  # None: not active now (its next message activates it)
    reminders: list[dict[str, Any]]  # its durable reminders: name, due_at, period_seconds

    @property
    def active(self) -> bool:
        return self.activation is not None

    def _repr_html_(self) -> str:
        rows = [("agent", f"{self.agent_type}/{self.key}"), ("pool", self.pool), ("owner", self.owner),
                ("version", self.version), ("active", "yes" if self.active else "no"), ("state", repr(self.state)),
                ("reminders", ", ".join(r["name"] for r in self.reminders) or "none")]
        cells = "".join(f"<tr><th style='text-align:left'>{html.escape(str(name))}</th>"
                        f"<td style='text-align:left'><code>{html.escape(str(value))[:2000]}</code></td></tr>"
                        for name, value in rows)
        return f"<table>{cells}</table>"
