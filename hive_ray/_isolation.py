"""Poison isolation: after a host crash, find the task that caused it without blaming the others.

A host process runs many tasks at once (a packed host holds hundreds of agents,
a concurrent agent several tasks). When it dies, the orchestrator cannot tell
which of them killed it (``os._exit``, a segfault, an OOM kill), so it does not
charge any of them an attempt. Instead:

- **A crash with one task on the host** is that task's own: it loses an
  attempt, as a crash always did, and becomes a *known culprit*.
- **A crash with several tasks on the host** (for a cause a task can have:
  not ``node_lost``, not ``timeout_unresponsive``) makes every task that was
  running there a *suspect* of that crash (one *cohort*), delivered again
  without losing an attempt.
- **Suspects and culprits run in isolation**: one at a time per pool, alone on
  a host kept free of other work (:class:`Isolation` keeps them out of the
  pool's queue). A suspect that finishes (whatever its outcome) is cleared. A
  suspect whose isolated host crashes is convicted: that crash was alone, so it
  counts, and the rest of its cohort is released to the normal queue, because
  the crash they were suspected of is explained.

Every crash either happens alone (and costs the culprit one of its bounded
attempts) or turns the tasks present into suspects that then run alone, so a
poison task is dead-lettered after ``max_attempts`` solo crashes, one crash
more than that in all, and costs no other task an attempt.

Pure Python (no Ray): the orchestrator's dispatch and host supervision use it.
"""

from __future__ import annotations

import itertools
from collections import deque
from dataclasses import dataclass, field

from hive_ray._task import TaskEntry, TaskState

#: Crash causes that say nothing about the tasks running at the time: the node
#: went away, or the host was restarted for a task that has already ended.
INNOCENT_CAUSES = frozenset({"node_lost", "timeout_unresponsive"})

#: The cohort of known culprits: never released as a group.
_CULPRITS = 0


@dataclass(slots=True)
class CrashVerdict:
    """What a host crash means for the tasks that were running on it."""

    counted: list[TaskEntry] = field(default_factory=list)  # lose an attempt (a crash alone)
    spared: list[TaskEntry] = field(default_factory=list)  # delivered again, attempt not counted
    released: list[TaskEntry] = field(default_factory=list)  # waiting suspects cleared by a conviction


class Isolation:
    """One pool's suspects: which tasks they are, the queue they wait in, the host kept for them.

    ``reserved`` is the list of agent ids of the host set aside for suspects
    (the orchestrator stops giving it other work and waits until it is empty);
    ``runner`` is the agent among them that runs the suspects.
    """

    __slots__ = ("_waiting", "_cohort_of", "_members", "_cohorts", "reserved", "runner")

    def __init__(self) -> None:
        self._waiting: deque[TaskEntry] = deque()
        self._cohort_of: dict[str, int] = {}  # suspect task id -> its cohort (_CULPRITS: convicted)
        self._members: dict[int, set[str]] = {}
        self._cohorts = itertools.count(1)
        self.reserved: list[str] | None = None
        self.runner: str | None = None

    # -- what the orchestrator asks ---------------------------------------------------
    @property
    def active(self) -> bool:
        """Whether any task is a suspect (cheap: checked once per finished batch)."""
        return bool(self._cohort_of)

    def is_suspect(self, task_id: str) -> bool:
        return task_id in self._cohort_of

    def suspects(self) -> int:
        return len(self._cohort_of)

    def waiting(self) -> int:
        return len(self._waiting)

    # -- crashes ------------------------------------------------------------------------
    def host_crashed(self, present: set[str], running: list[TaskEntry], cause: str) -> CrashVerdict:
        """Decide who pays for a host crash.

        ``present`` is every task id the host was holding (some may have ended
        meanwhile, by timeout or cancellation, and still be running there);
        ``running`` the entries among them that are still running and will be
        delivered again.
        """
        still = {entry.task_id for entry in running}
        for task_id in present - still:
            self.forget(task_id)  # ended meanwhile: nothing left to isolate
        if len(present) == 1 and len(running) == 1:
            [culprit] = running
            return CrashVerdict(counted=[culprit], released=self._convict(culprit.task_id))
        if cause not in INNOCENT_CAUSES and running:
            cohort = next(self._cohorts)
            self._members[cohort] = set()
            for entry in running:
                self._join(entry.task_id, cohort)
        return CrashVerdict(spared=list(running))

    def _convict(self, task_id: str) -> list[TaskEntry]:
        """``task_id`` crashed its host alone: it is a culprit; its cohort-mates go free."""
        cohort = self._cohort_of.get(task_id)
        released_ids: set[str] = set()
        if cohort is not None and cohort != _CULPRITS:
            released_ids = self._members.pop(cohort, set()) - {task_id}
            for other in released_ids:
                del self._cohort_of[other]
        self.forget(task_id)
        self._join(task_id, _CULPRITS)
        if not released_ids:
            return []
        released = [entry for entry in self._waiting if entry.task_id in released_ids]
        self._waiting = deque(entry for entry in self._waiting if entry.task_id not in released_ids)
        return [entry for entry in released if entry.state == TaskState.QUEUED]

    def _join(self, task_id: str, cohort: int) -> None:
        self._cohort_of[task_id] = cohort
        self._members.setdefault(cohort, set()).add(task_id)

    # -- the isolation queue ----------------------------------------------------------
    def push(self, entry: TaskEntry) -> None:
        """A suspect waits here (not in the pool's queue) until it can run alone."""
        self._waiting.append(entry)

    def peek(self) -> TaskEntry | None:
        """The next suspect to run; suspects that ended while waiting are dropped."""
        waiting = self._waiting
        while waiting and waiting[0].state != TaskState.QUEUED:
            self.forget(waiting.popleft().task_id)
        return waiting[0] if waiting else None

    def pop(self) -> TaskEntry:
        return self._waiting.popleft()

    def cleared(self, task_id: str) -> None:
        """A suspect ran without crashing its host: it is no longer suspect."""
        self.forget(task_id)

    def forget(self, task_id: str) -> None:
        cohort = self._cohort_of.pop(task_id, None)
        if cohort is None:
            return
        members = self._members.get(cohort)
        if members is not None:
            members.discard(task_id)
            if not members:
                del self._members[cohort]


__all__ = ["INNOCENT_CAUSES", "CrashVerdict", "Isolation"]
