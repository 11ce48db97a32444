import pytest

from hive_ray._task import InvalidTransition, TaskState, can_transition, check_transition


def test_terminal_states_have_no_way_out():
    for terminal in (TaskState.SUCCEEDED, TaskState.FAILED, TaskState.CANCELLED, TaskState.TIMED_OUT):
        assert terminal.terminal
        for target in TaskState:
            assert not can_transition(terminal, target)


def test_running_may_go_back_to_queued_for_redelivery_only():
    assert can_transition(TaskState.RUNNING, TaskState.QUEUED)
    assert can_transition(TaskState.QUEUED, TaskState.RUNNING)
    assert not can_transition(TaskState.QUEUED, TaskState.SUCCEEDED)


def test_invalid_transition_message_lists_allowed_states():
    with pytest.raises(InvalidTransition, match="a succeeded task cannot become running; allowed next states: none"):
        check_transition(TaskState.SUCCEEDED, TaskState.RUNNING)
    with pytest.raises(InvalidTransition, match="allowed next states: cancelled, failed, running, timed_out"):
        check_transition(TaskState.QUEUED, TaskState.SUCCEEDED)


def test_new_task_ids_are_distinct_version_7_uuids_that_sort_by_creation_time() -> None:
    import time
    import uuid

    from hive_ray._task import new_task_ids

    now = time.time_ns() // 1_000_000
    ids = new_task_ids(2_000, unix_ms=now)
    assert len(set(ids)) == 2_000
    for task_id in ids:
        parsed = uuid.UUID(task_id)
        assert (parsed.hex, parsed.version, parsed.variant) == (task_id, 7, uuid.RFC_4122)
        assert parsed.int >> 80 == now  # the creation time, in milliseconds
    later = new_task_ids(3, unix_ms=now + 1)
    assert max(ids) < min(later)  # the journal's index takes new ids at its end
    assert new_task_ids(0) == []
    assert uuid.UUID(new_task_ids(1)[0]).int >> 80 >= now


def test_envelopes_and_outcomes_survive_pickling_with_every_field() -> None:
    import pickle

    from hive_ray._task import Envelope, Outcome

    envelope = Envelope(task_id="t", agent_id="a-1", payload={"n": [1, 2]}, attempt=3, deadline=12.5,
                        metadata={"k": "v"}, trace_context={"traceparent": "00-x"})
    outcome = Outcome(task_id="t", status="error", value=None, error={"type": "ValueError"},
                      started_at=1.0, finished_at=2.0)
    for protocol in (2, 5):
        assert pickle.loads(pickle.dumps([envelope, outcome], protocol)) == [envelope, outcome]
    assert pickle.loads(pickle.dumps(Envelope(task_id="t", agent_id="a", payload=None))).metadata == {}


def test_the_pickled_forms_name_every_field_in_order() -> None:
    # __reduce__ lists the fields by hand: a field added to the class must be added there too.
    import dataclasses
    import inspect

    from hive_ray._task import Envelope, Outcome, _envelope, _outcome

    for cls, build in ((Envelope, _envelope), (Outcome, _outcome)):
        names = [field.name for field in dataclasses.fields(cls)]
        assert list(inspect.signature(build).parameters) == names
        sample = cls(**{name: f"value-{name}" for name in names})
        assert sample.__reduce__() == (build, tuple(f"value-{name}" for name in names))
