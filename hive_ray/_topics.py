"""Topics: who receives a published message, de-duplication, and the log followers read.

A message is published to a *topic* (a name), optionally with a *source*
(AutoGen's ``TopicId(type, source)``). Virtual agents receive it two ways:

* **type subscriptions**, declared by an agent type (``subscriptions =
  ("promotions",)``, or ``subscriptions=[...]`` when spawning): a message to
  that topic with source ``s`` goes to the agent of that type whose key is
  ``s`` (AutoGen's ``TypeSubscription``). A message without a source reaches
  no type subscription.
* **agent subscriptions**, made at run time (``hive.subscribe(topic,
  agent_type, key)``): every message to the topic goes to that one agent.

Each delivery is a message task to its agent (journaled, at least once, in
order per agent, dead-lettered when it keeps failing), carrying ``topic``,
``topic_source`` and ``message_id`` in its metadata. A message id published
again is not delivered again (:class:`RecentIds`). External consumers follow
a topic's recent messages (:class:`TopicLog`: bounded, from the moment the
orchestrator started; not journaled).

Pure Python (no Ray).
"""

from __future__ import annotations

import re
import time
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Any

#: Topic names: what fits in a URL path segment and a journal row.
TOPIC_PATTERN = re.compile(r"^[A-Za-z0-9_.:-]{1,200}$")
#: Messages a topic's log keeps for followers.
LOG_LENGTH = 1000
#: Topics whose logs are kept (the least recently published to go first).
MAX_TOPICS = 1000
#: (topic, message id) pairs remembered to drop a publish sent again.
REMEMBERED_IDS = 100_000
#: Agent subscriptions one topic may have.
MAX_SUBSCRIBERS = 100_000


def check_topic(topic: Any) -> str:
    """A usable topic name, or a ValueError that says what is wrong."""
    if not isinstance(topic, str) or not TOPIC_PATTERN.match(topic):
        raise ValueError(f"a topic is 1 to 200 letters, digits or _ . : - (no spaces or slashes), got {topic!r}")
    return topic


def merged_topics(declared: Any, given: Any) -> list[str]:
    """A type's own subscriptions, then the ones given when spawning it, each once."""
    return list(dict.fromkeys([*(declared or ()), *(given or ())]))


class Subscriptions:
    """Which agents receive each topic: type subscriptions per virtual type, agent subscriptions."""

    def __init__(self) -> None:
        self._by_type: dict[str, set[str]] = {}  # topic -> agent types subscribed by type
        self._agents: dict[str, dict[tuple[str, str], None]] = {}  # topic -> (agent type, key), in order

    def declare(self, agent_type: str, topics: list[str] | tuple[str, ...]) -> None:
        """The type subscriptions of a virtual type (its pool was created)."""
        for topic in topics:
            self._by_type.setdefault(topic, set()).add(agent_type)

    def forget_type(self, agent_type: str) -> None:
        """Its pool was stopped: its type subscriptions go (its agent subscriptions stay)."""
        for topic in list(self._by_type):
            self._by_type[topic].discard(agent_type)
            if not self._by_type[topic]:
                del self._by_type[topic]

    def subscribe(self, topic: str, agent_type: str, key: str) -> bool:
        """Add an agent subscription; False if it existed.

        Raises:
            ValueError: the topic already has :data:`MAX_SUBSCRIBERS` agents.
        """
        agents = self._agents.setdefault(topic, {})
        if (agent_type, key) in agents:
            return False
        if len(agents) >= MAX_SUBSCRIBERS:
            raise ValueError(f"topic {topic!r} has {MAX_SUBSCRIBERS:,} agent subscriptions, the most it takes; "
                             f"subscribe an agent type instead (its key is then the message's source)")
        agents[(agent_type, key)] = None
        return True

    def unsubscribe(self, topic: str, agent_type: str, key: str) -> bool:
        agents = self._agents.get(topic)
        if agents is None or (agent_type, key) not in agents:
            return False
        del agents[(agent_type, key)]
        if not agents:
            del self._agents[topic]
        return True

    def targets(self, topic: str, source: str | None) -> list[tuple[str, str]]:
        """Every (agent type, key) a message to ``topic`` from ``source`` goes to, once each."""
        found: dict[tuple[str, str], None] = {}
        if source is not None:
            for agent_type in sorted(self._by_type.get(topic, ())):
                found[(agent_type, source)] = None
        found.update(self._agents.get(topic, {}))
        return list(found)

    def describe(self, topic: str | None = None) -> list[dict[str, Any]]:
        topics = [topic] if topic is not None else sorted(set(self._by_type) | set(self._agents))
        return [{"topic": name, "agent_types": sorted(self._by_type.get(name, ())),
                 "agents": [{"agent_type": t, "key": k} for t, k in self._agents.get(name, {})]}
                for name in topics]


class RecentIds:
    """The (topic, message id) pairs published lately, with what their first publish answered."""

    def __init__(self, limit: int = REMEMBERED_IDS) -> None:
        self._limit = limit
        self._seen: OrderedDict[tuple[str, str], dict[str, Any]] = OrderedDict()

    def get(self, topic: str, message_id: str) -> dict[str, Any] | None:
        return self._seen.get((topic, message_id))

    def add(self, topic: str, message_id: str, answer: dict[str, Any]) -> None:
        self._seen[(topic, message_id)] = answer
        while len(self._seen) > self._limit:
            self._seen.popitem(last=False)


@dataclass(frozen=True, slots=True)
class Published:
    sequence: int
    time: float
    source: str | None
    message_id: str | None
    message: Any
    deliveries: int

    def as_dict(self, topic: str) -> dict[str, Any]:
        return {"topic": topic, "sequence": self.sequence, "time": self.time, "source": self.source,
                "message_id": self.message_id, "message": self.message, "deliveries": self.deliveries}


class TopicLog:
    """Recent messages of every topic, numbered, for consumers following a topic.

    Numbers start at the time (in µs) a topic's log was made, so a follower's
    position from before an orchestrator restart is older than anything kept
    after it: it gets ``missed`` and the messages kept, never a wrong one.
    """

    def __init__(self, length: int = LOG_LENGTH, max_topics: int = MAX_TOPICS,
                 clock: Any = time.time) -> None:
        self._length = length
        self._max_topics = max_topics
        self._clock = clock
        self._logs: OrderedDict[str, deque[Published]] = OrderedDict()
        self._next: dict[str, int] = {}

    def append(self, topic: str, source: str | None, message_id: str | None, message: Any,
               deliveries: int) -> Published:
        log = self._logs.get(topic)
        if log is None:
            log = self._logs[topic] = deque(maxlen=self._length)
            self._next[topic] = int(self._clock() * 1_000_000)
            while len(self._logs) > self._max_topics:
                gone, _ = self._logs.popitem(last=False)
                self._next.pop(gone, None)
        else:
            self._logs.move_to_end(topic)
        sequence = self._next[topic]
        self._next[topic] = sequence + 1
        published = Published(sequence, self._clock(), source, message_id, message, deliveries)
        log.append(published)
        return published

    def after(self, topic: str, after: int, limit: int = 1000) -> tuple[list[Published], bool]:
        """Messages numbered above ``after`` (at most ``limit``), and whether some were dropped
        before the follower read them (``after`` is older than what the log keeps)."""
        log = self._logs.get(topic)
        if not log:
            return [], False
        newer = [item for item in log if item.sequence > after][:limit]
        missed = after > 0 and log[0].sequence > after + 1
        return newer, missed

    def last_sequence(self, topic: str) -> int:
        log = self._logs.get(topic)
        return log[-1].sequence if log else 0
