"""Per-task sampling in the orchestrator, and the ``hive.task`` root spans it owes (no Ray)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from hive_ray._task import TaskState
from hive_ray._task_sampling import TASK_ROOT, TaskSampling
from hive_ray._tracing import INTERNAL, Tracer, TracingConfig, parse_traceparent
from tests.unit.test_orchestrator_logic import make, pool, run, settle

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"
SAMPLED = {"traceparent": f"00-{TRACE}-{PARENT}-01"}
UNSAMPLED = {"traceparent": f"00-{TRACE}-{PARENT}-00"}


def make_tracer(ratio: float = 1.0) -> Tracer:
    return Tracer(TracingConfig(enabled=True, sample_ratio=ratio, feed_analyzer=False), "orchestrator",
                  start_thread=False)


def draws(*values: float) -> Any:
    """A random source that answers ``values`` in turn."""
    source: Iterator[float] = iter(values)
    return lambda: next(source)


@dataclass
class Entry:
    task_id: str
    trace_context: dict[str, str] | None = None
    pool: str = "echo"
    state: TaskState = TaskState.QUEUED
    created_at: float = 100.0
    finished_at: float | None = None
    error: dict[str, Any] | None = None


def entries(count: int, context: dict[str, str] | None = None) -> list[Entry]:
    return [Entry(f"t{i}", context) for i in range(count)]


def spans(tracer: Tracer, prefix: str) -> list[tuple[Any, ...]]:
    return [record for record in tracer.queue if record[0].startswith(prefix)]


# ---------------------------------------------------------------------- the decision
def test_at_ratio_one_every_task_without_context_gets_its_own_trace() -> None:
    batch = entries(50)
    TaskSampling(make_tracer(1.0)).sample(batch, None)
    parsed = [parse_traceparent(entry.trace_context["traceparent"]) for entry in batch]  # type: ignore[index]
    assert all(p is not None and p[2] for p in parsed)
    assert len({p[0] for p in parsed}) == 50  # type: ignore[index]
    assert all(entry.trace_context[TASK_ROOT] == "" for entry in batch)  # type: ignore[index]


def test_at_ratio_zero_no_task_is_sampled_and_nothing_is_drawn() -> None:
    batch = entries(50)
    TaskSampling(make_tracer(0.0), draw=draws()).sample(batch, None)  # a draw would raise
    assert all(entry.trace_context is None for entry in batch)


def test_each_task_draws_against_the_ratio() -> None:
    batch = entries(4)
    TaskSampling(make_tracer(0.01), draw=draws(0.5, 0.009, 0.01, 0.0)).sample(batch, None)
    assert [entry.trace_context is not None for entry in batch] == [False, True, False, True]


def test_one_percent_means_about_one_percent_of_tasks() -> None:
    batch = entries(20_000)
    TaskSampling(make_tracer(0.01)).sample(batch, None)
    assert 120 < sum(entry.trace_context is not None for entry in batch) < 280


def test_a_carried_sampled_context_is_kept() -> None:
    batch = entries(3, SAMPLED)
    TaskSampling(make_tracer(1.0)).sample(batch, SAMPLED)
    assert all(entry.trace_context is SAMPLED for entry in batch)


def test_a_carried_unsampled_context_stays_unsampled_with_a_parent_based_sampler() -> None:
    batch = entries(3, UNSAMPLED)
    TaskSampling(make_tracer(1.0), draw=draws()).sample(batch, UNSAMPLED)
    assert all(entry.trace_context is UNSAMPLED for entry in batch)


def test_without_parent_based_sampling_the_ratio_decides_on_the_parents_trace(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "always_on")
    batch = entries(2, UNSAMPLED)
    TaskSampling(make_tracer(0.0)).sample(batch, UNSAMPLED)
    for entry in batch:
        assert entry.trace_context is not None and entry.trace_context[TASK_ROOT] == PARENT
        trace_id, span_id, sampled = parse_traceparent(entry.trace_context["traceparent"])  # type: ignore[misc]
        assert (f"{trace_id:032x}", sampled) == (TRACE, True) and span_id != int(PARENT, 16)


def test_an_unparsable_context_counts_as_none() -> None:
    batch = entries(2, {"traceparent": "nonsense"})
    TaskSampling(make_tracer(1.0)).sample(batch, {"traceparent": "nonsense"})
    assert all(entry.trace_context is not None and TASK_ROOT in entry.trace_context for entry in batch)


# ---------------------------------------------------------------------- the root span
def test_the_root_span_spans_the_task_and_carries_its_outcome() -> None:
    tracer = make_tracer(1.0)
    sampling = TaskSampling(tracer)
    [entry] = entries(1)
    sampling.sample([entry], None)
    entry.state, entry.finished_at = TaskState.FAILED, 102.5
    entry.error = {"type": "ValueError", "message": "bad"}
    sampling.end(entry, dead_letter=True)
    [record] = list(tracer.queue)
    trace_id, span_id, _ = parse_traceparent(entry.trace_context["traceparent"])  # type: ignore[index, misc]
    name, kind, record_trace, record_span, parent, start_ns, end_ns, attributes, error = record
    assert (name, kind, record_trace, record_span, parent) == ("hive.task echo", INTERNAL, trace_id, span_id, None)
    assert (start_ns, end_ns) == (100_000_000_000, 102_500_000_000)
    assert attributes == {"hive.pool": "echo", "hive.task_id": "t0", "hive.state": "failed",
                          "hive.dead_letter": True}
    assert error == "ValueError: bad"


def test_no_root_span_for_a_task_the_orchestrator_did_not_sample() -> None:
    tracer = make_tracer(1.0)
    sampling = TaskSampling(tracer)
    for context in (None, SAMPLED, UNSAMPLED):
        entry = Entry("t", context, state=TaskState.SUCCEEDED, finished_at=101.0)
        sampling.end(entry)
    assert not tracer.queue


# ---------------------------------------------------------------------- in the orchestrator
def traced_orchestrator(ratio: float = 1.0, draw: Any = None) -> tuple[Any, Any, Tracer]:
    orchestrator, placement = make()
    tracer = make_tracer(ratio)
    orchestrator._use_tracer(tracer, draw=draw)
    return orchestrator, placement, tracer


def task_spans(tracer: Tracer) -> dict[str, tuple[Any, ...]]:
    """The ``hive.task`` span of each task id; fails if one was emitted twice."""
    found: dict[str, tuple[Any, ...]] = {}
    for record in spans(tracer, "hive.task "):
        task_id = record[7]["hive.task_id"]
        assert task_id not in found, f"two hive.task spans for {task_id}"
        found[task_id] = record
    return found


def test_a_batch_of_unsampled_tasks_becomes_one_trace_per_task() -> None:
    async def scenario() -> None:
        orchestrator, _, tracer = traced_orchestrator(1.0)
        await pool(orchestrator, count=2)
        ids, answers = await orchestrator.run_many({"agent_type": "echo"}, list(range(20)))
        assert [answer[0] for answer in answers] == ["succeeded"] * 20
        await settle(lambda: not tracer._open_dispatches)
        roots = task_spans(tracer)
        assert set(roots) == set(ids) and len({r[2] for r in roots.values()}) == 20
        assert all(r[4] is None and r[7]["hive.state"] == "succeeded" and r[8] is None for r in roots.values())
        by_trace = {r[2]: r[3] for r in roots.values()}
        for name in ("hive.queue echo", "hive.dispatch echo"):
            children = spans(tracer, name)
            assert len(children) == 20 and {c[2] for c in children} == set(by_trace)
            assert all(c[4] == by_trace[c[2]] for c in children)  # children of their task's root
    run(scenario())


def test_failed_and_cancelled_tasks_end_their_root_span_once() -> None:
    async def scenario() -> None:
        orchestrator, placement, tracer = traced_orchestrator(1.0)
        await pool(orchestrator, count=1, retry={"max_attempts": 1})
        _, failed = await orchestrator.run({"agent_type": "echo"}, "boom")
        assert failed[0] == "failed"
        placement.gates["echo-0"] = asyncio.Event()
        running, queued = await orchestrator.submit_many({"agent_type": "echo"}, ["a", "b"])
        await asyncio.sleep(0)
        await orchestrator.cancel(queued)
        await orchestrator.cancel(running)
        placement.gates["echo-0"].set()
        await settle(lambda: orchestrator._counters["late_results"] == 1)
        roots = task_spans(tracer)
        states = sorted(r[7]["hive.state"] for r in roots.values())
        assert states == ["cancelled", "cancelled", "failed"]
        [failure] = [r for r in roots.values() if r[7]["hive.state"] == "failed"]
        assert failure[8] is not None and failure[8].startswith("ValueError")
    run(scenario())


def test_a_timed_out_task_ends_its_root_span_with_the_timeout() -> None:
    async def scenario() -> None:
        orchestrator, placement, tracer = traced_orchestrator(1.0)
        await pool(orchestrator, count=1)
        placement.gates["echo-0"] = asyncio.Event()
        task_id, answer = await orchestrator.run({"agent_type": "echo", "timeout": 0.05}, "slow")
        assert answer[0] == "timed_out"
        placement.gates["echo-0"].set()
        await settle(lambda: orchestrator._counters["late_results"] == 1)
        root = task_spans(tracer)[task_id]
        assert root[7]["hive.state"] == "timed_out" and root[8].startswith("TaskTimeoutError")
    run(scenario())


def test_a_dead_lettered_task_says_so_on_its_root_span() -> None:
    async def scenario() -> None:
        orchestrator, placement, tracer = traced_orchestrator(1.0)
        await pool(orchestrator, count=1, retry={"max_attempts": 1})
        placement.doomed.add("echo-0")
        task_id, answer = await orchestrator.run({"agent_type": "echo"}, "doomed")
        assert answer[0] == "failed"
        root = task_spans(tracer)[task_id]
        assert root[7]["hive.state"] == "failed" and root[7]["hive.dead_letter"] is True
    run(scenario())


def test_tasks_of_a_sampled_trace_stay_in_it() -> None:
    async def scenario() -> None:
        orchestrator, _, tracer = traced_orchestrator(1.0, draw=draws())  # no draw may happen
        await pool(orchestrator, count=1)
        template = {"agent_type": "echo", "trace_context": dict(SAMPLED)}
        _, answers = await orchestrator.run_many(template, [1, 2, 3])
        assert [answer[0] for answer in answers] == ["succeeded"] * 3
        assert not task_spans(tracer)
        queues = spans(tracer, "hive.queue echo")
        assert len(queues) == 3 and {(q[2], q[4]) for q in queues} == {(int(TRACE, 16), int(PARENT, 16))}
    run(scenario())


def test_unsampled_tasks_at_ratio_zero_cost_no_spans() -> None:
    async def scenario() -> None:
        orchestrator, _, tracer = traced_orchestrator(0.0)
        await pool(orchestrator, count=1)
        _, answers = await orchestrator.run_many({"agent_type": "echo"}, list(range(10)))
        assert len(answers) == 10 and not tracer.queue
    run(scenario())
