"""``hive.map`` beside the strongest plain-Ray ways of doing the same work, in one run.

The same echo items go, in every round and in a rotating order, through:

- ``hive``: ``hive.map`` over 8 echo agents (journal on, data plane on: the defaults);
- ``actor_pool``: ``ray.util.ActorPool.map`` over 8 plain actors: at most one call
  in flight per actor, nothing batched (the weakest baseline);
- ``pipelined_calls``: one plain actor call per item, all in flight at once,
  round robin over the 8 actors, then one ``ray.get``;
- ``mp_pool``: ``ray.util.multiprocessing.Pool(8).map`` with ``chunksize`` =
  hive-ray's ``max_batch`` (the most tasks hive-ray sends an agent in one message);
- ``batched_calls``: the items in chunks of ``MAP_CHUNK`` (what ``hive.map``
  sends the orchestrator per call), one actor call per chunk, all in flight;

and, when asked (``bench_overhead``), two more orchestrators of their own in the
same Ray, to separate what each part gives:

- ``hive_data_plane_off``: the data plane off (``data_plane: false``): tasks travel as Ray calls,
  still batched, so this against ``actor_pool`` is what batching gives, and
  ``hive`` against this is what the data plane gives;
- ``hive_journal_off``: ``journal: false``: what durability costs.

CPU per task is the user + system CPU time of each configuration's processes
(this driver, the orchestrator, the agent hosts or plain actors) over the
measured interval, divided by the items, as psutil reads it. Idle background
work (health checks, Ray's heartbeats) is included, the same for every
configuration; each interval is about a second, so it is small.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from _measure import WAIT_SECONDS, close_isolated, cpu_seconds, isolated_settings, progress, row
from _stats import median

AGENTS = 8
MAP_CHUNK = 512  # Hive.map's default chunk_size: items per orchestrator call

ACTOR_POOL = "ray.util.ActorPool.map over 8 plain actors"
PIPELINED = "pipelined plain actor calls (all in flight, round robin over 8 actors)"
BATCHED = f"batched pipelined actor calls ({MAP_CHUNK} items per call, all in flight, 8 actors)"


def mp_pool_name(chunk: int) -> str:
    return f"ray.util.multiprocessing.Pool(8).map, chunksize={chunk}"


@dataclass
class _Measured:
    rates: list[float] = field(default_factory=list)
    cpu: dict[str, list[float]] = field(default_factory=dict)  # role -> µs per task, per round

    def cpu_median(self, role: str) -> float:
        return median(self.cpu.get(role, []))

    def total_cpu_median(self) -> float:
        rounds = len(self.rates)
        return median([sum(self.cpu[role][index] for role in self.cpu) for index in range(rounds)])


class ThroughputComparison:
    """Spawns every configuration once, measures them in alternating rounds, and returns rows."""

    def __init__(self, hive: Any, *, variants: bool, state_dir: str) -> None:
        self._hive = hive
        self._variants = variants
        self._state_dir = state_dir
        self._configurations: dict[str, Callable[[list[int]], list[Any]]] = {}
        self._pids: dict[str, dict[str, list[int]]] = {}
        self._cleanup: list[Callable[[], None]] = []
        self.mp_chunk = hive.settings.max_batch

    def __enter__(self) -> ThroughputComparison:
        try:
            self._start()
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        for cleanup in reversed(self._cleanup):
            try:
                cleanup()
            except Exception:  # noqa: BLE001 - cleaning up a benchmark
                pass
        self._cleanup.clear()

    def _start(self) -> None:
        import ray
        from ray.util import ActorPool
        from ray.util.multiprocessing import Pool

        from hive_ray import Hive

        driver = os.getpid()
        echo_class = plain_echo_class()
        actors = [echo_class.remote() for _ in range(AGENTS)]
        self._cleanup.append(lambda: [ray.kill(actor) for actor in actors])
        actor_pids = ray.get([actor.pid.remote() for actor in actors], timeout=WAIT_SECONDS)
        plain = {"driver": [driver], "actors": actor_pids}

        def actor_pool(items: list[int]) -> list[Any]:
            pool = ActorPool(actors)  # what ActorPool.map does, with every wait bounded
            for item in items:
                pool.submit(lambda actor, value: actor.echo.remote(value), item)
            return [pool.get_next(timeout=WAIT_SECONDS) for _ in items]

        def pipelined(items: list[int]) -> list[Any]:
            refs = [actors[index % AGENTS].echo.remote(item) for index, item in enumerate(items)]
            return ray.get(refs, timeout=WAIT_SECONDS)

        def batched(items: list[int]) -> list[Any]:
            chunks = [items[start:start + MAP_CHUNK] for start in range(0, len(items), MAP_CHUNK)]
            refs = [actors[index % AGENTS].echo_many.remote(chunk) for index, chunk in enumerate(chunks)]
            return [result for answer in ray.get(refs, timeout=WAIT_SECONDS) for result in answer]

        mp_pool = Pool(processes=AGENTS, ray_remote_args={"num_cpus": 0})
        self._cleanup.append(mp_pool.terminate)
        echo = _echo_function()
        # The pool's actors are private to it; ask each one its pid (one batch per actor).
        mp_pids = [ray.get(actor.run_batch.remote(os.getpid, [((), {})]), timeout=WAIT_SECONDS)[0]
                   for actor, _ in getattr(mp_pool, "_actor_pool", [])]

        def mp_map(items: list[int]) -> list[Any]:
            return mp_pool.map_async(echo, items, chunksize=self.mp_chunk).get(timeout=WAIT_SECONDS)

        self._add("actor_pool", actor_pool, plain)
        self._add("pipelined_calls", pipelined, plain)
        self._add("batched_calls", batched, plain)
        self._add("mp_pool", mp_map, {"driver": [driver], "actors": mp_pids})
        self._add_hive("hive", self._hive)
        if self._variants:
            for name, extra in (("hive_data_plane_off", _data_plane_off()),
                                ("hive_journal_off", {"journal": False})):
                client = Hive.connect(settings=isolated_settings(name, self._state_dir, **extra))
                self._cleanup.append(lambda client=client: close_isolated(client))
                self._add_hive(name, client)

    def _add(self, name: str, function: Callable[[list[int]], list[Any]], pids: dict[str, list[int]]) -> None:
        self._configurations[name] = function
        self._pids[name] = pids

    def _add_hive(self, name: str, client: Any) -> None:
        pool = f"throughput-{name}"
        client.spawn("echo", count=AGENTS, pool=pool)
        self._cleanup.append(lambda: client.stop(pool))

        def hive_map(items: list[int]) -> list[Any]:
            return client.map(None, items, pool=pool, progress=False, timeout=WAIT_SECONDS)

        pids = {"driver": [os.getpid()], "orchestrator": [int(client.statistics()["pid"])],
                "hosts": [agent.pid for agent in client.agents(pool) if agent.pid]}
        self._add(name, hive_map, pids)

    def measure(self, tasks: int, rounds: int) -> dict[str, _Measured]:
        """One unmeasured warm-up round, then ``rounds`` rounds, each configuration once per round."""
        names = list(self._configurations)
        measured = {name: _Measured() for name in names}
        for number in range(-1, rounds):
            count = min(tasks, 2000) if number < 0 else tasks
            items = list(range(count))
            shift = max(0, number) % len(names)
            for name in names[shift:] + names[:shift]:  # a rotating order: no configuration always first
                pids = self._pids[name]
                before = {role: cpu_seconds(group) for role, group in pids.items()}
                started = time.perf_counter()
                results = self._configurations[name](items)
                elapsed = time.perf_counter() - started
                after = {role: cpu_seconds(group) for role, group in pids.items()}
                if len(results) != count or results[-1] != count - 1:
                    raise RuntimeError(f"{name}: wrong results ({len(results)} of {count}); the "
                                       "comparison would be meaningless")
                if number < 0:
                    continue
                progress(f"throughput: round {number + 1} of {rounds}, {name}: {count / elapsed:,.0f} items/s")
                measured[name].rates.append(count / elapsed)
                for role in pids:
                    measured[name].cpu.setdefault(role, []).append((after[role] - before[role]) / count * 1e6)
        return measured

    def rows(self, measured: dict[str, _Measured], *, actor_pool_goal: str) -> list[dict[str, Any]]:
        """One row per baseline; ``hive`` is the value of each."""
        rate = {name: median(m.rates) for name, m in measured.items()}
        rounds = {name: [round(value) for value in m.rates] for name, m in measured.items()}
        hive = "hive"

        def throughput(metric: str, baseline: str, label: str, goal: str = "") -> dict[str, Any]:
            return row(metric, rate[hive], "tasks/s", label, rate[baseline], goal=goal,
                       rounds=rounds[hive], baseline_rounds=rounds[baseline])

        rows = [
            throughput("throughput_tasks_per_s@vs_batched_calls", "batched_calls", BATCHED),
            throughput("throughput_tasks_per_s@vs_mp_pool", "mp_pool", mp_pool_name(self.mp_chunk),
                       "ratio >= 0.5 (moonshot 1.0)"),
            throughput("throughput_tasks_per_s@vs_pipelined_calls", "pipelined_calls", PIPELINED),
            throughput("throughput_tasks_per_s", "actor_pool", ACTOR_POOL, actor_pool_goal),
        ]
        for name, label in (("batched_calls", BATCHED), ("mp_pool", mp_pool_name(self.mp_chunk))):
            if not self._pids[name]["actors"]:
                continue  # its processes are unknown (the Pool's internals changed): no honest CPU figure
            by_role = {role: round(measured[name].cpu_median(role), 2) for role in measured[name].cpu}
            rows.append(row(f"cpu_us_per_task@vs_{name}", measured[hive].total_cpu_median(), "µs CPU/task",
                            label + ", driver and actors", measured[name].total_cpu_median(),
                            by_process=_roles(measured[hive]), baseline_by_process=by_role))
        if self._variants:
            off, no_journal = "hive_data_plane_off", "hive_journal_off"
            rows.append(throughput("throughput_tasks_per_s@vs_data_plane_off", off,
                                   "hive.map with the data plane off (tasks as Ray calls, still batched)"))
            rows.append(row("throughput_tasks_per_s@data_plane_off", rate[off], "tasks/s", ACTOR_POOL,
                            rate["actor_pool"], rounds=rounds[off], baseline_rounds=rounds["actor_pool"],
                            note="batching without the data plane, against no batching"))
            rows.append(throughput("throughput_tasks_per_s@vs_journal_off", no_journal,
                                   "hive.map with the journal off"))
            for role in ("orchestrator", "hosts", "driver"):
                metric = "host" if role == "hosts" else role
                rows.append(row(f"{metric}_cpu_us_per_task", measured[hive].cpu_median(role), "µs CPU/task",
                                "the same with the journal off", measured[no_journal].cpu_median(role),
                                data_plane_off=round(measured[off].cpu_median(role), 2)))
        return rows


def _data_plane_off() -> dict[str, Any]:
    """The setting that sends every task as a Ray call: ``data_plane: false`` where the
    settings have it, else the older ``data_plane_host: "off"``."""
    from hive_ray import Settings

    return {"data_plane": False} if "data_plane" in Settings.model_fields else {"data_plane_host": "off"}


def _roles(measured: _Measured) -> dict[str, float]:
    return {role: round(measured.cpu_median(role), 2) for role in measured.cpu}


def plain_echo_class() -> Any:
    """A plain echo actor (defined here so that Ray ships it by value to its workers)."""
    import ray

    @ray.remote(num_cpus=0)
    class PlainEcho:
        def echo(self, value: Any) -> Any:
            return value

        def echo_many(self, values: list[Any]) -> list[Any]:
            return list(values)

        def pid(self) -> int:
            return os.getpid()

    return PlainEcho


def _echo_function() -> Callable[[Any], Any]:
    def echo(value: Any) -> Any:  # nested: pickled by value, so Pool workers need not import perf/
        return value

    return echo
