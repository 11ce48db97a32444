"""Virtual agents on a real local Ray, from a notebook-style client: addressed by key, state kept.

Each test spawns its own types (unique names), so they share the session's
orchestrator; the crash tests use an isolated one.
"""

from __future__ import annotations

import os
import signal
import threading
import uuid
from typing import Any

import pytest

from hive_ray import ConfigurationError, TaskFailedError, VirtualAgent

pytestmark = pytest.mark.ray


def _type(base: str) -> str:
    return f"{base}-{uuid.uuid4().hex[:6]}"


def make_ledger(name: str, **attributes: Any) -> type[VirtualAgent]:
    """A type that appends every message to its state and answers with what it holds."""

    class Ledger(VirtualAgent):
        agent_type = name

        def handle(self, task):
            if task.payload == "pid":
                return os.getpid()
            if task.payload == "boom":
                self.state["poisoned"] = True
                raise ValueError("boom")
            self.state.setdefault("entries", []).append(task.payload)
            return {"key": self.key, "entries": list(self.state["entries"])}

    for attribute, value in attributes.items():
        setattr(Ledger, attribute, value)
    return Ledger


def test_an_agent_is_activated_by_its_first_message_and_keeps_its_state(hive):
    Ledger = make_ledger(_type("ledger"))
    hive.spawn(Ledger, 2)
    alice = hive.agent(Ledger, "alice")
    assert alice.state().version == 0 and not alice.state().active  # naming it created nothing
    assert alice.ask_sync("a", timeout=30) == {"key": "alice", "entries": ["a"]}
    assert alice.ask_sync("b", timeout=30)["entries"] == ["a", "b"]
    assert hive.agent(Ledger, "bob").ask_sync("x", timeout=30)["entries"] == ["x"]  # its own state
    state = alice.state()
    assert (state.version, state.state, state.active) == (2, {"entries": ["a", "b"]}, True)
    assert state.owner in {agent.agent_id for agent in hive.agents(Ledger.agent_type)}
    # A failed turn leaves the state as it was, and the error says what happened.
    with pytest.raises(TaskFailedError, match="boom"):
        alice.ask_sync("boom", timeout=30)
    assert alice.state().state == {"entries": ["a", "b"]}
    # A message must name its agent; the error says how.
    with pytest.raises(ConfigurationError, match="is virtual"):
        hive.run(Ledger.agent_type, "no key")


def test_messages_to_one_agent_are_handled_one_at_a_time_in_order(hive):
    class Slow(VirtualAgent):
        agent_type = _type("slow")

        async def handle(self, task):
            import asyncio

            entries = self.state.setdefault("entries", [])
            before = len(entries)
            await asyncio.sleep(0.001)  # a turn that yields: another message must not interleave
            entries.append(task.payload)
            return before

    hive.spawn(Slow, 2)
    ref = hive.agent(Slow, "one")
    handles = [ref.tell(n) for n in range(100)]
    assert [handle.result(timeout=60) for handle in handles] == list(range(100))
    assert ref.state().state["entries"] == list(range(100))
    # Many keys at once: each key's messages in order, every key on one shard only.
    answers = hive.ask_many(Slow, [(f"k{n % 50}", n) for n in range(1000)], progress=False, timeout=120)
    assert answers == [n // 50 for n in range(1000)]
    owners = {hive.agent(Slow, f"k{n}").state().activation["activation"].split(".")[1] for n in range(50)}
    assert owners <= {agent.agent_id for agent in hive.agents(Slow.agent_type)}


def test_agents_talk_to_agents_and_publish(hive):
    reader_type = _type("reader")

    class Reader(VirtualAgent):
        agent_type = reader_type
        subscriptions = ("orders",)

        def handle(self, task):
            self.state.setdefault("got", []).append((task.metadata.get("topic"), task.payload))
            return len(self.state["got"])

    class Shop(VirtualAgent):
        agent_type = _type("shop")

        async def handle(self, task):
            seen = await self.context.agent(reader_type, "audit").ask({"sale": task.payload})
            published = await self.context.publish("orders", task.payload, source=f"customer-{task.payload}")
            return {"audit_saw": seen, "deliveries": published["deliveries"]}

    hive.spawn(Reader, 2)
    hive.spawn(Shop, 1)
    assert hive.agent(Shop, "main").ask_sync(7, timeout=30) == {"audit_saw": 1, "deliveries": 1}
    assert hive.agent(Reader, "customer-7").state().state == {"got": [("orders", 7)]}
    assert hive.agent(Reader, "audit").state().state == {"got": [(None, {"sale": 7})]}


def test_topics_reach_type_and_agent_subscribers_once_each_and_in_order(hive, wait_until):
    topic = _type("news")

    class Follower(VirtualAgent):
        agent_type = _type("follower")

        def handle(self, task):
            self.state.setdefault("got", []).append(task.payload)
            return None

    hive.spawn(Follower, 2, subscriptions=[topic])
    for key in ("ann", "ben"):
        assert hive.subscribe(topic, Follower, key)["added"]
    first = hive.publish(topic, 0, source="cat", message_id="m-0")
    assert first["deliveries"] == 3 and not first["duplicate"]  # cat by type; ann and ben by subscription
    again = hive.publish(topic, 0, source="cat", message_id="m-0")
    assert again["duplicate"] and again["task_ids"] == first["task_ids"]  # not delivered twice
    for n in range(1, 50):
        hive.publish(topic, n)  # no source: only the agent subscriptions

    def got(key: str) -> list[int]:
        state = hive.agent(Follower, key).state().state
        return state["got"] if state else []

    assert wait_until(lambda: len(got("ann")) == 50 and len(got("ben")) == 50, 60)
    assert got("ann") == got("ben") == list(range(50))
    assert got("cat") == [0]
    assert hive.unsubscribe(topic, Follower, "ann")["removed"]
    assert hive.publish(topic, 99)["deliveries"] == 1
    assert [m["message"] for m in hive.follow(topic, idle_timeout=0.5)] == [*range(50), 99]
    # A follower whose position is older than what is kept is told so before the rest.
    assert next(iter(hive.follow(topic, after=1, idle_timeout=0.5))) == {"topic": topic, "missed": True}
    hive.spawn("echo", 1, pool=_type("echo-sub"))
    with pytest.raises(ConfigurationError, match="not virtual"):
        hive.subscribe(topic, "echo", "k")
    with pytest.raises(ConfigurationError, match="topic"):
        hive.publish("no spaces please", 1)


def test_idle_agents_are_deactivated_and_come_back_with_their_state(hive, wait_until):
    Ledger = make_ledger(_type("idle"), idle_seconds=0.3)
    hive.spawn(Ledger, 1)
    ref = hive.agent(Ledger, "dora")
    ref.ask_sync("kept", timeout=30)
    first = ref.state().activation["activation"]
    assert wait_until(lambda: not ref.state().active, 30)
    assert ref.ask_sync("more", timeout=30)["entries"] == ["kept", "more"]
    assert ref.state().activation["activation"] != first  # a new activation, with the saved state


def test_reminders_activate_their_agent_and_timers_die_with_it(hive, wait_until):
    class Sleepy(VirtualAgent):
        agent_type = _type("sleepy")
        idle_seconds = 0.5

        async def handle(self, task):
            if task.payload == "remind":
                await self.set_reminder("wake", 1.0)
            elif task.payload == "tick":
                self.start_timer("tick", 0.05, every=0.05)
            return "ok"

        def on_reminder(self, name):
            self.state["woken"] = self.state.get("woken", 0) + 1

        def on_timer(self, name):
            self.state["ticks"] = self.state.get("ticks", 0) + 1

    hive.spawn(Sleepy, 1)
    ref = hive.agent(Sleepy, "eve")
    ref.ask_sync("remind", timeout=30)
    assert [r["name"] for r in ref.state().reminders] == ["wake"]
    assert wait_until(lambda: (ref.state().state or {}).get("woken") == 1, 30)
    assert ref.state().reminders == []  # it fired once and is gone
    ticker = hive.agent(Sleepy, "fred")
    ticker.ask_sync("tick", timeout=30)
    assert wait_until(lambda: (ticker.state().state or {}).get("ticks", 0) >= 3, 30)
    assert ticker.state().activation["timers"] == ["tick"]


@pytest.mark.slow
def test_state_survives_a_sigkill_of_the_host_and_no_message_is_lost_or_applied_twice(hive, wait_until):
    Ledger = make_ledger(_type("durable"))
    hive.spawn(Ledger, 2, restart={"backoff_initial_seconds": 0.05})
    keys = [f"user-{n}" for n in range(20)]
    hive.ask_many(Ledger, [(key, "before") for key in keys], progress=False, timeout=60)
    pids = {agent.pid for agent in hive.agents(Ledger.agent_type)}
    answers: list[Any] = []
    sender = threading.Thread(target=lambda: answers.extend(hive.ask_many(
        Ledger, [(keys[n % 20], n) for n in range(400)], progress=False, timeout=120)))
    sender.start()
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    sender.join(180)
    assert len(answers) == 400
    assert wait_until(lambda: all(p.state == "ok" for p in hive.pools() if p.name == Ledger.agent_type), 60)
    for index, key in enumerate(keys):
        entries = hive.agent(Ledger, key).state().state["entries"]
        assert entries == ["before", *range(index, 400, 20)], key  # each once, in order
    assert {agent.pid for agent in hive.agents(Ledger.agent_type)}.isdisjoint(pids)


def test_the_cart_example_works_as_the_readme_shows(hive):
    hive.spawn("cart", 2)
    cart = hive.agent("cart", f"user-{uuid.uuid4().hex[:6]}")
    cart.ask_sync({"op": "add", "item": "apple", "quantity": 2}, timeout=30)
    assert cart.ask_sync({"op": "add", "item": "pear"}, timeout=30)["count"] == 3
    with pytest.raises(TaskFailedError, match="quantity"):
        cart.ask_sync({"op": "add", "item": "fig", "quantity": 0}, timeout=30)
    assert cart.ask_sync({"op": "checkout"}, timeout=30)["bought"] == {"apple": 2, "pear": 1}
    assert cart.state().state == {"items": {}, "orders": 1}


def test_a_message_to_a_type_that_is_not_virtual_is_refused(hive):
    hive.spawn("echo", 1, pool=_type("plain-echo"))
    with pytest.raises(ConfigurationError, match="not virtual"):
        hive.agent("echo", "k").ask_sync("hello", timeout=30)


def test_a_message_id_deduplicates_per_agent(hive):
    Ledger = make_ledger(_type("dedup"))
    hive.spawn(Ledger, 2)
    ann, ben = hive.agent(Ledger, "ann"), hive.agent(Ledger, "ben")
    first = ann.tell("once", message_id="m-1")
    assert ann.tell("once", message_id="m-1").task_id == first.task_id  # sent again: the same task
    assert ben.ask_sync("also", message_id="m-1", timeout=30)["entries"] == ["also"]  # another agent's
    first.result(timeout=30)
    assert ann.state().state == {"entries": ["once"]}
