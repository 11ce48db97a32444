"""Agents outlive an orchestrator crash, on a real local Ray.

Host actors are detached: a SIGKILLed orchestrator (Ray restarts it) adopts
them again, so agents keep their in-memory state and a task running during the
kill finishes once; the restarted orchestrator answers at once while its pools
come back; and no host outlives its orchestrator for good.
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import uuid
from pathlib import Path

import pytest

from hive_ray import Agent, Hive, HiveError, TaskState, VirtualAgent

pytestmark = pytest.mark.ray


@pytest.fixture
def hive_overrides() -> dict[str, object]:
    # spawn_wait_seconds: long, so that a pool waiting for resources would hold up a
    # recovery that waited for it (it did: recovery re-created pools one by one).
    return {"health_check_interval_seconds": 0.5, "host_adoption_timeout_seconds": 5.0,
            "orphaned_host_exit_seconds": 3.0, "spawn_wait_seconds": 600.0}


@pytest.fixture
def no_stray_hosts(request: pytest.FixtureRequest, wait_until):
    """Ask for it before ``isolated_hive``: after that fixture stopped the orchestrator,
    no host actor of it may be left (they are detached: nothing else would stop them)."""
    yield
    prefix = f"hive-host:hive:orchestrator-{request.node.name[:40]}-"
    assert wait_until(lambda: not _host_actors(prefix), 30), f"hosts left behind: {_host_actors(prefix)}"


def _host_actors(prefix: str) -> list[str]:
    import ray

    return [actor["name"] for actor in ray.util.list_named_actors(all_namespaces=True)
            if actor["name"].startswith(prefix)]


class Counter(Agent):
    """Counts its tasks in ``self.state``: in memory only, kept as long as its process lives."""

    agent_type = "counter-crash-test"

    def handle(self, task):
        self.state["count"] = self.state.get("count", 0) + 1
        return self.context.agent_id, self.state["count"]


class Sleeper(Agent):
    """Logs each execution, then runs until the test creates the release file."""

    agent_type = "sleeper-crash-test"

    async def handle(self, task):
        release, log = task.payload
        with open(log, "a") as executions:
            executions.write(task.task_id + "\n")
        while not os.path.exists(release):
            await asyncio.sleep(0.05)
        return "released"


def _kill_orchestrator(hive: Hive, wait_until) -> None:
    """SIGKILL the orchestrator's process; return once its restarted self answers."""
    pid = hive.statistics()["pid"]
    os.kill(pid, signal.SIGKILL)  # Ray restarts it (max_restarts=-1)
    assert wait_until(lambda: hive.statistics()["pid"] != pid, 60)


def _counts(hive: Hive, pool: str, tasks: int) -> dict[str, list[int]]:
    seen: dict[str, list[int]] = {}
    for _ in range(tasks):
        agent_id, count = hive.submit(pool=pool).result(timeout=30)
        seen.setdefault(agent_id, []).append(count)
    return seen


def test_agents_keep_their_state_and_a_running_task_ends_once_across_an_orchestrator_kill(
        no_stray_hosts, isolated_hive, tmp_path: Path, wait_until):
    hive = isolated_hive
    hive.spawn(Counter, count=1, pool="dedicated")
    hive.spawn(Counter, count=2, pool="packed", placement="packed", agents_per_host=2)
    hive.spawn(Sleeper, count=1, pool="sleepy")
    before = {name: _counts(hive, name, 3) for name in ("dedicated", "packed")}
    pids = {agent.agent_id: agent.pid for agent in hive.agents()}
    release, log = tmp_path / "release", tmp_path / "executions.log"
    running = hive.submit(pool="sleepy", payload=(str(release), str(log)))
    assert wait_until(lambda: log.exists() and hive.task(running.task_id).state == TaskState.RUNNING, 30)

    _kill_orchestrator(hive, wait_until)
    assert wait_until(lambda: all(p.state == "ok" for p in hive.pools()), 60)

    # Every agent was adopted in its old process: none was started again.
    assert {agent.agent_id: agent.pid for agent in hive.agents()} == pids
    assert hive.statistics()["counters"]["adopted_agents"] == len(pids)
    # Their in-memory state continues where it was.
    for name, counted in before.items():
        for agent_id, counts in _counts(hive, name, 3).items():
            assert counts[0] == max(counted.get(agent_id, [0])) + 1, (name, agent_id, counts, counted)
    # The task that was running during the kill still runs on its agent, once.
    record = hive.task(running.task_id)
    assert (record.state, record.attempts) == (TaskState.RUNNING, 1)
    release.touch()
    assert running.result(timeout=60) == "released"
    assert hive.task(running.task_id).attempts == 1
    assert log.read_text().split() == [running.task_id]  # executed once
    counters = hive.statistics()["counters"]
    assert counters["reclaimed"] == 1 and counters["duplicate_executions"] == 0


def test_a_pool_that_cannot_be_placed_does_not_delay_answers_after_a_restart(
        no_stray_hosts, isolated_hive, wait_until):
    hive = isolated_hive
    hive.spawn("echo", count=1, pool="placed")
    # The spawn waits (spawn_wait_seconds) for a resource no node has; meanwhile, the kill.
    spawning = threading.Thread(target=_spawn_unplaceable, args=(hive,), daemon=True)
    spawning.start()
    assert wait_until(lambda: any(p.name == "unplaceable" and p.starting == 1 for p in hive.pools()), 30)

    _kill_orchestrator(hive, wait_until)
    spawning.join(timeout=60)

    # Answered while that pool is still coming back (it cannot, for now).
    health = hive._call("health")  # what the API's /readyz asks
    assert health["status"] == "ok" and "unplaceable" in health["recovering_pools"]
    assert hive.submit(pool="unplaceable", payload=1).status().state == TaskState.QUEUED
    # The other pool comes back meanwhile, on its own.
    assert hive.submit(pool="placed", payload=2).result(timeout=60) == 2
    assert wait_until(lambda: hive.pool("placed").state == "ok", 30)
    assert hive.pool("unplaceable").state == "recovering"


def _spawn_unplaceable(hive: Hive) -> None:
    try:
        hive.spawn("echo", count=1, pool="unplaceable", resources={"nobody-has-this": 1})
    except HiveError:
        pass  # interrupted by the orchestrator's death: the pool is journaled all the same


def test_hosts_exit_by_themselves_once_their_orchestrator_is_gone_for_good(ray_session, tmp_path, wait_until):
    import ray

    name = f"orchestrator-orphans-{uuid.uuid4().hex[:8]}"
    hive = Hive.connect(settings={"orchestrator_name": name, "state_dir": str(tmp_path / "state"),
                                  "journal_dir": str(tmp_path / "journal"), "orphaned_host_exit_seconds": 2.0})
    try:
        hive.spawn("echo", count=2, pool="orphans")
        prefix = f"hive-host:hive:{name}:"
        assert len(_host_actors(prefix)) == 2
        # Gone for good: not restarted, and nobody called shutdown to stop its hosts.
        ray.kill(ray.get_actor(name, namespace="hive"), no_restart=True)
        assert wait_until(lambda: not _host_actors(prefix), 60)
    finally:
        hive.close()


class Typist(Agent):
    """Streams two parts, waits for the test's release file, then streams two more."""

    agent_type = "typist-crash-test"

    async def handle(self, task):
        yield "a"
        yield "b"
        while not os.path.exists(task.payload):
            await asyncio.sleep(0.05)
        yield "c"
        yield "d"


def test_a_stream_read_across_an_orchestrator_kill_starts_over_and_misses_nothing(
        no_stray_hosts, isolated_hive, tmp_path: Path, wait_until):
    from hive_ray import StreamRestart

    hive = isolated_hive
    hive.spawn(Typist, count=1)
    release = tmp_path / "release"
    stream = hive.stream("typist-crash-test", str(release))
    parts = iter(stream)
    assert [next(parts), next(parts)] == ["a", "b"]
    _kill_orchestrator(hive, wait_until)
    release.touch()
    rest = list(parts)
    # The stream starts over (its old buffer died with the orchestrator) and nothing is missing:
    # the host replays the run's parts, or, when the run ended before it could, the whole result
    # follows as one part.
    assert rest[0] == StreamRestart(attempt=1) and "".join(rest[1:]) == "abcd", rest
    assert stream.result(timeout=60) == "abcd"
    assert hive.task(stream.task_id).attempts == 1  # the same run, never run again


class Tally(VirtualAgent):
    """A virtual agent counting its messages in its durable state; "remind" sets a reminder."""

    agent_type = "tally-crash-test"

    async def handle(self, task):
        if task.payload == "remind":
            await self.set_reminder("wake", 3.0)
            return "set"
        self.state["count"] = self.state.get("count", 0) + 1
        return self.state["count"]

    def on_reminder(self, name):
        self.state["woken"] = name


def test_virtual_agents_keep_state_activations_and_reminders_across_an_orchestrator_kill(
        no_stray_hosts, isolated_hive, wait_until):
    hive = isolated_hive
    hive.spawn(Tally, 2)
    keys = [f"k{n}" for n in range(30)]
    hive.ask_many(Tally, [(key, None) for key in keys], progress=False, timeout=60)
    activations = {key: hive.agent(Tally, key).state().activation["activation"] for key in keys}
    hive.agent(Tally, "sleeper").ask_sync("remind", timeout=30)
    answers: list[object] = []
    errors: list[BaseException] = []

    def send() -> None:
        for _ in range(5):
            try:
                answers.extend(hive.ask_many(Tally, [(key, None) for key in keys], progress=False, timeout=120))
            except BaseException as error:  # noqa: BLE001 - the orchestrator is down for a moment
                errors.append(error)

    sender = threading.Thread(target=send)
    sender.start()
    _kill_orchestrator(hive, wait_until)
    sender.join(300)
    assert wait_until(lambda: all(p.state == "ok" for p in hive.pools()), 60)
    # Rounds that failed while it was down were not applied half-way more than once: every
    # agent's count is one plus the messages of every round that reached it, each once.
    rounds_done = len(answers) // len(keys)
    for key in keys:
        state = hive.agent(Tally, key).state()
        assert state.state["count"] in range(1 + rounds_done, 1 + 5 + 1), (key, state.state, rounds_done, errors)
        assert state.activation["activation"] == activations[key]  # the same single activation
    before = {key: hive.agent(Tally, key).state().state["count"] for key in keys}
    assert hive.ask_many(Tally, [(key, None) for key in keys], progress=False, timeout=60) == \
        [before[key] + 1 for key in keys]
    # The reminder set before the kill fires after it.
    assert wait_until(lambda: (hive.agent(Tally, "sleeper").state().state or {}).get("woken") == "wake", 60)
