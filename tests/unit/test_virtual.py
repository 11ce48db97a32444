"""Virtual agents without Ray: who owns a key, which state wins, and what a shard does per message."""

from __future__ import annotations

import asyncio
import pickle
import threading
from typing import Any

import pytest

from hive_ray._agent import AgentContext
from hive_ray._journal import Journal
from hive_ray._journal_states import StateRow
from hive_ray._routing import OwnerRing
from hive_ray._scheduler import PoolScheduler
from hive_ray._task import Task, TaskEntry
from hive_ray._virtual import (
    EXPECTED_FIELD,
    KEY_FIELD,
    NO_STATE,
    StateSave,
    Verdict,
    VirtualAgent,
    check_key,
    expected_of,
    judge_save,
)
from hive_ray._virtual_shard import VirtualShard


# ---------------------------------------------------------------- which state wins
def save(activation: str, base: int, version: int, body: bytes = b"s") -> StateSave:
    return StateSave("k", activation, base, version, body)


def test_a_first_save_needs_no_earlier_state():
    assert judge_save(None, save("a", 0, 1)) == Verdict.ACCEPTED
    assert judge_save(None, save("a", 3, 4)) == Verdict.CONFLICT  # it loaded a state that is gone


def test_the_writer_may_save_any_newer_version_and_older_ones_are_superseded():
    current = StateRow(5, "a", b"")
    assert judge_save(current, save("a", 3, 6)) == Verdict.ACCEPTED
    assert judge_save(current, save("a", 3, 5)) == Verdict.SUPERSEDED  # arrived after a newer one
    assert judge_save(current, save("a", 3, 4)) == Verdict.SUPERSEDED


def test_another_activation_may_only_write_over_the_version_it_loaded():
    current = StateRow(5, "a", b"")
    assert judge_save(current, save("b", 5, 6)) == Verdict.ACCEPTED  # it loaded what "a" wrote
    assert judge_save(current, save("b", 4, 6)) == Verdict.CONFLICT  # stale: "a" wrote after it loaded


def test_keys_are_checked_and_expectations_spelled():
    assert check_key("user-42") == "user-42"
    for bad in ("", None, 42, "x" * 257):
        with pytest.raises(ValueError, match="key"):
            check_key(bad)
    assert expected_of(None) == NO_STATE
    assert expected_of(StateRow(3, "act", b"")) == "3:act"


# ---------------------------------------------------------------- who owns a key
def test_the_owner_of_a_key_depends_only_on_the_members():
    first, second = OwnerRing(["s-0", "s-1", "s-2"]), OwnerRing(["s-2", "s-0", "s-1"])
    keys = [f"user-{n}" for n in range(1000)]
    assert [first.owner(k) for k in keys] == [second.owner(k) for k in keys]
    spread = {member: sum(first.owner(k) == member for k in keys) for member in first.members}
    assert min(spread.values()) > 300  # every shard gets a fair share (an even one is 333)
    assert OwnerRing().owner("k") is None


def test_a_new_member_takes_keys_only_for_itself():
    before = OwnerRing(["s-0", "s-1", "s-2"])
    after = OwnerRing(["s-0", "s-1", "s-2", "s-3"])
    keys = [f"user-{n}" for n in range(1000)]
    moved = [k for k in keys if before.owner(k) != after.owner(k)]
    assert moved and all(after.owner(k) == "s-3" for k in moved)
    assert not before.set_members(["s-2", "s-1", "s-0"])  # the same members: nothing changed


# ---------------------------------------------------------------- the scheduler of a virtual pool
def message(name: str, key: str) -> TaskEntry:
    return TaskEntry(task_id=name, pool="p", agent_type="cart", payload=None, affinity_key=key)


def owned_by(scheduler: PoolScheduler, owner: str, count: int = 50) -> list[str]:
    return [k for k in (f"key-{n}" for n in range(1000)) if scheduler.owner_of(k) == owner][:count]


def test_messages_go_to_the_owner_of_their_key_and_wait_for_it_while_it_is_away():
    scheduler = PoolScheduler("p", owners=True)
    scheduler.set_members(["a", "b"])
    for agent in ("a", "b"):
        scheduler.add_agent(agent, concurrency=4)
    key_a, key_b = owned_by(scheduler, "a", 1)[0], owned_by(scheduler, "b", 1)[0]
    scheduler.enqueue(message("t1", key_a))
    scheduler.enqueue(message("t2", key_b))
    assert {agent: [e.task_id for e in batch] for agent, batch in scheduler.assign()} == \
        {"a": ["t1"], "b": ["t2"]}
    scheduler.remove_agent("a")  # its host died: it is restarting
    scheduler.enqueue(message("t3", key_a))
    scheduler.enqueue(message("t4", key_b))
    assert [(agent, [e.task_id for e in batch]) for agent, batch in scheduler.assign()] == [("b", ["t4"])]
    assert len(scheduler) == 1  # t3 waits for "a", counted against the queue bound
    scheduler.add_agent("a", concurrency=4)
    assert [(agent, [e.task_id for e in batch]) for agent, batch in scheduler.assign()] == [("a", ["t3"])]


def test_a_busy_owner_keeps_its_keys_while_others_are_free():
    scheduler = PoolScheduler("p", owners=True, max_batch=1)
    scheduler.set_members(["a", "b"])
    scheduler.add_agent("a", concurrency=1)
    scheduler.add_agent("b", concurrency=1)
    keys = owned_by(scheduler, "a", 3)
    for n, key in enumerate(keys):
        scheduler.enqueue(message(f"t{n}", key))
    assigned = scheduler.assign()
    assert [(agent, [e.task_id for e in batch]) for agent, batch in assigned] == [("a", ["t0"])]
    scheduler.release("a")
    assert [(agent, [e.task_id for e in batch]) for agent, batch in scheduler.assign()] == [("a", ["t1"])]


# ---------------------------------------------------------------- a shard
class FakeStore:
    def __init__(self) -> None:
        self.rows: dict[str, StateRow] = {}
        self.loads: list[str] = []
        self.saves: list[StateSave] = []
        self.reminders: dict[tuple[str, str], tuple[float, float | None]] = {}

    async def load(self, key: str) -> StateRow | None:
        self.loads.append(key)
        return self.rows.get(key)

    async def save(self, save: StateSave) -> Verdict:
        self.saves.append(save)
        verdict = judge_save(self.rows.get(save.key), save)
        if verdict == Verdict.ACCEPTED:
            self.rows[save.key] = StateRow(save.version, save.activation, save.body)
        return verdict

    async def set_reminder(self, key: str, name: str, due_in: float, period: float | None) -> None:
        self.reminders[(key, name)] = (due_in, period)

    async def cancel_reminder(self, key: str, name: str) -> bool:
        return self.reminders.pop((key, name), None) is not None

    def keep(self, context: AgentContext, task_id: str) -> StateSave | None:
        """What the orchestrator does with an outcome's state."""
        saved = context.take_state(task_id)
        if saved is not None:
            verdict = judge_save(self.rows.get(saved.key), saved)
            if verdict == Verdict.ACCEPTED:
                self.rows[saved.key] = StateRow(saved.version, saved.activation, saved.body)
        return saved


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Journaling(VirtualAgent):
    """Appends each message to its state; ``{"fail": x}`` changes the state, then raises."""

    agent_type = "journaling"
    idle_seconds = 60.0
    deactivated: list[str] = []

    async def handle(self, task: Task) -> Any:
        payload = task.payload
        self.state.setdefault("seen", []).append("special" if isinstance(payload, dict) else payload)
        if isinstance(payload, dict) and "wait" in payload:
            await payload["wait"].wait()
        if isinstance(payload, dict) and "fail" in payload:
            raise RuntimeError("nope")
        return list(self.state["seen"])

    def on_deactivate(self) -> None:
        Journaling.deactivated.append(self.key)


def shard_with(store: FakeStore, cls: type[VirtualAgent] = Journaling,
               clock: Clock | None = None) -> tuple[VirtualShard, AgentContext]:
    context = AgentContext(agent_id="journaling-0", pool="journaling", agent_type="journaling")
    return VirtualShard(context, cls, store, clock=clock or Clock()), context


def task(task_id: str, key: str, payload: Any = None, expected: str | None = NO_STATE) -> Task:
    metadata = {KEY_FIELD: key}
    if expected is not None:
        metadata[EXPECTED_FIELD] = expected
    return Task(task_id=task_id, payload=payload, metadata=metadata)


def test_a_first_message_activates_its_agent_without_loading_a_state_that_does_not_exist():
    async def scenario() -> None:
        store = FakeStore()
        shard, context = shard_with(store)
        assert await shard.handle(task("t1", "alice", "hi")) == ["hi"]
        assert store.loads == []  # the orchestrator said it holds no state
        saved = store.keep(context, "t1")
        assert saved is not None and pickle.loads(saved.body) == {"seen": ["hi"]}
        assert (saved.base, saved.version) == (0, 1)
        assert shard.statistics()["active"] == 1
        expected = expected_of(store.rows["alice"])
        assert await shard.handle(task("t2", "alice", "again", expected)) == ["hi", "again"]
        assert store.keep(context, "t2").version == 2

    asyncio.run(scenario())


def test_an_activation_loads_the_saved_state_and_a_stale_one_is_replaced():
    async def scenario() -> None:
        store = FakeStore()
        store.rows["bob"] = StateRow(7, "elsewhere", pickle.dumps({"seen": ["old"]}))
        shard, context = shard_with(store)
        assert await shard.handle(task("t1", "bob", "new", "7:elsewhere")) == ["old", "new"]
        assert store.loads == ["bob"]
        store.keep(context, "t1")
        # Another activation (a host that was thought gone) wrote version 9 meanwhile.
        store.rows["bob"] = StateRow(9, "other", pickle.dumps({"seen": ["theirs"]}))
        assert await shard.handle(task("t2", "bob", "mine", "9:other")) == ["theirs", "mine"]
        assert store.loads == ["bob", "bob"]
        assert shard.statistics()["deactivated"] == 1

    asyncio.run(scenario())


def test_an_expectation_behind_this_activations_own_saves_is_not_stale():
    async def scenario() -> None:
        store = FakeStore()
        shard, context = shard_with(store)
        await shard.handle(task("t1", "carol", 1))
        # The next message was sent before the orchestrator had t1's state: it still says "none".
        assert await shard.handle(task("t2", "carol", 2, NO_STATE)) == [1, 2]
        assert store.loads == []

    asyncio.run(scenario())


def test_messages_to_one_key_run_one_at_a_time_in_arrival_order_and_other_keys_do_not_wait():
    async def scenario() -> None:
        shard, _ = shard_with(FakeStore())
        gate = asyncio.Event()
        first = asyncio.ensure_future(shard.handle(task("t1", "dave", {"wait": gate})))
        second = asyncio.ensure_future(shard.handle(task("t2", "dave", "after")))
        other = await shard.handle(task("t3", "erin", "elsewhere"))  # not held up by dave's turn
        assert other == ["elsewhere"]
        await asyncio.sleep(0)
        assert not second.done()
        gate.set()
        assert len(await first) == 1
        assert (await second)[-1] == "after"

    asyncio.run(scenario())


def test_a_message_delivered_again_is_answered_without_running_twice():
    async def scenario() -> None:
        shard, context = shard_with(FakeStore())
        assert await shard.handle(task("t1", "fay", "x")) == ["x"]
        context.take_state("t1")
        assert await shard.handle(task("t1", "fay", "x")) == ["x"]  # e.g. after an orchestrator restart
        again = context.take_state("t1")  # the state goes along again, in case its outcome was lost
        assert (again.version, pickle.loads(again.body)) == (1, {"seen": ["x"]})
        assert await shard.handle(task("t2", "fay", "y")) == ["x", "y"]

    asyncio.run(scenario())


def test_a_failed_turn_leaves_the_state_as_the_last_one_did():
    async def scenario() -> None:
        shard, context = shard_with(FakeStore())
        await shard.handle(task("t1", "gus", "kept"))
        context.take_state("t1")
        with pytest.raises(RuntimeError, match="nope"):
            await shard.handle(task("t2", "gus", {"fail": True}))
        assert context.take_state("t2") is None
        assert await shard.handle(task("t3", "gus", "next")) == ["kept", "next"]

    asyncio.run(scenario())


def test_idle_activations_are_dropped_and_come_back_with_their_saved_state():
    async def scenario() -> None:
        store, clock = FakeStore(), Clock()
        shard, context = shard_with(store, clock=clock)
        Journaling.deactivated.clear()
        await shard.handle(task("t1", "hal", "a"))
        store.keep(context, "t1")
        clock.now += 30
        assert await shard.sweep_idle() == 0
        clock.now += 31
        assert await shard.sweep_idle() == 1
        assert Journaling.deactivated == ["hal"] and shard.statistics()["active"] == 0
        assert await shard.handle(task("t2", "hal", "b", expected_of(store.rows["hal"]))) == ["a", "b"]
        assert store.loads == ["hal"]

    asyncio.run(scenario())


def test_save_state_saves_now_and_a_message_without_a_key_is_refused():
    class Eager(Journaling):
        async def handle(self, task: Task) -> Any:
            self.state["early"] = task.payload
            await self.save_state()
            return "saved"

    async def scenario() -> None:
        store = FakeStore()
        shard, context = shard_with(store, Eager)
        assert await shard.handle(task("t1", "ivy", 5)) == "saved"
        assert pickle.loads(store.rows["ivy"].body) == {"early": 5}
        assert context.take_state("t1") is None  # nothing changed after the save
        with pytest.raises(ValueError, match="names no key"):
            await shard.handle(Task(task_id="t2", payload=None, metadata={}))

        class Unpicklable(Journaling):
            def handle(self, task: Task) -> Any:
                self.state["lock"] = threading.Lock() if task.payload == "bad" else None
                return "done"

        shard, context = shard_with(store, Unpicklable)
        with pytest.raises(TypeError, match="does not pickle"):
            await shard.handle(task("t3", "jo", "bad"))
        assert await shard.handle(task("t4", "jo", "good")) == "done"
        assert context.take_state("t4") is not None

    asyncio.run(scenario())


# ---------------------------------------------------------------- the journal
def test_states_are_read_back_buffered_and_committed_and_survive_a_reopen(tmp_path):
    with Journal.open(tmp_path) as journal:
        journal.put_state("cart", "u1", StateRow(1, "a", b"one"))
        assert journal.get_state("cart", "u1") == StateRow(1, "a", b"one")  # buffered
        journal.commit()
        journal.put_state("cart", "u1", StateRow(2, "a", b"two"))
        journal.put_state("cart", "u2", StateRow(1, "b", b"x"))
        journal.commit()
        assert journal.state_count("cart") == 2
        journal.put_state("cart", "u2", None)
        journal.commit()
    with Journal.open(tmp_path) as journal:
        assert journal.get_state("cart", "u1") == StateRow(2, "a", b"two")
        assert journal.get_state("cart", "u2") is None and journal.state_count() == 1


def test_subscriptions_are_kept_and_removed(tmp_path):
    with Journal.open(tmp_path) as journal:
        journal.put_subscription("news", "reader", "a")
        journal.commit()
        journal.put_subscription("news", "reader", "b")
        assert journal.subscriptions() == [("news", "reader", "a"), ("news", "reader", "b")]
        journal.put_subscription("news", "reader", "a", present=False)
        assert journal.subscriptions() == [("news", "reader", "b")]
        journal.commit()
    with Journal.open(tmp_path) as journal:
        assert journal.subscriptions() == [("news", "reader", "b")]


def test_reminders_are_kept_moved_and_removed(tmp_path):
    with Journal.open(tmp_path) as journal:
        journal.put_reminder("cart", "u1", "nudge", (100.0, 60.0))
        journal.put_reminder("cart", "u1", "once", (50.0, None))
        journal.commit()
        journal.put_reminder("cart", "u1", "nudge", (160.0, 60.0))
        journal.put_reminder("cart", "u1", "once", None)
        assert journal.reminders() == [("cart", "u1", "nudge", 160.0, 60.0)]
        journal.commit()
    with Journal.open(tmp_path) as journal:
        assert journal.reminders() == [("cart", "u1", "nudge", 160.0, 60.0)]


# ---------------------------------------------------------------- timers and reminders
class Ticking(VirtualAgent):
    agent_type = "ticking"

    async def handle(self, task: Task) -> Any:
        if task.payload == "start":
            self.start_timer("tick", 0, every=0.001)
            await self.set_reminder("wake", 60, every=3600)
        elif task.payload == "stop":
            return self.stop_timer("tick"), await self.cancel_reminder("wake")
        return self.state.get("ticks", 0)

    def on_timer(self, name: str) -> None:
        self.state["ticks"] = self.state.get("ticks", 0) + 1

    def on_reminder(self, name: str) -> str:
        self.state["woken"] = name
        return f"woken by {name}"


def test_a_timer_runs_turns_whose_state_is_saved_and_dies_with_its_activation():
    async def scenario() -> None:
        store = FakeStore()
        shard, context = shard_with(store, Ticking)
        await shard.handle(task("t1", "kim", "start"))
        assert store.reminders == {("kim", "wake"): (60, 3600)}
        for _ in range(200):
            await asyncio.sleep(0.002)
            if len(store.saves) >= 3:
                break
        assert pickle.loads(store.saves[-1].body)["ticks"] >= 3  # each tick saved by itself
        assert shard.describe("kim")["timers"] == ["tick"]
        assert await shard.handle(task("t2", "kim", "stop", expected_of(store.rows["kim"]))) == (True, True)
        ticks = len(store.saves)
        await asyncio.sleep(0.01)
        assert len(store.saves) == ticks and store.reminders == {}
        shard.start_timer(shard._activations["kim"], "again", 0.001, None)
        await shard.teardown()  # deactivation cancels it
        await asyncio.sleep(0.01)
        assert len(store.saves) == ticks

    asyncio.run(scenario())


def test_a_reminder_message_runs_on_reminder_as_a_turn():
    async def scenario() -> None:
        shard, context = shard_with(FakeStore(), Ticking)
        reminder = Task(task_id="r1", payload=None, metadata={KEY_FIELD: "lee", EXPECTED_FIELD: NO_STATE,
                                                             "reminder": "wake"})
        assert await shard.handle(reminder) == "woken by wake"
        assert pickle.loads(context.take_state("r1").body) == {"woken": "wake"}

    asyncio.run(scenario())


def test_the_reminder_book_fires_due_reminders_once_or_on_their_rhythm():
    from hive_ray._reminders import Reminder, ReminderBook, check_reminder

    book = ReminderBook()
    book.set(Reminder("cart", "u1", "once", 100.0, None))
    book.set(Reminder("cart", "u1", "hourly", 150.0, 3600.0))
    assert book.next_due() == 100.0 and book.pop_due(99.0) == []
    assert [r.name for r in book.pop_due(100.0)] == ["once"]
    assert [r.name for r in book.pop_due(150.0 + 3 * 3600 + 1)] == ["hourly"]  # late: fires once
    assert book.get(("cart", "u1", "hourly")).due_at == 150.0 + 4 * 3600
    assert book.cancel("cart", "u1", "hourly") is not None and book.next_due() is None and len(book) == 0
    for bad in [("", 1, None), ("n", -1, None), ("n", 1, 0.5), ("n", float("nan"), None)]:
        with pytest.raises(ValueError):
            check_reminder(*bad)


def test_an_agents_state_shows_as_a_table_in_a_notebook():
    from hive_ray._agent_ref import VirtualAgentState

    shown = VirtualAgentState(agent_type="cart", key="<alice>", pool="cart", owner="cart-0", version=3,
                              state={"items": {"apple": 2}}, activation=None,
                              reminders=[{"name": "nudge", "due_at": 1.0, "period_seconds": None}])
    page = shown._repr_html_()
    assert "cart/&lt;alice&gt;" in page and "apple" in page and "nudge" in page and not shown.active


def test_a_shard_keeps_at_most_max_active_activations_and_refuses_generators():
    class Few(Journaling):
        max_active = 10

    class Streaming(Journaling):
        async def handle(self, task: Task) -> Any:
            yield 1

    async def scenario() -> None:
        clock = Clock()
        shard, _ = shard_with(FakeStore(), Few, clock=clock)
        for n in range(25):
            clock.now += 1
            await shard.handle(task(f"t{n}", f"key-{n}", n))
            assert shard.statistics()["active"] <= 10
        assert "key-24" in shard._activations and "key-0" not in shard._activations  # least recent went
        shard, _ = shard_with(FakeStore(), Streaming)
        with pytest.raises(TypeError, match="do not stream"):
            await shard.handle(task("s1", "key", None))

    asyncio.run(scenario())


def test_states_of_many_keys_are_read_at_once_with_buffered_ones_winning(tmp_path):
    with Journal.open(tmp_path) as journal:
        for n in range(1200):
            journal.put_state("cart", f"k{n}", StateRow(1, "a", b"%d" % n))
        journal.commit()
        journal.put_state("cart", "k1", StateRow(2, "b", b"newer"))
        journal.put_state("cart", "k2", None)
        found = journal.get_states("cart", [f"k{n}" for n in range(1200)] + ["nobody"])
        assert len(found) == 1199 and "k2" not in found and "nobody" not in found
        assert found["k1"] == StateRow(2, "b", b"newer") and found["k1100"].body == b"1100"


# ---------------------------------------------------------------- a host's batch for a shard
def test_a_shards_batch_runs_turns_inline_and_only_waiting_ones_as_tasks():
    from types import SimpleNamespace

    from hive_ray._runtime._host_virtual import run_shard_batch
    from hive_ray._task import Envelope

    class Waiting(Journaling):
        async def handle(self, task: Task) -> Any:
            if isinstance(task.payload, dict) and "fail" in task.payload:
                raise ValueError("bad message")
            return await super().handle(task)

    async def scenario() -> None:
        shard, _ = shard_with(FakeStore(), Waiting)
        resident = SimpleNamespace(agent=shard, running={})
        host = SimpleNamespace(_handled=0, _run_async=None)
        gate = asyncio.Event()

        def envelope(task_id: str, key: str, payload: Any) -> Envelope:
            return Envelope(task_id=task_id, agent_id="journaling-0", payload=payload,
                            metadata={KEY_FIELD: key, EXPECTED_FIELD: NO_STATE})

        batch = asyncio.ensure_future(run_shard_batch(host, resident, [
            envelope("t1", "a", 1), envelope("t2", "b", {"wait": gate}), envelope("t3", "b", 3),
            envelope("t4", "c", {"fail": True}), envelope("t5", "d", {"wait": asyncio.Event()})]))
        for _ in range(20):
            await asyncio.sleep(0)
        assert set(resident.running) == {"t2", "t3", "t5"}  # waiting: on its gate, on b's turn, on its gate
        resident.running["t5"].cancel()  # the host cancels a message that waits
        gate.set()
        outcomes = await batch
        assert [o.status for o in outcomes] == ["ok", "ok", "ok", "error", "cancelled"]
        assert outcomes[0].value == [1] and outcomes[2].value == ["special", 3]  # b's turns in order
        assert outcomes[0].state is not None and outcomes[3].error["type"] == "ValueError"
        assert resident.running == {} and host._handled == 5

    asyncio.run(scenario())
