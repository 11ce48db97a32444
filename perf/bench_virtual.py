"""Virtual agents: activation, messages, 10,000 keyed states, 100,000 active at once, state across kills.

Every figure is measured in this run, beside the plain-Ray way of doing the same:

- ``activation_p50_ms``: the first message to a new identity, answered (p50
  over many new keys); baseline: a named actor per key, the Ray way
  (``Actor.options(name=key, get_if_exists=True, ...).remote()`` plus one call),
  timed per sample, the two sides interleaved.
- ``message_p50_ms``: one ``ask_sync`` to an active agent; baseline: a plain
  actor call, ``ray.get(actor.add.remote(x))``, interleaved in blocks.
- ``message_throughput@10000``: messages per second spread over 10,000
  identities with ``hive.ask_many``, each message changing its agent's state
  (saved and journaled); baseline: a few plain actors holding a dict of states
  by key, messages routed by ``crc32(key)`` in calls of 512, all in flight (the
  states in memory only). Rounds alternate the two sides; the medians count.
- ``active_agents@N`` and ``agent_kib@N``: N identities (100,000; 20,000 in
  quick mode) activated on one node, each with a small state; the active count
  is what the hosts' health answers say, the memory the USS growth of the host
  processes per active identity; baseline: the USS of one plain named actor
  (one per key, the Ray way), measured on the activation baseline's actors.
- ``state_kept@host_kill``: identities with known states, every host process of
  their pool SIGKILLed, then each asked for its state (reactivated from the
  journal on the restarted hosts): the fraction intact. Baseline: the dict
  actors above, SIGKILLed and restarted by Ray (``max_restarts=-1``).
- ``state_kept@orchestrator_kill``: the same across a SIGKILL of the
  orchestrator (recovered from its journal, the client connecting anew); the
  row also says how many states the journal itself still holds
  (``ref.state()``), since the hosts outlive the orchestrator and would answer
  from memory anyway. Plain Ray has no orchestrator to kill: no baseline.

- ``pubsub_fanout_msgs_per_s@1000``: one topic, 1,000 agents subscribed to it
  (``hive.subscribe``); messages published one after another, each delivered to
  every subscriber (a message task per subscriber, accepted before ``publish``
  returns), each delivery changing its agent's state; deliveries per second
  until every subscriber has handled every message (read back in order).
  Baseline: the same fan-out the plain-Ray way, the dict actors above holding
  the 1,000 subscribers' states, each published message one call per actor
  carrying its subscribers (all in flight).

The orchestrator kill comes last: everything before it runs on one orchestrator
that never restarted. A phase is a function of :class:`_Bench` returning rows
(``PHASES``).
"""

from __future__ import annotations

import os
import shutil
import signal
import statistics
import tempfile
import time
import zlib
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any

from _measure import (
    WAIT_SECONDS,
    close_isolated,
    cpu_seconds,
    isolated_settings,
    local_ray,
    percentile,
    progress,
    row,
    uss_bytes,
)

from hive_ray import VirtualAgent

SHARDS = 2  # shards of each virtual type, one host process each; the dict actors are as many
IDENTITIES = 10_000  # distinct identities of the throughput row
BATCH = 512  # messages per call of the dict-actor baseline
PLAIN_NAMESPACE = "bench-virtual-plain"


@dataclass(frozen=True, slots=True)
class Sizes:
    activations: int  # new identities timed one by one
    plain_activations: int  # named actors timed one by one (each starts a process)
    messages: int  # ask_sync calls timed (and as many plain calls)
    per_identity: int  # messages per identity in each throughput round
    rounds: int  # throughput rounds per side
    active: int  # identities active at once for the memory rows
    kept: int  # identities whose state must survive each kill
    published: int  # messages published to the 1,000 subscribers per pub/sub round


QUICK = Sizes(activations=300, plain_activations=20, messages=1_000, per_identity=2, rounds=3, active=100_000,
              kept=5_000, published=10)
FULL = Sizes(activations=1_000, plain_activations=60, messages=3_000, per_identity=5, rounds=5, active=100_000,
             kept=10_000, published=50)


# ---------------------------------------------------------------------- the agents
class BenchCounter(VirtualAgent):
    """Adds the message (an int) to its count and answers with it; ``None`` reads the whole state."""

    agent_type = "bench-virtual-counter"
    idle_seconds = 3600.0  # none is dropped while the benchmark runs

    def handle(self, task: Any) -> Any:
        if task.payload is None:
            return dict(self.state)
        self.state["count"] = self.state.get("count", 0) + task.payload
        return self.state["count"]


class IdleCounter(BenchCounter):
    """The same, in a pool of its own: the memory rows measure its hosts alone."""

    agent_type = "bench-virtual-idle"


class KeptCounter(BenchCounter):
    """The same, in the pool whose hosts and orchestrator are killed."""

    agent_type = "bench-virtual-kept"


def _plain_classes() -> tuple[Any, Any]:
    """The baselines' actors: one counter per key, and a dict of counters by key."""
    import ray

    @ray.remote(num_cpus=0)
    class KeyedCounter:
        def __init__(self) -> None:
            self.count = 0

        def add(self, amount: int) -> int:
            self.count += amount
            return self.count

        def pid(self) -> int:
            return os.getpid()

    @ray.remote(num_cpus=0, max_restarts=-1)
    class CounterTable:
        def __init__(self) -> None:
            self.states: dict[str, dict[str, int]] = {}

        def add_many(self, messages: list[tuple[str, int]]) -> list[int]:
            answers = []
            for key, amount in messages:
                state = self.states.setdefault(key, {})
                state["count"] = state.get("count", 0) + amount
                answers.append(state["count"])
            return answers

        def read_many(self, keys: list[str]) -> list[dict[str, int]]:
            return [dict(self.states.get(key, {})) for key in keys]

        def pid(self) -> int:
            return os.getpid()

    return KeyedCounter, CounterTable


# ---------------------------------------------------------------------- the run
@dataclass
class _Bench:
    """What the phases share: the client (replaced when the orchestrator restarts), its settings, sizes."""

    hive: Any
    settings: dict[str, Any]
    sizes: Sizes
    plain_actor_kib: float | None = None  # from the activation phase, for the memory row
    tables: list[Any] = field(default_factory=list)  # the dict actors of the throughput baseline
    tables_filled: dict[str, int] = field(default_factory=dict)  # their states' counts, by key


def run(quick: bool = False) -> list[dict[str, Any]]:
    state = tempfile.mkdtemp(prefix="hive-bench-virtual-")
    try:
        with local_ray():
            return _measure(QUICK if quick else FULL, state)
    finally:
        shutil.rmtree(state, ignore_errors=True)


def _measure(sizes: Sizes, state: str) -> list[dict[str, Any]]:
    from hive_ray import Hive

    # A short health interval: killed hosts are noticed (and restarted) within a second or two.
    settings = isolated_settings("virtual", state, health_check_interval_seconds=1.0)
    bench = _Bench(Hive.connect(settings=settings), settings, sizes)
    rows: list[dict[str, Any]] = []
    try:
        for phase in PHASES:
            rows.extend(phase(bench))
    finally:
        close_isolated(bench.hive)
    return rows


# ---------------------------------------------------------------------- activation and one message
def _activation(bench: _Bench) -> list[dict[str, Any]]:
    import ray

    hive, sizes = bench.hive, bench.sizes
    hive.spawn(BenchCounter, SHARDS)
    hive.agent(BenchCounter, "warm").ask_sync(1, timeout=WAIT_SECONDS)  # the shards' code paths warm
    keyed_counter, _ = _plain_classes()
    warm = keyed_counter.options(name="warm", namespace=PLAIN_NAMESPACE).remote()
    ray.get(warm.add.remote(1), timeout=WAIT_SECONDS)
    progress(f"virtual: first messages to {sizes.activations:,} new identities, "
             f"{sizes.plain_activations} new named actors")
    hive_ms: list[float] = []
    plain_ms: list[float] = []
    plain_actors = []
    every = max(1, sizes.activations // sizes.plain_activations)  # one named actor per this many identities
    for number in range(sizes.activations):
        ref = hive.agent(BenchCounter, f"new-{number}")
        started = time.perf_counter()
        answer = ref.ask_sync(1, timeout=WAIT_SECONDS)
        hive_ms.append((time.perf_counter() - started) * 1e3)
        _expect(answer == 1, f"a new identity answered {answer!r} to its first message, not 1")
        if number % every == 0 and len(plain_ms) < sizes.plain_activations:
            started = time.perf_counter()
            actor = keyed_counter.options(name=f"new-{number}", get_if_exists=True, namespace=PLAIN_NAMESPACE,
                                          lifetime=None).remote()
            answer = ray.get(actor.add.remote(1), timeout=WAIT_SECONDS)
            plain_ms.append((time.perf_counter() - started) * 1e3)
            _expect(answer == 1, f"a new named actor answered {answer!r} to its first call, not 1")
            plain_actors.append(actor)
    # One plain actor per key is what the memory rows weigh an identity against.
    pids = ray.get([actor.pid.remote() for actor in plain_actors], timeout=WAIT_SECONDS)
    bench.plain_actor_kib = statistics.median(uss_bytes([pid]) for pid in pids) / 1024
    for actor in [warm, *plain_actors]:
        ray.kill(actor)
    return [row("activation_p50_ms", percentile(hive_ms, 0.5), "ms",
                "a new named actor per key (get_if_exists) plus one call", percentile(plain_ms, 0.5),
                samples=len(hive_ms), baseline_samples=len(plain_ms),
                p99_ms=round(percentile(hive_ms, 0.99), 3), baseline_p99_ms=round(percentile(plain_ms, 0.99), 3))]


def _message_latency(bench: _Bench) -> list[dict[str, Any]]:
    import ray

    hive, sizes = bench.hive, bench.sizes
    ref = hive.agent(BenchCounter, "hot")
    keyed_counter, _ = _plain_classes()
    actor = keyed_counter.remote()
    ray.get(actor.add.remote(0), timeout=WAIT_SECONDS)
    progress(f"virtual: {sizes.messages:,} messages to an active agent, as many plain actor calls")
    hive_ms: list[float] = []
    plain_ms: list[float] = []
    block = 50
    for _ in range(sizes.messages // block):  # blocks of each side in turn
        for _ in range(block):
            started = time.perf_counter()
            ref.ask_sync(1, timeout=WAIT_SECONDS)
            hive_ms.append((time.perf_counter() - started) * 1e3)
        for _ in range(block):
            started = time.perf_counter()
            ray.get(actor.add.remote(1), timeout=WAIT_SECONDS)
            plain_ms.append((time.perf_counter() - started) * 1e3)
    _expect(ref.state().state == {"count": len(hive_ms)},
            f"the hot agent's saved state is {ref.state().state!r}, not a count of {len(hive_ms)}")
    ray.kill(actor)
    return [row("message_p50_ms", percentile(hive_ms, 0.5), "ms", "a plain actor call, ray.get(actor.add.remote(x))",
                percentile(plain_ms, 0.5), goal="ratio <= 1.5", samples=len(hive_ms),
                p99_ms=round(percentile(hive_ms, 0.99), 3), baseline_p99_ms=round(percentile(plain_ms, 0.99), 3))]


# ---------------------------------------------------------------------- 10,000 keyed states
def _throughput(bench: _Bench) -> list[dict[str, Any]]:
    import ray

    hive, sizes = bench.hive, bench.sizes
    keys = [f"user-{number}" for number in range(IDENTITIES)]
    _, counter_table = _plain_classes()
    bench.tables = [counter_table.remote() for _ in range(SHARDS)]
    ray.get([table.pid.remote() for table in bench.tables], timeout=WAIT_SECONDS)
    # Every identity active (and every dict entry made) before the rounds.
    started = time.perf_counter()
    _expect(hive.ask_many(BenchCounter, [(key, 1) for key in keys], progress=False, timeout=WAIT_SECONDS)
            == [1] * IDENTITIES, "the first message to each of 10,000 identities did not answer 1")
    first_rate = IDENTITIES / (time.perf_counter() - started)
    _expect(_table_round(bench.tables, [(key, 1) for key in keys]) == [1] * IDENTITIES,
            "the dict actors did not answer 1 to each key's first message")
    messages = [(key, 1) for _ in range(sizes.per_identity) for key in keys]
    expected = [1 + (index // IDENTITIES) + 1 for index in range(len(messages))]  # counts, round 0
    hive_rates, plain_rates = [], []
    # Where the CPU goes on hive-ray's side: this process, the orchestrator, the shards' hosts.
    processes = {"client": [os.getpid()], "orchestrator": [int(hive.statistics()["pid"])],
                 "hosts": _host_pids(hive, BenchCounter.type_name(), SHARDS)}
    cpu = dict.fromkeys(processes, 0.0)
    for number in range(sizes.rounds):
        progress(f"virtual: throughput round {number + 1} of {sizes.rounds} ({len(messages):,} messages "
                 f"over {IDENTITIES:,} identities, each side)")
        offset = number * sizes.per_identity
        used = {name: cpu_seconds(pids) for name, pids in processes.items()}
        started = time.perf_counter()
        answers = hive.ask_many(BenchCounter, messages, progress=False, timeout=WAIT_SECONDS)
        hive_rates.append(len(messages) / (time.perf_counter() - started))
        for name, pids in processes.items():
            cpu[name] += cpu_seconds(pids) - used[name]
        _expect(answers == [count + offset for count in expected], "ask_many answered counts out of order")
        started = time.perf_counter()
        answers = _table_round(bench.tables, messages)
        plain_rates.append(len(messages) / (time.perf_counter() - started))
        _expect(answers == [count + offset for count in expected], "the dict actors answered wrong counts")
    bench.tables_filled = {key: 1 + sizes.rounds * sizes.per_identity for key in keys}
    hive_rate, plain_rate = statistics.median(hive_rates), statistics.median(plain_rates)
    return [row(f"message_throughput@{IDENTITIES}", hive_rate, "messages/s",
                f"{SHARDS} plain actors holding a dict of states by key, crc32(key) routing, calls of {BATCH} "
                "all in flight (states in memory only)", plain_rate,
                goal=">= 10,000/s (absolute)", goal_met=hive_rate >= 10_000,
                messages=len(messages), rounds=sizes.rounds, shards=SHARDS,
                hive_rates=[round(rate) for rate in hive_rates], baseline_rates=[round(rate) for rate in plain_rates],
                first_messages_per_s=round(first_rate),
                **{f"{name}_cpu_us_per_message": round(seconds * 1e6 / (sizes.rounds * len(messages)), 1)
                   for name, seconds in cpu.items()},
                note="every message changes its agent's state: each is saved and journaled")]


def _table_round(tables: list[Any], messages: list[tuple[str, int]]) -> list[int]:
    """Messages through the dict actors: routed by key, batched, every call in flight; answers in order."""
    import ray

    routed: list[list[int]] = [[] for _ in tables]  # message indexes per actor
    for index, (key, _) in enumerate(messages):
        routed[zlib.crc32(key.encode()) % len(tables)].append(index)
    calls = []
    for table, indexes in zip(tables, routed, strict=True):
        for start in range(0, len(indexes), BATCH):
            part = indexes[start:start + BATCH]
            calls.append((part, table.add_many.remote([messages[index] for index in part])))
    answers: list[int] = [0] * len(messages)
    for part, counts in zip((part for part, _ in calls), ray.get([ref for _, ref in calls], timeout=WAIT_SECONDS),
                            strict=True):
        for index, count in zip(part, counts, strict=True):
            answers[index] = count
    return answers


# ---------------------------------------------------------------------- many active at once
def _active_agents(bench: _Bench) -> list[dict[str, Any]]:
    hive, count = bench.hive, bench.sizes.active
    pool = IdleCounter.type_name()
    hive.spawn(IdleCounter, SHARDS)
    warm = [f"warm-{number}" for number in range(200)]
    hive.ask_many(IdleCounter, [(key, 1) for key in warm], progress=False, timeout=WAIT_SECONDS)
    pids = _host_pids(hive, pool, SHARDS)
    orchestrator = [int(hive.statistics()["pid"])]
    before, orchestrator_before = uss_bytes(pids), uss_bytes(orchestrator)
    progress(f"virtual: activating {count:,} identities")
    started = time.perf_counter()
    answers = hive.ask_many(IdleCounter, [(f"idle-{number}", 1) for number in range(count)], progress=False,
                            timeout=WAIT_SECONDS)
    seconds = time.perf_counter() - started
    _expect(answers == [1] * count, f"not every one of {count:,} new identities answered 1")
    active = _active_count(hive, pool) - len(warm)
    growth = uss_bytes(pids) - before
    orchestrator_growth = uss_bytes(orchestrator) - orchestrator_before
    kib = growth / max(1, active) / 1024
    progress(f"virtual: {active:,} active, {kib:.2f} KiB each; stopping their pool")
    hive.stop(pool)
    return [row(f"active_agents@{count}", active, "agents", goal=f"== {count} (all active)",
                activated_in_seconds=round(seconds, 2), shards=SHARDS, hosts=len(pids),
                note="as the hosts' health answers count them (virtual.active), less the warm-up identities"),
            row(f"agent_kib@{count}", kib, "KiB", "one plain named actor (USS), one per key the Ray way",
                bench.plain_actor_kib, goal="<= 4 KiB", hosts_uss_growth_mib=round(growth / 2**20, 1),
                orchestrator_kib_per_agent=round(orchestrator_growth / max(1, active) / 1024, 3),
                agents_in_one_plain_actors_memory=round((bench.plain_actor_kib or 0) / kib) if kib > 0 else None,
                note="USS growth of the host processes per active identity, each with a small state")]


def _active_count(hive: Any, pool: str) -> int:
    return sum((host.get("virtual") or {}).get("active", 0) for host in hive.hosts(pool))


def _host_pids(hive: Any, pool: str, expected: int, not_in: Collection[int] = ()) -> list[int]:
    """The pids of ``pool``'s hosts once ``expected`` answer, none of them one of ``not_in``."""
    deadline = time.monotonic() + WAIT_SECONDS
    while True:
        try:
            pids = [host["pid"] for host in hive.hosts(pool) if "pid" in host]
        except Exception:  # noqa: BLE001 - the orchestrator restarting
            pids = []
        if len(pids) >= expected and not set(pids) & set(not_in):
            return pids
        if time.monotonic() > deadline:
            raise RuntimeError(f"{pool}: {len(pids)} of {expected} hosts answered (pids {pids}, killed "
                               f"{sorted(not_in)}) within {WAIT_SECONDS:.0f} s; the pool: {_pool_report(hive, pool)}")
        time.sleep(0.2)


def _pool_report(hive: Any, pool: str) -> str:
    """What the orchestrator says of a pool that did not come back: its agents and restarts."""
    try:
        info = hive.pool(pool)
        agents = ", ".join(f"{agent.agent_id} {agent.state} pid {agent.pid}" for agent in info.agents)
        restarts = "; ".join(f"{event['agent']} {event['cause']} attempt {event.get('attempt')}"
                             for event in hive.restarts(pool))
        return f"state {info.state}, starting {info.starting}, agents: {agents}; restarts: {restarts or 'none'}"
    except Exception as error:  # noqa: BLE001 - a report, not a result
        return f"(could not ask: {error})"


# ---------------------------------------------------------------------- a topic fanning out
SUBSCRIBERS = 1_000


def _pubsub(bench: _Bench) -> list[dict[str, Any]]:
    hive, sizes = bench.hive, bench.sizes
    topic = "bench-fanout"
    subscribers = [f"subscriber-{number}" for number in range(SUBSCRIBERS)]
    for key in subscribers:
        hive.subscribe(topic, BenchCounter, key)
    published = sizes.published
    progress(f"virtual: {published} messages published to {SUBSCRIBERS:,} subscribers, each side")
    hive_rates, plain_rates = [], []
    tables = bench.tables or []
    for number in range(sizes.rounds):
        started = time.perf_counter()
        deliveries = sum(hive.publish(topic, 1)["deliveries"] for _ in range(published))
        counts = hive.ask_many(BenchCounter, [(key, None) for key in subscribers], progress=False,
                               timeout=WAIT_SECONDS)  # after every delivery: one key's messages keep their order
        hive_rates.append(deliveries / (time.perf_counter() - started))
        _expect(deliveries == published * SUBSCRIBERS and
                all(count == {"count": published * (number + 1)} for count in counts),
                f"subscribers hold {counts[:3]!r}..., not {published * (number + 1)} deliveries each")
        started = time.perf_counter()
        for _ in range(published):
            _table_round(tables, [(key, 1) for key in subscribers])
        plain_rates.append(published * SUBSCRIBERS / (time.perf_counter() - started))
    hive_rate, plain_rate = statistics.median(hive_rates), statistics.median(plain_rates)
    return [row(f"pubsub_fanout_msgs_per_s@{SUBSCRIBERS}", hive_rate, "deliveries/s",
                f"the {SHARDS} dict actors holding the subscribers' states, one call per actor and published "
                "message (its subscribers' keys), every call in flight", plain_rate,
                published_per_round=published, rounds=sizes.rounds,
                hive_rates=[round(rate) for rate in hive_rates], baseline_rates=[round(rate) for rate in plain_rates],
                note="each delivery is a journaled message task that changes its agent's state; the "
                     "time includes reading every subscriber's count back")]


# ---------------------------------------------------------------------- state across kills
def _host_kill(bench: _Bench) -> list[dict[str, Any]]:
    import ray

    hive, count = bench.hive, bench.sizes.kept
    pool = KeptCounter.type_name()
    hive.spawn(KeptCounter, SHARDS)
    keys = [f"host-kill-{number}" for number in range(count)]
    expected = _give_states(hive, keys)
    pids = _host_pids(hive, pool, SHARDS)
    progress(f"virtual: {count:,} identities with known states; SIGKILL of the pool's {len(pids)} hosts")
    killed_at = time.monotonic()
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    _host_pids(hive, pool, SHARDS, not_in=set(pids))
    _wait_for(lambda: hive.pool(pool).state == "ok", f"pool {pool} back to ok after its hosts were killed")
    back = time.monotonic() - killed_at
    kept, errors = _states_kept(hive, keys, expected)
    progress(f"virtual: hosts back after {back:.1f} s; {kept:.4f} of the states kept; the same for the dict actors")
    # The plain way: the dict actors, SIGKILLed and restarted by Ray with their states in memory.
    table_pids = ray.get([table.pid.remote() for table in bench.tables], timeout=WAIT_SECONDS)
    for pid in table_pids:
        os.kill(pid, signal.SIGKILL)
    keys_plain = list(bench.tables_filled)
    read = _wait_for(lambda: _table_read(bench.tables, keys_plain), "the dict actors restarted by Ray")
    plain_kept = sum(state.get("count") == bench.tables_filled[key] for key, state in zip(keys_plain, read,
                                                                                            strict=True))
    for table in bench.tables:
        ray.kill(table, no_restart=True)
    return [row("state_kept@host_kill", kept, "fraction",
                f"{SHARDS} dict actors with max_restarts=-1, SIGKILLed (Ray restarts them, states in memory)",
                plain_kept / len(keys_plain), goal="== 1.0", identities=count, hosts_killed=len(pids),
                errors=errors, hosts_back_seconds=round(back, 2), baseline_identities=len(keys_plain))]


def _orchestrator_kill(bench: _Bench) -> list[dict[str, Any]]:
    from hive_ray import Hive

    hive, count = bench.hive, bench.sizes.kept
    keys = [f"orchestrator-kill-{number}" for number in range(count)]
    expected = _give_states(hive, keys)
    pid = int(hive.statistics()["pid"])
    progress(f"virtual: {count:,} identities with known states; SIGKILL of the orchestrator")
    killed_at = time.monotonic()
    os.kill(pid, signal.SIGKILL)  # Ray restarts it; it recovers from its journal
    _wait_for(lambda: _answering_pid(hive) not in (None, pid), "the orchestrator answering again")
    answering = time.monotonic() - killed_at
    hive.close()  # a client of the process that died; a new one, as a new driver would
    bench.hive = hive = Hive.connect(settings=bench.settings)
    _wait_for(lambda: all(info.state == "ok" for info in hive.pools()), "every pool back after the kill")
    back = time.monotonic() - killed_at
    kept, errors = _states_kept(hive, keys, expected)
    journaled = sum(hive.agent(KeptCounter, key).state().state == {"count": value}
                    for key, value in zip(keys, expected, strict=True)) / count
    progress(f"virtual: orchestrator answering after {answering:.1f} s, pools ok after {back:.1f} s; "
             f"{kept:.4f} of the states kept, {journaled:.4f} in its journal")
    return [row("state_kept@orchestrator_kill", kept, "fraction", goal="== 1.0", identities=count, errors=errors,
                journaled_state_kept=round(journaled, 6), answering_seconds=round(answering, 2),
                pools_ok_seconds=round(back, 2),
                note="no baseline: plain Ray has no orchestrator; the hosts outlive it (adopted), so the row "
                     "also says which states the recovered journal holds")]


def _give_states(hive: Any, keys: list[str]) -> list[int]:
    """Two messages to each identity (a state of version 2); the count each must then hold."""
    amounts = [zlib.crc32(key.encode()) % 97 + 1 for key in keys]
    for _ in range(2):
        hive.ask_many(KeptCounter, list(zip(keys, amounts, strict=True)), progress=False, timeout=WAIT_SECONDS)
    return [2 * amount for amount in amounts]


def _states_kept(hive: Any, keys: list[str], expected: list[int]) -> tuple[float, int]:
    """The fraction of identities whose state, asked for, is the one expected; and how many asks failed."""
    answers = hive.ask_many(KeptCounter, [(key, None) for key in keys], progress=False, timeout=WAIT_SECONDS,
                            return_exceptions=True)
    errors = sum(isinstance(answer, BaseException) for answer in answers)
    kept = sum(answer == {"count": value} for answer, value in zip(answers, expected, strict=True))
    return kept / len(keys), errors


def _table_read(tables: list[Any], keys: list[str]) -> list[dict[str, int]] | None:
    import ray

    routed: list[list[str]] = [[] for _ in tables]
    for key in keys:
        routed[zlib.crc32(key.encode()) % len(tables)].append(key)
    try:
        parts = ray.get([table.read_many.remote(part) for table, part in zip(tables, routed, strict=True)],
                        timeout=30)
    except Exception:  # noqa: BLE001 - still restarting
        return None
    by_key = {key: state for part, states in zip(routed, parts, strict=True)
              for key, state in zip(part, states, strict=True)}
    return [by_key[key] for key in keys]


def _answering_pid(hive: Any) -> int | None:
    try:
        return int(hive.statistics()["pid"])
    except Exception:  # noqa: BLE001 - still restarting
        return None


def _wait_for(probe: Callable[[], Any], what: str) -> Any:
    deadline = time.monotonic() + WAIT_SECONDS
    while True:
        try:
            value = probe()
        except Exception:  # noqa: BLE001 - not yet
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            raise RuntimeError(f"waited {WAIT_SECONDS:.0f} s for {what}; recovery is broken or the machine "
                               "is overloaded")
        time.sleep(0.2)


def _expect(condition: bool, message: str) -> None:
    if not condition:
        raise RuntimeError(f"virtual benchmark: {message}")


# The rows, in order; the orchestrator kill must stay last.
PHASES: tuple[Callable[[_Bench], list[dict[str, Any]]], ...] = (
    _activation,
    _message_latency,
    _throughput,
    _pubsub,
    _active_agents,
    _host_kill,
    _orchestrator_kill,
)
