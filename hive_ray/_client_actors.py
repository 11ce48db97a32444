"""The actor model's calls of :class:`hive_ray.Hive`: virtual agents by key, and topics.

A mixin of the client, kept apart from its task calls (``_client.py``): naming
an agent (:meth:`ActorModelCalls.agent`), sending many messages, publishing,
subscribing and following a topic. See :mod:`hive_ray._virtual` and
:mod:`hive_ray._topics` for what they do in the cluster.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hive_ray._agent import Agent
    from hive_ray._agent_ref import VirtualAgentRef


class ActorModelCalls:
    """Virtual agents and topics; mixed into :class:`hive_ray.Hive`."""

    if TYPE_CHECKING:
        def _call(self, method: str, *args: Any, timeout: float | None = None) -> Any: ...
        def map(self, agent: Any, payloads: Iterable[Any], **options: Any) -> list[Any]: ...

    def agent(self, agent_type: str | type[Agent], key: str) -> VirtualAgentRef:
        """The virtual agent ``(agent_type, key)``: ``ref.ask_sync(message)``, ``await ref.ask(message)``,
        ``ref.tell(message)``, ``ref.state()``. Naming it creates nothing; its first message activates it."""
        from hive_ray._agent_ref import VirtualAgentRef

        return VirtualAgentRef(self, agent_type, key)

    def ask_many(self, agent_type: str | type[Agent], messages: Iterable[tuple[str, Any]], *,
                 timeout: float | None = None, return_exceptions: bool = False, **options: Any) -> list[Any]:
        """Send ``(key, message)`` pairs to virtual agents of one type and return the answers in
        order: :meth:`map` with a key per message (chunks, a window, no task left behind).
        Messages to one key are handled in the order given."""
        pairs = list(messages)
        return self.map(agent_type, [message for _, message in pairs], keys=[key for key, _ in pairs],
                        timeout=timeout, return_exceptions=return_exceptions, **options)

    def publish(self, topic: str, message: Any = None, *, source: str | None = None,
                message_id: str | None = None) -> dict[str, Any]:
        """Deliver ``message`` to every virtual agent subscribed to ``topic`` (the agent types that
        subscribe by type get it at the key ``source``). Returns once every delivery is accepted
        (journaled): ``{"topic", "sequence", "deliveries", "task_ids", "undeliverable", "duplicate"}``.
        A ``message_id`` sent again is not delivered again. See :mod:`hive_ray._topics`."""
        return self._call("publish", topic, message, source, message_id, None)

    def subscribe(self, topic: str, agent_type: str | type[Agent], key: str) -> dict[str, Any]:
        """Subscribe the virtual agent ``(agent_type, key)`` to every message of ``topic`` (journaled)."""
        name = agent_type if isinstance(agent_type, str) else agent_type.type_name()
        return self._call("subscribe", topic, name, key)

    def unsubscribe(self, topic: str, agent_type: str | type[Agent], key: str) -> dict[str, Any]:
        name = agent_type if isinstance(agent_type, str) else agent_type.type_name()
        return self._call("unsubscribe", topic, name, key)

    def subscriptions(self, topic: str | None = None) -> list[dict[str, Any]]:
        """Who receives each topic: agent types (by source) and single agents."""
        return self._call("subscriptions", topic)

    def follow(self, topic: str, *, after: int = 0, idle_timeout: float | None = None) -> Iterator[dict[str, Any]]:
        """Iterate ``topic``'s messages as they are published (from the ones kept, after ``after``);
        stops after ``idle_timeout`` seconds without one (None: never). Each is a dict with
        ``sequence``, ``time``, ``source``, ``message_id``, ``message``, ``deliveries``; a dict
        ``{"topic": ..., "missed": True}`` comes first when messages after ``after`` were no longer
        kept (the follower fell behind, or the orchestrator restarted)."""
        waited = 0.0
        while True:
            poll = 10.0 if idle_timeout is None else max(0.0, min(10.0, idle_timeout - waited))
            started = time.monotonic()
            page = self._call("topic_messages", topic, after, poll, 1000, timeout=poll)
            if page["missed"]:
                yield {"topic": topic, "missed": True}
            for message in page["messages"]:
                after = message["sequence"]
                yield message
            waited = 0.0 if page["messages"] else waited + (time.monotonic() - started)
            if idle_timeout is not None and waited >= idle_timeout:
                return

