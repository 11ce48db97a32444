"""The orchestrator with virtual agents, without Ray: real shards run in-process on fake hosts."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from hive_ray._agent import AgentContext
from hive_ray._errors import ConfigurationError
from hive_ray._journal_states import StateRow
from hive_ray._task import Outcome, Task
from hive_ray._virtual import StateSave, Verdict
from hive_ray._virtual_shard import VirtualShard
from tests.unit.fake_placement import FakePlacement
from tests.unit.test_orchestrator_logic import make, run, settle

CART = "hive_ray.actors.cart:CartAgent"


class ShardPlacement(FakePlacement):
    """Fake hosts that run a real :class:`VirtualShard` per agent, its store the orchestrator."""

    def __init__(self) -> None:
        super().__init__()
        self.orchestrator: Any = None
        self.shards: dict[str, VirtualShard] = {}

    def shard(self, agent_id: str) -> VirtualShard:
        shard = self.shards.get(agent_id)
        if shard is None:
            from hive_ray.actors.cart import CartAgent

            context = AgentContext(agent_id=agent_id, pool="cart", agent_type="cart")
            shard = self.shards[agent_id] = VirtualShard(context, CartAgent, _Store(self.orchestrator))
        return shard

    async def run_batch(self, agent_id: str, envelopes: list[Any]) -> list[Outcome]:
        if agent_id in self.doomed:  # its host dies (the fake raises AgentLost): the activations with it
            self.shards.pop(agent_id, None)
            return await super().run_batch(agent_id, envelopes)
        self.batches.append((agent_id, [e.task_id for e in envelopes]))
        shard = self.shard(agent_id)
        outcomes = []
        for envelope in envelopes:
            task = Task(task_id=envelope.task_id, payload=envelope.payload, metadata=envelope.metadata)
            try:
                value, status, error = await shard.handle(task), "ok", None
            except Exception as raised:  # noqa: BLE001
                value, status, error = None, "error", {"type": type(raised).__name__, "message": str(raised)}
            outcomes.append(Outcome(task_id=envelope.task_id, status=status, value=value, error=error,
                                    started_at=time.time(), finished_at=time.time(),
                                    state=shard.context.take_state(envelope.task_id)))
        return outcomes


class _Store:
    def __init__(self, orchestrator: Any) -> None:
        self.orchestrator = orchestrator

    async def load(self, key: str) -> StateRow | None:
        [row] = await self.orchestrator.load_agent_states("cart", [key])
        return None if row is None else StateRow(*row)

    async def save(self, save: StateSave) -> Verdict:
        return Verdict(await self.orchestrator.save_agent_state("cart", save))

    async def set_reminder(self, key: str, name: str, due_in: float, period: float | None) -> None:
        await self.orchestrator.set_reminder("cart", key, name, due_in, period)

    async def cancel_reminder(self, key: str, name: str) -> bool:
        return await self.orchestrator.cancel_reminder("cart", key, name)


def carts(count: int = 2) -> tuple[Any, ShardPlacement]:
    orchestrator, _ = make()
    placement = ShardPlacement()
    orchestrator._placement = placement
    placement.orchestrator = orchestrator
    return orchestrator, placement


async def spawn(orchestrator: Any, count: int = 2) -> None:
    await orchestrator.create_pool({"name": "cart", "agent_type": "cart", "count": count}, CART, [], 1024,
                                   None, True)


async def ask(orchestrator: Any, key: str, message: Any) -> Any:
    _, (state, result, error) = await orchestrator.run({"agent_type": "cart", "affinity_key": key}, message, 10)
    assert state == "succeeded", error
    return result


def test_each_key_goes_to_its_owner_and_its_state_comes_back_after_its_host_died():
    async def scenario() -> None:
        orchestrator, placement = carts()
        await spawn(orchestrator)
        await ask(orchestrator, "alice", {"op": "add", "item": "apple", "quantity": 2})
        owner = orchestrator._pools["cart"].scheduler.owner_of("alice")
        assert {agent for agent, _ in placement.batches} == {owner}
        placement.doomed.add(owner)  # the next batch finds the host dead
        assert (await ask(orchestrator, "alice", {"op": "view"}))["items"] == {"apple": 2}
        assert placement.shards[owner].statistics()["activated"] == 1  # a fresh shard, state loaded
        answer = await orchestrator.agent_state("cart", "alice")
        assert answer["version"] == 1 and answer["owner"] == owner

    run(scenario())


def test_a_stale_activations_state_is_refused_and_its_message_runs_again_on_the_current_one():
    async def scenario() -> None:
        orchestrator, placement = carts(1)
        await spawn(orchestrator, 1)
        await ask(orchestrator, "bob", {"op": "add", "item": "pear"})
        owner = orchestrator._pools["cart"].scheduler.owner_of("bob")
        # Another activation (say, on a host thought dead) saves over it meanwhile.
        other = StateSave("bob", "elsewhere", 1, 2, __import__("pickle").dumps({"items": {"fig": 5}}))
        assert await orchestrator.save_agent_state("cart", other) == "accepted"
        answer = await ask(orchestrator, "bob", {"op": "add", "item": "kiwi"})
        assert answer["items"] == {"fig": 5, "kiwi": 1}  # the stale activation was replaced
        assert placement.shards[owner].statistics()["deactivated"] == 1
        assert orchestrator._counters["state_conflicts"] == 0  # noticed before it saved anything

    run(scenario())


def test_messages_name_a_key_and_virtual_pools_keep_their_size():
    async def scenario() -> None:
        orchestrator, _ = carts()
        await spawn(orchestrator)
        with pytest.raises(ConfigurationError, match="is virtual"):
            await orchestrator.submit({"agent_type": "cart"}, {"op": "view"})
        with pytest.raises(ConfigurationError, match="size is fixed"):
            await orchestrator.scale("cart", 3)
        with pytest.raises(ConfigurationError, match="already runs virtual agent type"):
            await orchestrator.create_pool({"name": "cart-2", "agent_type": "cart", "count": 1}, CART, [], 1024,
                                           None, True)
        await orchestrator.create_pool({"name": "echo", "agent_type": "echo", "count": 1},
                                       "hive_ray.actors.echo:EchoAgent", [], 1)
        with pytest.raises(ConfigurationError, match="not virtual"):
            await orchestrator.submit({"agent_type": "echo", "affinity_key": "k", "metadata": {"agent_key": "k"}}, 1)

    run(scenario())


def test_a_reminder_activates_its_agent_and_one_for_a_type_no_pool_runs_backs_off():
    async def scenario() -> None:
        orchestrator, placement = carts()
        await spawn(orchestrator)
        await orchestrator.set_reminder("cart", "carl", "nudge", 0)
        await settle(lambda: any(placement.batches))
        await settle(lambda: orchestrator._counters["reminders_fired"] == 1)
        assert (await orchestrator.agent_state("cart", "carl"))["reminders"] == []  # once, then gone
        await orchestrator.set_reminder("ghost", "k", "wake", 0, 60)
        await settle(lambda: ("ghost", "k", "wake") in orchestrator._reminder_retries)
        again = orchestrator._reminders.get(("ghost", "k", "wake"))
        assert again.due_at > time.time() + 4 and again.period == 60  # tried again in 5 s, then 10 s ...
        assert orchestrator._reminder_retries[("ghost", "k", "wake")] == 10.0

    run(scenario())


def test_a_publish_reaches_each_subscriber_once_and_remembers_its_id():
    async def scenario() -> None:
        orchestrator, placement = carts()
        await spawn(orchestrator)
        await orchestrator.subscribe("promotions", "cart", "dee")
        await orchestrator.subscribe("promotions", "cart", "eli")
        await orchestrator.subscribe("promotions", "nobody-runs-this", "k")
        first = await orchestrator.publish("promotions", {"op": "add", "item": "coupon"}, None, "p-1")
        assert first["deliveries"] == 2 and first["undeliverable"] == [{"agent_type": "nobody-runs-this", "key": "k"}]
        again = await orchestrator.publish("promotions", {"op": "add", "item": "coupon"}, None, "p-1")
        assert again["duplicate"] and again["task_ids"] == first["task_ids"]
        for task_id in first["task_ids"]:
            assert (await orchestrator.wait(task_id, 10))[0] == "succeeded"
        assert (await ask(orchestrator, "dee", {"op": "view"}))["items"] == {"coupon": 1}
        page = await orchestrator.topic_messages("promotions", 0, 0)
        assert [m["message_id"] for m in page["messages"]] == ["p-1"] and not page["missed"]
        with pytest.raises(ConfigurationError, match="topic"):
            await orchestrator.publish("two words", 1)

    asyncio.run(scenario())
