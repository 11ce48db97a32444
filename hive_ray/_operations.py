"""The orchestrator's operations, as one typed table that clients and the orchestrator share.

Every call a client makes to the orchestrator names one of these. The table
says, per operation, whether it may travel over the data plane (the fast task
stream; the others are Ray actor calls) and whether it is safe to send again
after a connection broke mid-call (reads and waits are; anything that changes
state is not, and is recovered through the task id instead). Keeping this in
one place lets a reader follow a call from the client to the method that
answers it: the orchestrator method has the operation's name.

Pure Python: imported by the client without Ray.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Operation:
    """One orchestrator call: its method name and how it may travel."""

    name: str
    data_plane: bool
    retryable: bool
    summary: str


def _table(*operations: Operation) -> dict[str, Operation]:
    return {operation.name: operation for operation in operations}


OPERATIONS: dict[str, Operation] = _table(
    # tasks: the hot paths
    Operation("run", True, False, "accept one task and answer once it ended"),
    Operation("run_many", True, False, "accept a chunk and answer once all ended (map)"),
    Operation("submit", True, False, "accept one task; durable when it answers"),
    Operation("submit_many", True, False, "accept a chunk of tasks; durable when it answers"),
    Operation("wait", True, True, "a task's (state, result, error) once it ended"),
    Operation("wait_many", True, True, "answers for several task ids"),
    Operation("fetch_result", False, True, "a reference to a large result in the object store "
              "(a Ray call: Ray counts the reference only as a return value)"),
    Operation("cancel", True, False, "cancel a queued or running task"),
    Operation("cancel_many", True, False, "cancel the unfinished tasks of a list (map giving up)"),
    Operation("admission", True, True, "the pool a task would go to and its queue bound (map)"),
    Operation("resubmit", True, False, "submit an ended task again, as a new task"),
    Operation("report_progress", False, False, "an agent reports its task's progress"),
    Operation("report_parts", False, False, "a host sends parts a streaming task's generator yielded"),
    Operation("report_parts_many", False, False, "a host sends the parts of several streaming tasks at once"),
    Operation("stream_parts", True, True, "a streaming task's parts after a sequence number (long-poll)"),
    # virtual agents
    Operation("load_agent_states", False, True, "a shard loads the saved states of keys it activates"),
    Operation("save_agent_state", False, False, "an activation saves its state now (save_state)"),
    Operation("agent_state", True, True, "one virtual agent: saved state, version, owner, activation"),
    Operation("set_reminder", False, False, "set a virtual agent's durable reminder (journaled)"),
    Operation("cancel_reminder", False, False, "remove a virtual agent's reminder"),
    # topics
    Operation("publish", True, False, "deliver a message to every agent subscribed to a topic"),
    Operation("subscribe", False, False, "subscribe one virtual agent to a topic (journaled)"),
    Operation("unsubscribe", False, False, "remove an agent's subscription to a topic"),
    Operation("subscriptions", True, True, "who receives each topic"),
    Operation("topic_messages", True, True, "a topic's recent messages after a sequence number (long-poll)"),
    # reads
    Operation("task", True, True, "one task's record"),
    Operation("tasks", True, True, "recent task records, newest first"),
    Operation("events", True, True, "task events after a sequence number (long-poll)"),
    Operation("dead_letters", True, True, "tasks that failed after every attempt"),
    Operation("pools", True, True, "every pool's state"),
    Operation("pool", True, True, "one pool's state"),
    Operation("hosts", True, True, "a pool's host actors"),
    Operation("restart_events", True, True, "recent agent restarts with causes"),
    Operation("health", True, True, "readiness of the orchestrator"),
    Operation("statistics", True, True, "counters, queues, journal and GC figures"),
    # pools: slow, rare, Ray calls
    Operation("create_pool", False, False, "create a pool or add agents to it"),
    Operation("scale", False, False, "set a pool's size"),
    Operation("stop_pool", False, False, "stop a pool and cancel its unfinished tasks"),
    # plumbing
    Operation("client_endpoint", False, True, "where and how a driver reaches the data plane"),
    Operation("tracing_config", False, True, "what agent hosts need to trace"),
    Operation("analyzer", False, True, "the analyzer actor's handle"),
    Operation("shutdown", False, False, "stop every pool's agents (hive down, Hive.close)"),
)

#: Operations that may travel over the data plane.
DATA_PLANE_OPERATIONS = frozenset(name for name, op in OPERATIONS.items() if op.data_plane)
#: Operations that are safe to send again after the connection broke mid-call.
RETRYABLE_OPERATIONS = frozenset(name for name, op in OPERATIONS.items() if op.retryable)

__all__ = ["DATA_PLANE_OPERATIONS", "OPERATIONS", "RETRYABLE_OPERATIONS", "Operation"]
