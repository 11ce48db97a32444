"""Full garbage-collection pauses of this process, measured with ``gc.callbacks``.

A full (generation 2) collection stops the process while it walks every
tracked object. In a Ray worker that is tens of thousands of objects from the
imports alone, so a pause is milliseconds long, and during it no task moves:
it shows up directly in the latency tail. Counting them tells you whether a
tail is the collector's.
"""

from __future__ import annotations

import gc
import time
from typing import Any


class GcPauses:
    """Counts full collections and their durations (install once per process)."""

    __slots__ = ("_started", "count", "max_seconds", "total_seconds")

    def __init__(self) -> None:
        self.count = 0
        self.total_seconds = 0.0
        self.max_seconds = 0.0
        self._started = 0.0

    def install(self) -> GcPauses:
        gc.callbacks.append(self._observe)
        return self

    def _observe(self, phase: str, info: dict[str, Any]) -> None:
        if info.get("generation") != 2:
            return
        if phase == "start":
            self._started = time.perf_counter()
            return
        pause = time.perf_counter() - self._started
        self.count += 1
        self.total_seconds += pause
        self.max_seconds = max(self.max_seconds, pause)

    def statistics(self) -> dict[str, float]:
        return {"full_collections": self.count, "pause_total_ms": round(self.total_seconds * 1000, 2),
                "pause_max_ms": round(self.max_seconds * 1000, 2), "frozen_objects": gc.get_freeze_count()}
