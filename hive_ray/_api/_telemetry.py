"""What the replica learns from the orchestrator's event stream: throughput and latency.

A :class:`TaskWindow` folds task events (``queued`` … ``succeeded``) into
five-second buckets over the last minutes: how many tasks ended, how, and
how long they took from submission to end. It feeds the dashboard's charts
and the ``hive_task_duration_seconds`` histogram. It is plain Python with an
injected clock; :func:`follow_events` is the loop that feeds it in a replica.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

logger = logging.getLogger("hive_ray.api")

TERMINAL = ("succeeded", "failed", "cancelled", "timed_out")
BUCKET_SECONDS = 5.0
#: Latencies kept per bucket for its percentiles (a uniform sample beyond that).
SAMPLES_PER_BUCKET = 256


@dataclass(slots=True, kw_only=True)
class Bucket:
    start: float
    ended: dict[str, int] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)
    seen: int = 0

    def add(self, outcome: str, latency: float | None) -> None:
        self.ended[outcome] = self.ended.get(outcome, 0) + 1
        if latency is None:
            return
        self.seen += 1
        if len(self.latencies) < SAMPLES_PER_BUCKET:
            self.latencies.append(latency)
        else:  # reservoir sampling keeps the sample uniform
            slot = random.randrange(self.seen)
            if slot < SAMPLES_PER_BUCKET:
                self.latencies[slot] = latency


class TaskWindow:
    """Task endings over the last ``horizon_seconds``, in buckets."""

    def __init__(self, horizon_seconds: float = 600.0, clock: Callable[[], float] = time.time,
                 on_end: Callable[[str, str, float], None] | None = None) -> None:
        self.horizon_seconds = horizon_seconds
        self._clock = clock
        self._on_end = on_end
        self._buckets: deque[Bucket] = deque()
        self._queued_at: OrderedDict[str, float] = OrderedDict()

    def observe(self, events: Iterable[dict[str, Any]]) -> None:
        for event in events:
            state = event.get("state")
            task_id = event.get("task_id", "")
            if state == "queued":
                self._queued_at.setdefault(task_id, event["time"])
                while len(self._queued_at) > 100_000:
                    self._queued_at.popitem(last=False)
            elif state in TERMINAL:
                queued = self._queued_at.pop(task_id, None)
                latency = None if queued is None else max(0.0, event["time"] - queued)
                self._bucket(event["time"]).add(state, latency)
                if self._on_end is not None and latency is not None:
                    self._on_end(event.get("pool", ""), state, latency)

    def forget_pending(self) -> None:
        """Events were missed: start times of pending tasks can no longer be trusted."""
        self._queued_at.clear()

    def _bucket(self, moment: float) -> Bucket:
        start = moment - moment % BUCKET_SECONDS
        if self._buckets and self._buckets[-1].start == start:
            return self._buckets[-1]
        for bucket in reversed(self._buckets):
            if bucket.start == start:
                return bucket
        bucket = Bucket(start=start)
        self._buckets.append(bucket)
        if len(self._buckets) > 1 and self._buckets[-2].start > start:
            self._buckets = deque(sorted(self._buckets, key=lambda b: b.start))
        self._expire()
        return bucket

    def _expire(self) -> None:
        horizon = self._clock() - self.horizon_seconds
        while self._buckets and self._buckets[0].start < horizon:
            self._buckets.popleft()

    def series(self) -> list[dict[str, Any]]:
        """One point per bucket with endings: time, tasks/s by outcome, latency percentiles."""
        self._expire()
        points = []
        for bucket in self._buckets:
            ordered = sorted(bucket.latencies)
            points.append({
                "time": bucket.start,
                "succeeded_per_second": bucket.ended.get("succeeded", 0) / BUCKET_SECONDS,
                "failed_per_second": sum(v for k, v in bucket.ended.items() if k != "succeeded")
                / BUCKET_SECONDS,
                "latency_p50_seconds": _percentile(ordered, 0.50),
                "latency_p95_seconds": _percentile(ordered, 0.95),
            })
        return points


def _percentile(ordered: list[float], fraction: float) -> float | None:
    if not ordered:
        return None
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


async def follow_events(call: Callable[..., Any], window: TaskWindow, *,
                        poll_timeout: float = 5.0, pause: float = 0.25) -> None:
    """Feed ``window`` from the orchestrator's events for as long as the replica lives.

    The pause between polls bounds the load this puts on the orchestrator to a
    few calls a second, however busy it is.
    """
    after = 0
    failures = 0
    while True:
        try:
            answer = await call("events", after, poll_timeout, None)
        except asyncio.CancelledError:
            raise
        except Exception as error:  # noqa: BLE001 - the orchestrator may be restarting
            failures += 1
            if failures in (1, 10) or failures % 100 == 0:
                logger.warning("event stream unavailable (%s); retrying", type(error).__name__)
            await asyncio.sleep(min(5.0, 0.2 * failures))
            continue
        failures = 0
        events = answer["events"]
        if answer.get("missed") or answer["last_sequence"] < after:  # overrun, or a new orchestrator
            window.forget_pending()
            if answer["last_sequence"] < after:
                after = 0
                continue
        window.observe(events)
        if events:
            after = events[-1]["sequence"]
        await asyncio.sleep(pause)
