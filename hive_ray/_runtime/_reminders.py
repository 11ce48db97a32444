"""Reminders in the orchestrator: kept, journaled, and sent when due (see :mod:`hive_ray._reminders`).

A mixin of :class:`~hive_ray._runtime._orchestrator.Orchestrator`. A due
reminder becomes a message task to its agent (metadata ``reminder``: its
name), accepted like any message, so it activates the agent, runs once per
firing (at least once), and is journaled. A reminder of an agent type no pool
runs waits for one (it is tried again after :data:`RETRY_SECONDS`, doubling up to
:data:`MAX_RETRY_SECONDS`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from hive_ray._errors import ConfigurationError, HiveError
from hive_ray._reminders import Reminder, ReminderBook, check_reminder
from hive_ray._virtual import check_key

logger = logging.getLogger("hive_ray.orchestrator")

#: How long a reminder that could not be sent (no pool runs its type, a full queue) waits to try again.
RETRY_SECONDS = 5.0
#: The longest wait between tries of a reminder that cannot be sent.
MAX_RETRY_SECONDS = 300.0


class Reminders:
    """Durable reminders of virtual agents; see the module docstring."""

    _journal: Any
    _pools: dict[str, Any]
    _counters: dict[str, int]

    def _init_reminders(self) -> None:
        self._reminders = ReminderBook()
        self._reminder_wakeup: asyncio.Event | None = None
        self._reminder_retries: dict[tuple[str, str, str], float] = {}  # failing ones: their next wait

    def _recover_reminders(self) -> None:
        if self._journal is None:
            return
        for agent_type, key, name, due_at, period in self._journal.reminders():
            self._reminders.set(Reminder(agent_type, key, name, due_at, period))

    # ------------------------------------------------------------------ operations
    async def set_reminder(self, agent_type: str, key: str, name: str, due_in: float,
                           period: float | None = None) -> dict[str, Any]:
        """Remind ``(agent_type, key)`` of ``name`` in ``due_in`` seconds (then every ``period``
        seconds, if given); replaces a reminder of that name. Durable when it answers."""
        await self._ensure_started()  # type: ignore[attr-defined]
        try:
            key = check_key(key)
            name, due_in, period = check_reminder(name, due_in, period)
            reminder = Reminder(agent_type, key, name, time.time() + due_in, period)
            self._reminders.set(reminder)
        except ValueError as error:
            raise ConfigurationError(str(error)) from None
        if self._journal is not None:
            self._journal.record_reminder(agent_type, key, name, (reminder.due_at, period))
            await self._journal.durable()
        self._wake_reminders()
        return reminder.as_dict()

    async def cancel_reminder(self, agent_type: str, key: str, name: str) -> bool:
        """Remove a reminder; False when there was none of that name."""
        await self._ensure_started()  # type: ignore[attr-defined]
        gone = self._reminders.cancel(agent_type, key, name)
        self._reminder_retries.pop((agent_type, key, name), None)
        if gone is not None and self._journal is not None:
            self._journal.record_reminder(agent_type, key, name, None)
            await self._journal.durable()
        return gone is not None

    def _reminders_of(self, agent_type: str, key: str) -> list[dict[str, Any]]:
        return [reminder.as_dict() for reminder in self._reminders.of(agent_type, key)]

    # ------------------------------------------------------------------ firing
    def _wake_reminders(self) -> None:
        if self._reminder_wakeup is not None:
            self._reminder_wakeup.set()

    async def _reminder_loop(self) -> None:
        self._reminder_wakeup = asyncio.Event()
        while True:
            for reminder in self._reminders.pop_due(time.time()):
                await self._fire(reminder)
            due = self._reminders.next_due()
            delay = 3600.0 if due is None else max(0.001, due - time.time())
            self._reminder_wakeup.clear()
            try:
                await asyncio.wait_for(self._reminder_wakeup.wait(), delay)
            except asyncio.TimeoutError:
                pass

    async def _fire(self, reminder: Reminder) -> None:
        """Send the reminder's message; journal where the reminder stands now."""
        try:
            await self._accept_durably(  # type: ignore[attr-defined]
                {"agent_type": reminder.agent_type, "affinity_key": reminder.key,
                 "metadata": {"reminder": reminder.name}}, [None], None)
        except HiveError as error:  # no pool runs the type, a full queue, the journal: later
            wait = self._reminder_retries.get(reminder.identity, RETRY_SECONDS)
            self._reminder_retries[reminder.identity] = min(MAX_RETRY_SECONDS, wait * 2)
            logger.warning("reminder %s of %s/%s could not be sent (%s); trying again in %g s", reminder.name,
                           reminder.agent_type, reminder.key, error, wait)
            retry = Reminder(reminder.agent_type, reminder.key, reminder.name, time.time() + wait,
                             reminder.period)
            later = self._reminders.get(reminder.identity)
            if later is None or later.due_at > retry.due_at:
                self._reminders.set(retry)
        else:
            self._counters["reminders_fired"] += 1
            self._reminder_retries.pop(reminder.identity, None)
        moved = self._reminders.get(reminder.identity)  # periodic: its next time (or set anew meanwhile)
        if self._journal is not None:
            when = None if moved is None else (moved.due_at, moved.period)
            self._journal.record_reminder(reminder.agent_type, reminder.key, reminder.name, when)
