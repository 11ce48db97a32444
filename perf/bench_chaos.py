"""Chaos: a stream of tasks while agents are SIGKILLed, a node is removed and the orchestrator dies.

On a 3-node cluster on one machine (``ray.cluster_utils.Cluster``), a submitter
thread keeps accepting tasks while:

- a killer SIGKILLs a random agent process at random intervals;
- one worker node is removed half way through;
- the orchestrator's process is SIGKILLed once (Ray restarts it; it recovers
  from its journal and adopts the hosts that outlived it).

Every execution appends its task id to a log, so duplicate executions are
counted from what really ran. At the end every accepted task must have a
recorded end: ``lost`` is the number that do not (the goal is 0).
``recovery_seconds`` is the time from the orchestrator's SIGKILL until it
answers again (its pools come back in the background), beside the time plain
Ray takes to restart a killed actor (the baseline).
``agent_state_kept@orchestrator_kill`` is the fraction of a pool of counting
agents (the count lives in ``self.state``, in memory only) whose count goes on
where it was after that kill instead of starting over (see
:func:`_orchestrator_kill`).

Measured in the same run:

- ``hung_calls``: while the chaos runs, a prober makes calls with a timeout
  (``run`` with ``wait_timeout``, ``result(timeout)``); a call that has not
  returned (a value or an error) within its timeout plus 5 s is hung.
- ``poison_dead_lettered`` and ``sibling_attempts_lost``: afterwards, one task
  that kills its process (``os._exit(1)``) among 1,000 in a packed pool must
  end dead-lettered, and the other 999 must not lose a single attempt.
"""

from __future__ import annotations

import os
import random
import signal
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from _measure import WAIT_SECONDS, row

from hive_ray import Agent


class PoisonWorker(Agent):
    """Works a little on each task; the payload "poison" kills the whole host process."""

    agent_type = "chaos-poison-worker"

    def handle(self, task: Any) -> Any:
        if task.payload == "poison":
            os._exit(1)
        time.sleep(0.002)
        return task.payload


class ChaosWorker(Agent):
    """Logs each execution, then naps for the payload's seconds."""

    agent_type = "chaos-worker"
    concurrent = True
    max_concurrency = 8

    async def handle(self, task: Any) -> str:
        import asyncio

        seconds, log_path = task.payload
        with open(log_path, "a") as log:
            log.write(task.task_id + "\n")
        await asyncio.sleep(seconds)
        return task.task_id


class ChaosCounter(Agent):
    """Counts its tasks in ``self.state``, in memory only; naps so that a burst spreads over agents."""

    agent_type = "chaos-counter"

    async def handle(self, task: Any) -> tuple[str, int]:
        import asyncio

        self.state["count"] = self.state.get("count", 0) + 1
        count = self.state["count"]
        await asyncio.sleep(0.05)
        return self.context.agent_id, count


def run(quick: bool = False) -> list[dict[str, Any]]:
    import ray
    from ray.cluster_utils import Cluster

    from hive_ray import Hive, HiveError

    duration = 45.0 if quick else 180.0
    workdir = Path(tempfile.mkdtemp(prefix="hive-chaos-"))
    log_path = str(workdir / "executions.log")
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2})
    try:
        doomed = cluster.add_node(num_cpus=1, resources={"agent_slot": 8})
        cluster.add_node(num_cpus=1, resources={"agent_slot": 8})
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, namespace="hive", logging_level="ERROR", log_to_driver=False)
        baseline_restart = _plain_actor_restart_seconds()
        hive = Hive.connect(settings={"journal_dir": str(workdir / "journal"), "state_dir": str(workdir),
                                      "health_check_interval_seconds": 1.0})
        hive.spawn(ChaosWorker, count=6, pool="chaos", resources={"agent_slot": 1},
                   restart={"max_restarts": 1000, "window_seconds": 60, "backoff_initial_seconds": 0.05,
                            "backoff_max_seconds": 1.0},
                   retry={"max_attempts": 5, "backoff_initial_seconds": 0.05})
        accepted: list[str] = []
        refused = 0
        stop = threading.Event()
        rng = random.Random(7)

        def submitter() -> None:
            nonlocal refused
            while not stop.is_set():
                try:
                    handles = hive.submit_many(None, [(rng.uniform(0.01, 0.2), log_path) for _ in range(10)],
                                               pool="chaos")
                    accepted.extend(handle.task_id for handle in handles)
                except HiveError:
                    refused += 1  # not accepted (orchestrator restarting): the client knows
                time.sleep(0.05)

        def killer() -> None:
            while not stop.wait(rng.uniform(1.0, 3.0)):
                try:
                    agents = [a for a in hive.agents("chaos") if a.state == "ready" and a.pid]
                except HiveError:
                    continue
                if agents:
                    victim = rng.choice(agents)
                    try:
                        os.kill(victim.pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass

        threads = [threading.Thread(target=submitter, daemon=True), threading.Thread(target=killer, daemon=True)]
        for thread in threads:
            thread.start()
        hung_calls = _hung_calls(hive, stop, (0.01, str(workdir / "probe.log")))
        time.sleep(duration / 3)
        cluster.remove_node(doomed)
        time.sleep(duration / 6)
        killed_at = time.monotonic()
        orchestrator_kill = _orchestrator_kill(hive)
        time.sleep(max(0.0, duration / 2 - (time.monotonic() - killed_at)))
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
        ended = _wait_for_ends(hive, accepted, timeout=180)
        executions = Path(log_path).read_text().split() if Path(log_path).exists() else []
        states = list(ended.values())
        succeeded = states.count("succeeded")
        dead_lettered = len(hive.dead_letters(limit=100_000))
        lost = sum(1 for state in states if state not in ("succeeded", "failed", "cancelled", "timed_out"))
        duplicates = len(executions) - len(set(executions))
        print(f"chaos: accepted {len(accepted)}, refused submits {refused}, succeeded {succeeded}, "
              f"dead-lettered {dead_lettered}, lost {lost}, duplicate executions {duplicates}, "
              f"restarts since the orchestrator restart {hive.pool('chaos').restarts}")
        extra_rows = hung_calls()
        extra_rows += _poison_in_a_packed_pool(hive)
        hive.close()
    finally:
        ray.shutdown()
        cluster.shutdown()
    return [
        row("accepted", len(accepted), "tasks"),
        row("succeeded", succeeded, "tasks"),
        row("dead_lettered", dead_lettered, "tasks"),
        row("lost", lost, "tasks", goal="== 0"),
        row("duplicate_executions", duplicates, "executions"),
        row("recovery_seconds", orchestrator_kill["recovery_seconds"], "s", "plain Ray restart of a killed actor",
            baseline_restart, goal="<= 5 s"),
        row("agent_state_kept@orchestrator_kill", orchestrator_kill["agent_state_kept"], "fraction of agents",
            goal="== 1.0", agents=orchestrator_kill["agents"]),
        *extra_rows,
    ]


def _orchestrator_kill(hive: Any, agents: int = 4) -> dict[str, float]:
    """SIGKILL the orchestrator once: seconds until it answers again, and which agents kept their state.

    A pool of :class:`ChaosCounter` agents counts up before the kill; afterwards an
    agent kept its state if its next count goes on from its last one. An agent
    started anew (its host did not outlive the orchestrator) counts from 1 again.
    """
    hive.spawn(ChaosCounter, count=agents, pool="chaos-counters")
    before = {agent_id: max(counts) for agent_id, counts in _counter_readings(hive, agents).items()}
    orchestrator_pid = hive.statistics()["pid"]
    killed_at = time.monotonic()
    os.kill(orchestrator_pid, signal.SIGKILL)
    recovery_seconds = _wait_until_answering(hive, killed_at, orchestrator_pid)
    after = {agent_id: min(counts) for agent_id, counts in _counter_readings(hive, agents).items()}
    kept = sum(1 for agent_id, count in before.items() if after.get(agent_id) == count + 1)
    print(f"orchestrator kill: answering again after {recovery_seconds:.2f} s; counters before {before}, "
          f"first counts after {after}")
    return {"recovery_seconds": recovery_seconds, "agent_state_kept": kept / max(1, len(before)),
            "agents": len(before)}


def _counter_readings(hive: Any, agents: int, timeout: float = 120.0) -> dict[str, list[int]]:
    """Counts each counter agent answered with, in bursts until every one has answered."""
    from hive_ray import HiveError

    readings: dict[str, list[int]] = {}
    deadline = time.monotonic() + timeout
    while len(readings) < agents and time.monotonic() < deadline:
        try:
            handles = hive.submit_many(None, [None] * (2 * agents), pool="chaos-counters")
            answers = [handle.result(timeout=max(1.0, deadline - time.monotonic())) for handle in handles]
        except HiveError:
            time.sleep(0.2)  # not accepted yet (the pool is coming back): try again
            continue
        for agent_id, count in answers:
            readings.setdefault(agent_id, []).append(count)
    return readings


def _hung_calls(hive: Any, stop: threading.Event, payload: Any, timeout: float = 5.0) -> Any:
    """Probe calls with a timeout while the chaos runs; returns a function giving the row.

    Each call runs in its own thread: one that has not returned within ``timeout``
    plus 5 s counts as hung, and is left behind rather than waited for.
    """
    calls = {"made": 0, "hung": 0}

    def one_call(kind: int) -> None:
        if kind % 2:
            hive.run(pool="chaos", payload=payload, wait_timeout=timeout)
        else:
            hive.submit(pool="chaos", payload=payload).result(timeout=timeout)

    def probe() -> None:
        kind = 0
        while not stop.wait(0.5):
            kind += 1
            call = threading.Thread(target=_quietly, args=(one_call, kind), daemon=True)
            call.start()
            call.join(timeout + 5.0)
            calls["made"] += 1
            calls["hung"] += call.is_alive()

    prober = threading.Thread(target=probe, daemon=True)
    prober.start()

    def finish() -> list[dict[str, Any]]:
        prober.join(timeout=2 * timeout + 15)
        print(f"chaos: {calls['made']} probe calls with a {timeout:g} s timeout, {calls['hung']} hung")
        return [row("hung_calls", calls["hung"], "calls", goal="== 0", calls=calls["made"])]

    return finish


def _quietly(function: Any, *args: Any) -> None:
    try:
        function(*args)
    except Exception:  # noqa: BLE001 - an error is an answer: only silence counts
        pass


def _poison_in_a_packed_pool(hive: Any, tasks: int = 1000) -> list[dict[str, Any]]:
    """One task that kills its host process among ``tasks`` in a packed pool."""
    from hive_ray import HiveError

    hive.spawn(PoisonWorker, count=8, pool="poison", placement="packed", agents_per_host=8,
               retry={"max_attempts": 3},
               restart={"max_restarts": 20, "window_seconds": 60, "backoff_initial_seconds": 0.05})
    middle = tasks // 2
    payloads: list[Any] = [*range(middle), "poison", *range(middle, tasks - 1)]
    handles = hive.submit_many(None, payloads, pool="poison")
    poison = handles[middle]
    for handle in handles:
        try:
            handle.result(timeout=300)
        except HiveError:
            pass
    dead = {record.task_id for record in hive.dead_letters(limit=100_000)}
    poison_record = hive.task(poison.task_id)
    dead_lettered = int(poison.task_id in dead and poison_record.state.value == "failed")
    lost_attempts = sum(max(0, hive.task(h.task_id).attempts - 1) for h in handles if h is not poison)
    pool = hive.pool("poison")
    print(f"poison: dead-lettered {dead_lettered} after {poison_record.attempts} attempt(s); attempts lost "
          f"by the other {tasks - 1} tasks: {lost_attempts}; pool restarts {pool.restarts}, state {pool.state}")
    hive.stop("poison")
    return [row("poison_dead_lettered", dead_lettered, "tasks", goal="== 1", restarts=pool.restarts),
            row("sibling_attempts_lost", lost_attempts, "attempts", goal="== 0")]


def _plain_actor_restart_seconds() -> float:
    import ray

    @ray.remote(num_cpus=0, max_restarts=-1)
    class Plain:
        def pid(self) -> int:
            return os.getpid()

    actor = Plain.remote()
    pid = ray.get(actor.pid.remote(), timeout=WAIT_SECONDS)
    started = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    while True:
        try:
            if ray.get(actor.pid.remote(), timeout=5) != pid:
                break
        except Exception:  # noqa: BLE001 - restarting
            time.sleep(0.05)
        if time.monotonic() - started > WAIT_SECONDS:
            raise RuntimeError(f"a plain actor killed with SIGKILL was not restarted within {WAIT_SECONDS:.0f} s; "
                               "the baseline cannot be measured on this cluster")
    seconds = time.monotonic() - started
    ray.kill(actor, no_restart=True)
    return seconds


def _wait_until_answering(hive: Any, since: float, old_pid: int) -> float:
    """Seconds from ``since`` until the restarted orchestrator (a new process) answers."""
    while time.monotonic() - since < WAIT_SECONDS:
        try:
            if hive.statistics()["pid"] != old_pid:
                return time.monotonic() - since
        except Exception:  # noqa: BLE001 - still restarting
            pass
        time.sleep(0.05)
    raise RuntimeError(f"the orchestrator did not answer within {WAIT_SECONDS:.0f} s of its "
                       "SIGKILL; recovery is broken or the machine is overloaded")


def _wait_for_ends(hive: Any, task_ids: list[str], timeout: float) -> dict[str, str]:
    from hive_ray import HiveError

    deadline = time.monotonic() + timeout
    states: dict[str, str] = {}
    pending = list(task_ids)
    while pending and time.monotonic() < deadline:
        still = []
        for task_id in pending:
            try:
                state = hive.task(task_id).state.value
            except HiveError:
                state = "unknown"
            states[task_id] = state
            if state not in ("succeeded", "failed", "cancelled", "timed_out"):
                still.append(task_id)
        pending = still
        if pending:
            time.sleep(0.5)
    return states
