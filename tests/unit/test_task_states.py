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
