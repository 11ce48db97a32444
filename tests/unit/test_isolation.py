"""Who pays for a host crash: the verdicts of poison isolation, without an orchestrator."""

from hive_ray._isolation import Isolation
from hive_ray._task import TaskEntry, TaskState


def entry(task_id: str, state: TaskState = TaskState.RUNNING) -> TaskEntry:
    return TaskEntry(task_id=task_id, pool="p", agent_type="echo", payload=None, state=state)


def test_a_crash_alone_counts_against_the_task_and_convicts_it():
    isolation = Isolation()
    lone = entry("a")
    verdict = isolation.host_crashed({"a"}, [lone], "process_killed")
    assert verdict.counted == [lone] and verdict.spared == [] and verdict.released == []
    assert isolation.is_suspect("a")  # a known culprit runs alone from now on


def test_a_crash_with_several_tasks_on_board_costs_none_of_them_an_attempt():
    isolation = Isolation()
    running = [entry(name) for name in "abc"]
    verdict = isolation.host_crashed({"a", "b", "c"}, running, "oom_killed")
    assert verdict.counted == [] and verdict.spared == running
    assert all(isolation.is_suspect(name) for name in "abc") and isolation.suspects() == 3


def test_a_task_that_ended_but_still_ran_on_the_host_keeps_the_lone_survivor_from_being_blamed():
    isolation = Isolation()
    survivor = entry("b")
    verdict = isolation.host_crashed({"a", "b"}, [survivor], "process_killed")  # "a" timed out earlier
    assert verdict.counted == [] and verdict.spared == [survivor]
    assert isolation.is_suspect("b") and not isolation.is_suspect("a")


def test_innocent_causes_spare_everyone_without_making_suspects():
    isolation = Isolation()
    running = [entry("a"), entry("b")]
    for cause in ("node_lost", "timeout_unresponsive"):
        verdict = isolation.host_crashed({"a", "b"}, running, cause)
        assert verdict.spared == running and verdict.counted == []
    assert isolation.suspects() == 0


def test_convicting_one_suspect_releases_the_rest_of_its_cohort_from_the_queue():
    isolation = Isolation()
    a, b, c = (entry(name) for name in "abc")
    isolation.host_crashed({"a", "b", "c"}, [a, b, c], "process_killed")
    for suspect in (a, b, c):
        suspect.state = TaskState.QUEUED
        isolation.push(suspect)
    assert isolation.peek() is a
    isolation.pop()
    a.state = TaskState.RUNNING  # a runs alone, and its host dies: a is the culprit
    verdict = isolation.host_crashed({"a"}, [a], "process_killed")
    assert verdict.counted == [a]
    assert sorted(e.task_id for e in verdict.released) == ["b", "c"]
    assert not isolation.is_suspect("b") and not isolation.is_suspect("c")
    assert isolation.is_suspect("a") and isolation.waiting() == 0


def test_a_suspect_that_runs_alone_and_finishes_is_cleared():
    isolation = Isolation()
    a, b = entry("a"), entry("b")
    isolation.host_crashed({"a", "b"}, [a, b], "process_killed")
    isolation.cleared("a")
    isolation.cleared("b")
    assert not isolation.active and isolation.suspects() == 0


def test_suspects_that_ended_while_waiting_are_dropped_from_the_queue():
    isolation = Isolation()
    a, b = entry("a"), entry("b")
    isolation.host_crashed({"a", "b"}, [a, b], "process_killed")
    a.state, b.state = TaskState.CANCELLED, TaskState.QUEUED
    isolation.push(a)
    isolation.push(b)
    assert isolation.peek() is b
    assert not isolation.is_suspect("a") and isolation.waiting() == 1


def test_a_task_that_ended_while_on_a_crashed_host_is_forgotten():
    isolation = Isolation()
    a, b = entry("a"), entry("b")
    isolation.host_crashed({"a", "b"}, [a, b], "process_killed")
    isolation.host_crashed({"a"}, [], "process_killed")  # "a" timed out, then its host died
    assert not isolation.is_suspect("a") and isolation.is_suspect("b")
