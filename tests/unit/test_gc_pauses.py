"""The full-collection counter that health checks report (no Ray)."""

from __future__ import annotations

import gc

from hive_ray._gc_pauses import GcPauses


def test_full_collections_are_counted() -> None:
    pauses = GcPauses().install()
    try:
        before = pauses.statistics(now=0.0)["full_collections"]
        gc.collect(2)
        assert pauses.statistics(now=0.0)["full_collections"] == before + 1
    finally:
        gc.callbacks.remove(pauses._observe)


def test_the_frozen_count_is_reused_for_a_while_then_counted_again() -> None:
    pauses = GcPauses()
    gc.unfreeze()
    try:
        assert pauses.statistics(now=100.0)["frozen_objects"] == 0
        gc.freeze()
        frozen = gc.get_freeze_count()
        assert frozen > 0
        # Counting walks every frozen object: within the window the last count stands.
        assert pauses.statistics(now=100.0 + GcPauses.FROZEN_COUNT_SECONDS / 2)["frozen_objects"] == 0
        assert pauses.statistics(now=100.0 + GcPauses.FROZEN_COUNT_SECONDS)["frozen_objects"] == frozen
    finally:
        gc.unfreeze()
