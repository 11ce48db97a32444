"""Results too large for the task stream travel through Ray's object store.

A result whose pickled size is above ``max_result_bytes_in_memory`` (or above
what is left of a data-plane frame's budget: a batch's results share one frame)
stays on its host, and the outcome carries a :class:`~hive_ray._results.StoredResult`
marker instead. The orchestrator then calls the host's ``take_result``: the
value comes back as that call's return value, which Ray stores in the object
store and which the *orchestrator* owns (``ray.put(_owner=...)`` no longer exists
in Ray 2.56+; a return value is owned by its caller). So the value outlives the
host, never enters the orchestrator's heap, and the task settles only once the
value is safe. Clients exchange the marker for the value (:func:`hive_ray._results.resolve`).

Measuring a result's size costs at most ``max_result_bytes_in_memory`` bytes of
pickling on the event loop (a counting writer stops there); a result above it is
measured in full on a thread. A result that cannot be pickled fails its own task,
with an error that says so, instead of the stream.

The host half is :class:`ResultStash`; the orchestrator half is the mixin
:class:`LargeResults`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import pickle
import threading
import time
import uuid
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

from hive_ray._errors import ConfigurationError
from hive_ray._results import StoredResult, result_lost
from hive_ray._runtime._contracts import AgentLost
from hive_ray._task import Outcome, TaskEntry, TaskState

if TYPE_CHECKING:
    from hive_ray._runtime._pools import Pool
    from hive_ray._settings import Settings

logger = logging.getLogger("hive_ray.results")

#: A host drops a kept result nobody took within this long (its orchestrator went away).
KEEP_SECONDS = 300.0
#: Results carried inline in one frame may use this share of a frame's limit; the rest
#: is left for the frame's other fields (errors, timings).
FRAME_SHARE = 0.5

_TINY = frozenset({type(None), bool, float})
_TEXT = frozenset({str, bytes, bytearray})


def _size_at_most(value: Any) -> int | None:
    """An upper bound of ``value``'s pickled size found without pickling it, or None.

    Covers what most handlers return (numbers, short text) so that they cost a
    type check, not a pickling pass, on the hot path.
    """
    kind = type(value)
    if kind in _TINY:
        return 16
    if kind is int:
        return 16 + value.bit_length() // 8
    if kind in _TEXT:
        return 32 + (4 if kind is str else 1) * len(value)  # UTF-8 takes at most 4 bytes a character
    return None


class _AboveLimit(Exception):
    pass


class _Counter:
    """A file that only counts what a pickler writes, and stops it past ``limit``."""

    __slots__ = ("size", "limit")

    def __init__(self, limit: int | None) -> None:
        self.size = 0
        self.limit = limit

    def write(self, data: Any) -> int:
        written = data.nbytes if type(data) is memoryview else len(data)
        self.size += written
        if self.limit is not None and self.size > self.limit:
            raise _AboveLimit
        return written


def pickled_size(value: Any, limit: int | None = None) -> int | None:
    """Bytes ``value`` pickles to, or None when more than ``limit`` (work stops there).

    Raises:
        TypeError: it cannot be pickled (not by pickle, not by cloudpickle either).
    """
    counter = _Counter(limit)
    try:
        pickle.Pickler(counter, protocol=5).dump(value)
        return counter.size
    except _AboveLimit:
        return None
    except Exception:  # noqa: BLE001 - lambdas, local classes: what cloudpickle handles
        pass
    from ray import cloudpickle

    counter = _Counter(limit)
    try:
        cloudpickle.CloudPickler(counter, protocol=5).dump(value)
    except _AboveLimit:
        return None
    except Exception as error:  # noqa: BLE001 - whatever the object raises while pickling
        raise TypeError(f"{type(error).__name__}: {error}") from None
    return counter.size


class ResultStash:
    """A host's large results, kept until the orchestrator takes them into the object store."""

    def __init__(self, limit: int, frame_limit: int) -> None:
        self._limit = limit
        self._frame_budget = int(frame_limit * FRAME_SHARE)
        self._kept: dict[str, tuple[float, int, Any]] = {}
        self._lock = threading.Lock()  # take_result answers on its own thread

    async def prepare(self, outcomes: list[Outcome]) -> list[Outcome]:
        """Outcomes ready for the stream: large values kept here, unpicklable ones failed."""
        budget = self._frame_budget
        prepared = outcomes
        for index, outcome in enumerate(outcomes):
            if outcome.status != "ok":
                continue
            value = outcome.value
            limit = max(0, min(self._limit, budget))
            bound = _size_at_most(value)
            if bound is not None and bound <= limit:
                budget -= bound
                continue
            try:
                size = pickled_size(value, limit)
                if size is None:
                    size = await asyncio.to_thread(pickled_size, value)
            except TypeError as error:
                replacement = dataclasses.replace(outcome, status="error", value=None, error={
                    "type": "UnpicklableResult",
                    "message": f"the handler returned a {type(value).__qualname__} that cannot be pickled "
                               f"({error}); return data that pickles (dicts, lists, strings, numbers, "
                               "arrays, dataclasses)"})
            else:
                assert size is not None
                if size <= limit:
                    budget -= size
                    continue
                key = uuid.uuid4().hex
                with self._lock:
                    self._kept[key] = (time.monotonic(), size, value)
                replacement = dataclasses.replace(outcome, value=StoredResult(key, size))
            if prepared is outcomes:
                prepared = list(outcomes)
            prepared[index] = replacement
        if prepared is not outcomes:
            self._expire()
        return prepared

    def take(self, key: str) -> tuple[int, Any]:
        """``(size, value)`` of a kept result, handed over once."""
        with self._lock:
            kept = self._kept.pop(key, None)
        if kept is None:
            raise LookupError(f"result {key} is no longer kept on this host (not taken within "
                              f"{KEEP_SECONDS:g} s, or taken already)")
        _, size, value = kept
        return size, value

    def _expire(self) -> None:
        horizon = time.monotonic() - KEEP_SECONDS
        with self._lock:
            for key in [key for key, (kept_at, _, _) in self._kept.items() if kept_at < horizon]:
                logger.warning("dropping result %s: nobody took it within %g s", key, KEEP_SECONDS)
                del self._kept[key]


class LargeResults:
    """The orchestrator's half: take stored results into the object store, hand them out."""

    settings: Settings
    _placement: Any
    _counters: dict[str, int]
    _tasks: dict[str, TaskEntry]
    _stored_results: OrderedDict[str, int]
    _stored_bytes: int

    async def _settle_stored(self, pool: Pool, agent_id: str, entry: TaskEntry, outcome: Outcome) -> None:
        """Settle a task whose result stayed on its host, once the value is in the object store."""
        stored: StoredResult = outcome.value
        try:
            reference = await self._placement.take_result(agent_id, stored.key)
        except AgentLost as lost:
            if entry.state == TaskState.RUNNING and entry.agent_id == agent_id:
                self._redeliver(pool, entry, f"its result ({stored.size:,} bytes) was lost with its host "
                                f"({lost.cause}) before it reached the object store")
                self._pump(pool)
            return
        except Exception as error:  # noqa: BLE001 - e.g. the object store is full
            if entry.state == TaskState.RUNNING and entry.agent_id == agent_id:
                self._end(entry, TaskState.FAILED, error={
                    "type": "ResultNotStored",
                    "message": f"its result ({stored.size:,} bytes, above max_result_bytes_in_memory) could "
                               f"not be put in Ray's object store: {error}; give the object store more "
                               "memory, or return a smaller result"})
                self._signal_events()
            return
        if entry.state != TaskState.RUNNING or entry.agent_id != agent_id:
            self._counters["late_results"] += 1
            return  # it ended meanwhile: the value is dropped with its reference
        self._settle(pool, entry, dataclasses.replace(
            outcome, value=StoredResult(stored.key, stored.size, reference)))
        self._hold_stored(entry.task_id, stored.size)
        self._signal_events()

    def _hold_stored(self, task_id: str, size: int) -> None:
        """Count a kept result; release the oldest beyond ``max_stored_result_bytes``."""
        held = self._stored_results
        held[task_id] = size
        self._stored_bytes += size
        while self._stored_bytes > self.settings.max_stored_result_bytes and len(held) > 1:
            oldest, oldest_size = held.popitem(last=False)
            self._stored_bytes -= oldest_size
            entry = self._tasks.get(oldest)
            if entry is not None and type(entry.result) is StoredResult:
                entry.result.ref = None  # its last reference: Ray frees the value

    def _discard_stored(self, agent_id: str, outcome: Outcome) -> None:
        """A late outcome's stored value is not wanted: free the host of it."""
        if outcome.status == "ok" and type(outcome.value) is StoredResult:
            self._spawn_background(self._drop_stored(agent_id, outcome.value))

    async def _drop_stored(self, agent_id: str, stored: StoredResult) -> None:
        try:
            await self._placement.take_result(agent_id, stored.key)  # the reference dies here
        except Exception:  # noqa: BLE001 - the host is gone, and the value with it
            pass

    async def fetch_result(self, task_id: str) -> list[Any]:
        """``[reference]`` to a task's result kept in the object store (a Ray call only:
        Ray counts a reference it returns, not one pickled into a frame)."""
        await self._ensure_started()
        entry = self._entry(task_id)
        result = entry.result
        if entry.state != TaskState.SUCCEEDED or type(result) is not StoredResult:
            raise ConfigurationError(f"task {task_id} ({entry.state.value}) has no result in the object "
                                     "store; read it with hive.result(task_id)")
        if result.ref is None:
            raise result_lost(task_id, result.size, "the orchestrator that owned it restarted, the task "
                              "left its memory, or newer results pushed it out (max_stored_result_bytes)")
        return [result.ref]


__all__ = ["KEEP_SECONDS", "LargeResults", "ResultStash", "pickled_size"]
