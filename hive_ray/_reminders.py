"""Reminders: durable, named wake-ups of a virtual agent (Orleans' and Dapr's reminders).

A reminder belongs to an identity ``(agent_type, key)``, not to an activation:
it is journaled, survives orchestrator and cluster restarts, and when it is
due the orchestrator sends the agent a message that activates it if needed
and runs its ``on_reminder(name)`` as a turn. A reminder with a period fires
again every period (a late one fires once, then keeps its rhythm); one
without fires once and is gone. (Timers, by contrast, live in an activation
and die with it: see :mod:`hive_ray._virtual`.)

Pure Python (no Ray).
"""

from __future__ import annotations

import heapq
import itertools
import math
from dataclasses import dataclass
from typing import Any

#: Reminders one identity may hold.
MAX_PER_AGENT = 100
#: Shortest period: reminders are for minutes and hours, not for tight loops (use a timer).
MIN_PERIOD_SECONDS = 1.0
#: Longest name.
MAX_NAME_LENGTH = 100


@dataclass(frozen=True, slots=True)
class Reminder:
    agent_type: str
    key: str
    name: str
    due_at: float  # wall-clock seconds
    period: float | None

    @property
    def identity(self) -> tuple[str, str, str]:
        return (self.agent_type, self.key, self.name)

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "due_at": self.due_at, "period_seconds": self.period}


def check_reminder(name: Any, due_in: Any, period: Any) -> tuple[str, float, float | None]:
    """Checked ``(name, due_in, period)``, or a ValueError that says what is wrong."""
    if not isinstance(name, str) or not 0 < len(name) <= MAX_NAME_LENGTH:
        raise ValueError(f"a reminder's name is a string of 1 to {MAX_NAME_LENGTH} characters, got {name!r}")
    if isinstance(due_in, bool) or not isinstance(due_in, int | float) or not math.isfinite(due_in) or due_in < 0:
        raise ValueError(f"a reminder is due in 0 or more seconds, got {due_in!r}")
    if period is not None and (isinstance(period, bool) or not isinstance(period, int | float)
                               or not math.isfinite(period) or period < MIN_PERIOD_SECONDS):
        raise ValueError(f"a reminder's period is at least {MIN_PERIOD_SECONDS:g} s (or None: once), got "
                         f"{period!r}; for shorter intervals use a timer (start_timer)")
    return name, float(due_in), None if period is None else float(period)


class ReminderBook:
    """Every reminder, by identity and by due time."""

    def __init__(self) -> None:
        self._reminders: dict[tuple[str, str, str], Reminder] = {}
        self._per_agent: dict[tuple[str, str], int] = {}
        self._heap: list[tuple[float, int, tuple[str, str, str]]] = []
        self._sequence = itertools.count()

    def __len__(self) -> int:
        return len(self._reminders)

    def set(self, reminder: Reminder) -> None:
        """Add or replace a reminder.

        Raises:
            ValueError: its agent already has :data:`MAX_PER_AGENT` reminders.
        """
        agent = (reminder.agent_type, reminder.key)
        if reminder.identity not in self._reminders:
            if self._per_agent.get(agent, 0) >= MAX_PER_AGENT:
                raise ValueError(f"agent {reminder.agent_type}/{reminder.key} has {MAX_PER_AGENT} reminders, "
                                 f"the most one agent may have; cancel some first")
            self._per_agent[agent] = self._per_agent.get(agent, 0) + 1
        self._reminders[reminder.identity] = reminder
        heapq.heappush(self._heap, (reminder.due_at, next(self._sequence), reminder.identity))

    def cancel(self, agent_type: str, key: str, name: str) -> Reminder | None:
        gone = self._reminders.pop((agent_type, key, name), None)
        if gone is not None:
            left = self._per_agent[(agent_type, key)] - 1
            if left:
                self._per_agent[(agent_type, key)] = left
            else:
                del self._per_agent[(agent_type, key)]
        return gone  # its heap entry is skipped when it comes up

    def get(self, identity: tuple[str, str, str]) -> Reminder | None:
        return self._reminders.get(identity)

    def of(self, agent_type: str, key: str) -> list[Reminder]:
        return sorted((r for r in self._reminders.values() if r.agent_type == agent_type and r.key == key),
                      key=lambda r: r.name) if (agent_type, key) in self._per_agent else []

    def next_due(self) -> float | None:
        while self._heap:
            due_at, _, identity = self._heap[0]
            current = self._reminders.get(identity)
            if current is not None and current.due_at == due_at:
                return due_at
            heapq.heappop(self._heap)  # cancelled or moved
        return None

    def pop_due(self, now: float) -> list[Reminder]:
        """Reminders due at ``now``: one-shot ones are removed, periodic ones moved to their next time."""
        fired = []
        while (due_at := self.next_due()) is not None and due_at <= now:
            _, _, identity = heapq.heappop(self._heap)
            reminder = self._reminders[identity]
            fired.append(reminder)
            if reminder.period is None:
                self.cancel(*identity)
            else:
                skipped = max(1, math.ceil((now - reminder.due_at) / reminder.period))
                self.set(Reminder(reminder.agent_type, reminder.key, reminder.name,
                                  reminder.due_at + skipped * reminder.period, reminder.period))
        return fired
