"""A host's large results: measured, kept for the object store, or failed when they cannot pickle."""

import asyncio
import pickle
import threading

import pytest

from hive_ray._results import StoredResult, unwrap
from hive_ray._runtime._large_results import ResultStash, pickled_size
from hive_ray._task import Outcome


def ok(task_id: str, value: object) -> Outcome:
    return Outcome(task_id=task_id, status="ok", value=value, started_at=1.0, finished_at=2.0)


def test_pickled_size_counts_exactly_and_stops_early_past_a_limit():
    value = {"text": "x" * 10_000, "numbers": list(range(100))}
    assert pickled_size(value) == len(pickle.dumps(value, protocol=5))
    assert pickled_size(value, limit=100) is None
    assert pickled_size(lambda x: x) > 0  # what pickle refuses, cloudpickle measures
    with pytest.raises(TypeError, match="lock"):
        pickled_size(threading.Lock())


def test_results_above_the_limit_are_kept_on_the_host_and_handed_over_once():
    stash = ResultStash(limit=1000, frame_limit=1 << 20)
    big, small = b"x" * 5000, b"y" * 10
    prepared = asyncio.run(stash.prepare([ok("a", small), ok("b", big), ok("c", None)]))
    assert prepared[0].value == small and prepared[2].value is None
    marker = prepared[1].value
    assert type(marker) is StoredResult and marker.size == pickled_size(big)
    assert pickle.loads(pickle.dumps(marker)) == marker  # what travels: key and size only
    assert stash.take(marker.key) == (marker.size, big)
    with pytest.raises(LookupError, match="no longer kept on this host"):
        stash.take(marker.key)


def test_a_batch_never_carries_more_inline_than_a_frame_can_hold():
    stash = ResultStash(limit=10_000, frame_limit=2_000)  # 1,000 bytes for values per frame
    values = [b"z" * 400 for _ in range(5)]
    prepared = asyncio.run(stash.prepare([ok(str(i), value) for i, value in enumerate(values)]))
    inline = [outcome for outcome in prepared if type(outcome.value) is bytes]
    kept = [outcome for outcome in prepared if type(outcome.value) is StoredResult]
    assert len(inline) == 2 and len(kept) == 3
    assert sum(len(pickle.dumps(outcome.value)) for outcome in inline) <= 1000


def test_a_result_that_cannot_be_pickled_fails_its_own_task_only():
    stash = ResultStash(limit=1000, frame_limit=1 << 20)
    prepared = asyncio.run(stash.prepare([ok("a", threading.Lock()), ok("b", 42)]))
    assert prepared[0].status == "error" and prepared[0].error["type"] == "UnpicklableResult"
    assert "cannot be pickled" in prepared[0].error["message"] and "lock" in prepared[0].error["message"]
    assert prepared[1].status == "ok" and prepared[1].value == 42


def test_unwrap_hands_a_stored_result_back_for_resolving():
    marker = StoredResult("k", 123)
    assert unwrap("t", ("succeeded", marker, None)) is marker
    assert "123 bytes kept in Ray's object store" in repr(marker)


def test_an_error_message_too_long_for_a_frame_is_cut():
    from hive_ray._results import MAX_ERROR_MESSAGE, describe_error

    described = describe_error(ValueError("x" * 1_000_000))
    assert len(described["message"]) < MAX_ERROR_MESSAGE + 100
    assert described["message"].endswith("(1,000,000 characters in all)")
