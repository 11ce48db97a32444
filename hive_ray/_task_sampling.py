"""Per-task sampling: the orchestrator decides for every task no sampled trace covers.

A client decides once per call and the API once per request, so before this a
``map`` of 5,000 tasks was traced whole or not at all, and at the default ratio
of 1% the analyzer saw nothing after most workloads. Every task passes through
the orchestrator's accept, so the decision is made there, per task:

* a task that carries a sampled context (a sampled client call or request, or a
  sub-task of a sampled task) keeps it: it is part of that trace;
* a task that carries an unsampled context (an upstream ``traceparent`` with
  flag ``00``) follows the sampler: with a parent-based one (the default) it
  stays unsampled, as its parent decided; with a plain ratio sampler the ratio
  is applied to the parent's trace id (``TraceIdRatioBased``'s rule), and a
  sampled task joins that trace;
* a task with no context draws a random number against the ratio, so 1% means
  1% of tasks. A sampled one gets a new trace whose root span,
  ``hive.task <pool>``, the orchestrator emits when the task ends (succeeded,
  failed, cancelled, timed out, dead-lettered), from its creation to its end.

The context of a task sampled here carries :data:`TASK_ROOT` besides its
``traceparent``; only the orchestrator reads it (agents get their dispatch
span's context, see :meth:`hive_ray._tracing.Tracer.start_dispatch`), and it
is journaled with the task, so a restarted orchestrator still ends the span.
The span id in the ``traceparent`` is the root span's own id, so the queue and
dispatch spans become its children without further bookkeeping.

An unsampled task costs one random draw and a comparison (well under a
microsecond); at a ratio of 0 not even that.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from typing import Any

from hive_ray._tracing import (
    INTERNAL,
    TRACEPARENT,
    Tracer,
    format_traceparent,
    new_span_id,
    new_trace_id,
    parse_traceparent,
)

#: Key of a task's ``trace_context`` saying that the orchestrator sampled the task
#: and owes its ``hive.task`` root span. Its value is the parent span id in hex
#: (the carried unsampled parent's), or "" for a new trace.
TASK_ROOT = "hive-task-root"


class TaskSampling:
    """The orchestrator's per-task sampling decisions and the ``hive.task`` spans they owe.

    Args:
        tracer: The orchestrator's tracer; its ``sampler`` gives the ratio and whether
            a carried parent's decision is kept.
        draw: A source of uniform numbers in [0, 1) (tests inject one); a private
            generator by default.
    """

    __slots__ = ("tracer", "ratio", "parent_based", "_draw")

    def __init__(self, tracer: Tracer, *, draw: Callable[[], float] | None = None) -> None:
        self.tracer = tracer
        self.ratio = tracer.sampler.ratio
        self.parent_based = tracer.sampler.parent_based
        self._draw = draw if draw is not None else random.Random().random

    def sample(self, entries: list[Any], carried: Mapping[str, str] | None) -> None:
        """Decide for freshly accepted ``entries`` that share the context ``carried``.

        Gives each task that is sampled here a context of its own (see the module
        docstring); leaves every other task's context as it is.
        """
        ratio = self.ratio
        if ratio <= 0.0:
            return
        if carried is not None:
            parsed = self.tracer.parse(carried)
            if parsed is not None:
                trace_id, parent_id, sampled = parsed
                if sampled or self.parent_based or not self.tracer.sampler.sample_root(trace_id):
                    return  # part of a sampled trace, or its parent's "no" stands
                parent_hex = f"{parent_id:016x}"
                for entry in entries:
                    entry.trace_context = {TRACEPARENT: format_traceparent(trace_id, new_span_id()),
                                           TASK_ROOT: parent_hex}
                return
            # A context that does not parse carries no decision: as if there were none.
        draw = self._draw
        for entry in entries:
            if ratio >= 1.0 or draw() < ratio:
                entry.trace_context = {TRACEPARENT: format_traceparent(new_trace_id(), new_span_id()),
                                       TASK_ROOT: ""}

    def end(self, entry: Any, *, dead_letter: bool = False) -> None:
        """Emit the ``hive.task`` root span of a task sampled here, now that it ended.

        Does nothing for a task this orchestrator did not sample (no :data:`TASK_ROOT`).
        """
        context = entry.trace_context
        if context is None:
            return
        parent_hex = context.get(TASK_ROOT)
        if parent_hex is None:
            return
        parsed = parse_traceparent(context.get(TRACEPARENT))
        if parsed is None:
            return
        trace_id, span_id, _ = parsed
        state = entry.state.value
        attributes: dict[str, Any] = {"hive.pool": entry.pool, "hive.task_id": entry.task_id,
                                      "hive.state": state}
        if dead_letter:
            attributes["hive.dead_letter"] = True
        error = None
        if state in ("failed", "timed_out"):
            detail = entry.error or {}
            error = f"{detail.get('type', state)}: {detail.get('message', '')}"[:500]
        self.tracer.emit(f"hive.task {entry.pool}", INTERNAL, trace_id, span_id,
                         int(parent_hex, 16) if parent_hex else None,
                         int(entry.created_at * 1e9), int((entry.finished_at or entry.created_at) * 1e9),
                         attributes, error)


__all__ = ["TASK_ROOT", "TaskSampling"]
