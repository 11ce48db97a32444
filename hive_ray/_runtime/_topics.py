"""Topics in the orchestrator: publish, subscribe, and follow (see :mod:`hive_ray._topics`).

A mixin of :class:`~hive_ray._runtime._orchestrator.Orchestrator`. A publish
turns into one message task per subscribed agent, accepted (journaled) per
pool before ``publish`` answers, so a delivery is never lost once accepted;
each agent handles its deliveries in the order they were published. Agent
subscriptions are journaled; type subscriptions come with their pools.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from hive_ray._errors import ConfigurationError
from hive_ray._topics import RecentIds, Subscriptions, TopicLog, check_topic
from hive_ray._virtual import check_key

logger = logging.getLogger("hive_ray.orchestrator")


class Topics:
    """Publish, subscribe, follow; see the module docstring."""

    _journal: Any
    _pools: dict[str, Any]
    _counters: dict[str, int]

    def _init_topics(self) -> None:
        self._subscriptions = Subscriptions()
        self._recent_ids = RecentIds()
        self._topic_log = TopicLog()
        self._topic_signal: asyncio.Event | None = None

    def _recover_subscriptions(self) -> None:
        """Agent subscriptions from the journal (type subscriptions come back with their pools)."""
        if self._journal is None:
            return
        for topic, agent_type, key in self._journal.subscriptions():
            self._subscriptions.subscribe(topic, agent_type, key)

    # ------------------------------------------------------------------ operations
    async def publish(self, topic: str, message: Any = None, source: str | None = None,
                      message_id: str | None = None, trace_context: dict[str, str] | None = None) -> dict[str, Any]:
        """Deliver ``message`` to every agent subscribed to ``topic``; answers once every delivery
        is accepted: ``{"topic", "sequence", "deliveries", "task_ids", "undeliverable", "duplicate"}``.

        A ``message_id`` published before (lately: the orchestrator remembers the last
        100,000) is not delivered again; the first publish's answer is returned.
        """
        await self._ensure_started()  # type: ignore[attr-defined]
        topic = _checked(check_topic, topic)
        if source is not None:
            source = _checked(check_key, source)
        if message_id is not None and not (isinstance(message_id, str) and 0 < len(message_id) <= 256):
            raise ConfigurationError(f"message_id must be a string of 1 to 256 characters, got {message_id!r}")
        if message_id is not None:
            earlier = self._recent_ids.get(topic, message_id)
            if earlier is not None:
                return {**earlier, "duplicate": True}
        by_pool: dict[str, list[str]] = {}
        undeliverable = []
        for agent_type, key in self._subscriptions.targets(topic, source):
            pool = next((p for p in self._pools.values() if p.spec["agent_type"] == agent_type and p.info.virtual),
                        None)
            if pool is None:
                undeliverable.append({"agent_type": agent_type, "key": key})
                continue
            by_pool.setdefault(pool.name, []).append(key)
        metadata = {"topic": topic}
        if source is not None:
            metadata["topic_source"] = source
        if message_id is not None:
            metadata["message_id"] = message_id
        accepts = [self._accept_durably(  # type: ignore[attr-defined]
            {"pool": name, "affinity_keys": keys, "metadata": metadata, "trace_context": trace_context},
            [message] * len(keys), None) for name, keys in by_pool.items()]
        results = await asyncio.gather(*accepts)
        task_ids = [task_id for ids, _ in results for task_id in ids]
        if undeliverable:
            self._counters["undeliverable"] += len(undeliverable)
            logger.warning("topic %s: %d subscriber(s) have no running pool (e.g. %s/%s); not delivered",
                           topic, len(undeliverable), undeliverable[0]["agent_type"], undeliverable[0]["key"])
        published = self._topic_log.append(topic, source, message_id, message, len(task_ids))
        self._counters["published"] += 1
        if self._topic_signal is not None:
            self._topic_signal.set()
            self._topic_signal = None
        answer = {"topic": topic, "sequence": published.sequence, "deliveries": len(task_ids),
                  "task_ids": task_ids, "undeliverable": undeliverable, "duplicate": False}
        if message_id is not None:
            self._recent_ids.add(topic, message_id, answer)
        return answer

    async def subscribe(self, topic: str, agent_type: str, key: str) -> dict[str, Any]:
        """Subscribe one virtual agent to every message of ``topic``; durable when it answers."""
        await self._ensure_started()  # type: ignore[attr-defined]
        topic, key = _checked(check_topic, topic), _checked(check_key, key)
        running = [p for p in self._pools.values() if p.spec["agent_type"] == agent_type]
        if running and not any(p.info.virtual for p in running):
            raise ConfigurationError(
                f"agent type {agent_type!r} is not virtual: only virtual agent types (VirtualAgent subclasses) "
                f"subscribe to topics. A type whose pool is not running yet may be subscribed ahead")
        try:
            added = self._subscriptions.subscribe(topic, agent_type, key)
        except ValueError as error:
            raise ConfigurationError(str(error)) from None
        if added and self._journal is not None:
            self._journal.record_subscription(topic, agent_type, key)
            await self._journal.durable()
        return {"topic": topic, "agent_type": agent_type, "key": key, "added": added}

    async def unsubscribe(self, topic: str, agent_type: str, key: str) -> dict[str, Any]:
        """Undo :meth:`subscribe`; ``removed`` is False when there was no such subscription."""
        await self._ensure_started()  # type: ignore[attr-defined]
        topic = _checked(check_topic, topic)
        removed = self._subscriptions.unsubscribe(topic, agent_type, key)
        if removed and self._journal is not None:
            self._journal.record_subscription(topic, agent_type, key, present=False)
            await self._journal.durable()
        return {"topic": topic, "agent_type": agent_type, "key": key, "removed": removed}

    async def subscriptions(self, topic: str | None = None) -> list[dict[str, Any]]:
        """Who receives each topic (or one): agent types by source, and single agents."""
        await self._ensure_started()  # type: ignore[attr-defined]
        return self._subscriptions.describe(topic)

    async def topic_messages(self, topic: str, after: int = 0, timeout: float = 0.0,
                             limit: int = 1000) -> dict[str, Any]:
        """A topic's messages numbered above ``after``; long-polls up to ``timeout`` seconds.
        ``missed`` is True when some after ``after`` are no longer kept."""
        await self._ensure_started()  # type: ignore[attr-defined]
        topic = _checked(check_topic, topic)
        deadline = time.monotonic() + max(0.0, timeout)
        while True:
            found, missed = self._topic_log.after(topic, after, max(1, min(limit, 1000)))
            remaining = deadline - time.monotonic()
            if found or remaining <= 0:
                return {"topic": topic, "messages": [item.as_dict(topic) for item in found], "missed": missed,
                        "last_sequence": self._topic_log.last_sequence(topic)}
            if self._topic_signal is None:
                self._topic_signal = asyncio.Event()
            try:
                await asyncio.wait_for(self._topic_signal.wait(), remaining)
            except asyncio.TimeoutError:
                pass


def _checked(check: Any, value: Any) -> Any:
    try:
        return check(value)
    except ValueError as error:
        raise ConfigurationError(str(error)) from None
