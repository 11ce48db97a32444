"""Chaos: a stream of tasks while agents are SIGKILLed, a node is removed and the orchestrator dies.

On a 3-node cluster on one machine (``ray.cluster_utils.Cluster``), a submitter
thread keeps accepting tasks while:

- a killer SIGKILLs a random agent process at random intervals;
- one worker node is removed half way through;
- the orchestrator's process is SIGKILLed once (Ray restarts it; it recovers
  from its journal).

Every execution appends its task id to a log, so duplicate executions are
counted from what really ran. At the end every accepted task must have a
recorded end: ``lost`` is the number that do not (the goal is 0).
``recovery_seconds`` is the time from the orchestrator's SIGKILL until it
answers again with its pools and tasks restored, beside the time plain Ray
takes to restart a killed actor (the baseline).
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
        time.sleep(duration / 3)
        cluster.remove_node(doomed)
        time.sleep(duration / 6)
        orchestrator_pid = hive.statistics()["pid"]
        killed_at = time.monotonic()
        os.kill(orchestrator_pid, signal.SIGKILL)
        recovery_seconds = _wait_until_answering(hive, killed_at)
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
        row("recovery_seconds", recovery_seconds, "s", "plain Ray restart of a killed actor",
            baseline_restart, goal="<= 10 s"),
    ]


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


def _wait_until_answering(hive: Any, since: float) -> float:
    """Seconds from ``since`` until the restarted orchestrator answers with its pool back."""
    while time.monotonic() - since < WAIT_SECONDS:
        try:
            pool = hive.pool("chaos")
            if pool.size > 0 and hive.statistics().get("recovery_seconds") is not None:
                return time.monotonic() - since
        except Exception:  # noqa: BLE001 - still restarting
            pass
        time.sleep(0.1)
    raise RuntimeError(f"the orchestrator did not answer with its pool back within {WAIT_SECONDS:.0f} s of its "
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
