"""The table of orchestrator operations stays true to the orchestrator it describes."""

from __future__ import annotations

import inspect

from hive_ray._operations import DATA_PLANE_OPERATIONS, OPERATIONS, RETRYABLE_OPERATIONS
from hive_ray._runtime._orchestrator import Orchestrator


def _public_methods() -> set[str]:
    return {name for name, member in inspect.getmembers(Orchestrator, inspect.iscoroutinefunction)
            if not name.startswith("_")}


def test_every_operation_is_an_orchestrator_method_and_every_method_an_operation() -> None:
    assert set(OPERATIONS) == _public_methods()


def test_only_reads_and_waits_are_sent_again_after_a_broken_connection() -> None:
    state_changing = {"run", "run_many", "submit", "submit_many", "cancel", "cancel_many", "resubmit",
                      "create_pool", "scale", "stop_pool", "shutdown", "report_progress"}
    assert not state_changing & RETRYABLE_OPERATIONS
    assert {"wait", "wait_many", "task", "tasks", "pools", "health"} <= RETRYABLE_OPERATIONS


def test_pool_changes_never_travel_over_the_data_plane() -> None:
    assert not {"create_pool", "scale", "stop_pool", "shutdown"} & DATA_PLANE_OPERATIONS
