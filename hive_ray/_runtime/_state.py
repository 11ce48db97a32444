"""The state the orchestrator's parts share, declared once.

Each part (:mod:`_transport`, :mod:`_pools`, :mod:`_dispatch`,
:mod:`_host_supervision`, :mod:`_recovery`) is a mixin of
:class:`~hive_ray._runtime._orchestrator.Orchestrator`, which creates these
fields in its ``__init__`` and says there which part owns each. Declaring
them here lets every part (and a type checker) read them without repeating
the list.
"""

from __future__ import annotations

import asyncio
import random
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hive_ray._runtime._pools import Pool
    from hive_ray._settings import Settings
    from hive_ray._task import TaskEntry


class SharedState:
    """Fields of the orchestrator that more than one of its parts reads or writes."""

    settings: Settings
    _placement: Any
    _journal: Any
    _pools: dict[str, Pool]
    _tasks: dict[str, TaskEntry]
    _rng: random.Random
    _counters: dict[str, int]
    _usage: Any  # hive_ray._usage.UsageTotals: tokens per pool, endpoint and model
    _wakeup: asyncio.Event | None
    _tracer: Any
    _task_sampling: Any
    _streams: dict[str, Any]  # task id -> PartBuffer of a streaming task (_streams.py)


__all__ = ["SharedState"]
