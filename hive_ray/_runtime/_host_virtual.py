"""What a host needs for virtual agents: the shard it runs instead, and the store it loads from.

A host whose pool runs a :class:`~hive_ray._virtual.VirtualAgent` type runs one
:class:`~hive_ray._virtual.VirtualShard` per agent id instead of an instance
of the type; the shard loads states through :class:`OrchestratorStateStore`
(the orchestrator keeps them and their journal rows). Loads of many
identities at once (a shard coming back after its host died, a burst of
first messages) share one call.
"""

from __future__ import annotations

import asyncio
from typing import Any

from hive_ray._agent import Agent, AgentContext
from hive_ray._journal_states import StateRow
from hive_ray._virtual import StateSave, Verdict
from hive_ray._virtual_shard import VirtualShard

#: Keys one load call asks for at most.
LOAD_BATCH = 512
#: Longest wait for the orchestrator's answer to a load or a save.
STORE_TIMEOUT_SECONDS = 60.0


def resident_agent(cls: type[Agent], context: AgentContext, orchestrator: Any) -> Agent:
    """The agent a host keeps for ``cls``: an instance, or a shard of a virtual type."""
    is_virtual = getattr(cls, "is_virtual", None)
    if is_virtual is not None and is_virtual():
        return VirtualShard(context, cls, OrchestratorStateStore(orchestrator, cls.type_name()))  # type: ignore[arg-type]
    return cls(context)


class OrchestratorStateStore:
    """Loads and forced saves of one virtual type's states, as Ray calls to the orchestrator."""

    def __init__(self, orchestrator: Any, agent_type: str) -> None:
        self._orchestrator = orchestrator
        self._agent_type = agent_type
        self._wanted: dict[str, asyncio.Future[StateRow | None]] = {}
        self._flush_scheduled = False

    async def load(self, key: str) -> StateRow | None:
        future = self._wanted.get(key)
        if future is None:
            future = self._wanted[key] = asyncio.get_running_loop().create_future()
            if not self._flush_scheduled:
                self._flush_scheduled = True
                asyncio.get_running_loop().call_soon(self._flush)
        return await asyncio.shield(future)

    def _flush(self) -> None:
        self._flush_scheduled = False
        wanted, self._wanted = self._wanted, {}
        keys = list(wanted)
        for start in range(0, len(keys), LOAD_BATCH):
            chunk = {key: wanted[key] for key in keys[start:start + LOAD_BATCH]}
            asyncio.ensure_future(self._load_chunk(chunk))

    async def _load_chunk(self, chunk: dict[str, asyncio.Future[StateRow | None]]) -> None:
        try:
            rows = await asyncio.wait_for(
                self._orchestrator.load_agent_states.remote(self._agent_type, list(chunk)), STORE_TIMEOUT_SECONDS)
        except BaseException as error:  # noqa: BLE001 - every waiter gets the reason
            for future in chunk.values():
                if not future.done():
                    future.set_exception(RuntimeError(
                        f"could not load the state of a {self._agent_type!r} agent from the orchestrator: "
                        f"{type(error).__name__}: {error}"))
                    future.exception()
            return
        for future, row in zip(chunk.values(), rows, strict=True):
            if not future.done():
                future.set_result(None if row is None else StateRow(*row))

    async def save(self, save: StateSave) -> Verdict:
        verdict = await asyncio.wait_for(self._orchestrator.save_agent_state.remote(self._agent_type, save),
                                         STORE_TIMEOUT_SECONDS)
        return Verdict(verdict)

    async def set_reminder(self, key: str, name: str, due_in: float, period: float | None) -> None:
        await asyncio.wait_for(
            self._orchestrator.set_reminder.remote(self._agent_type, key, name, due_in, period), STORE_TIMEOUT_SECONDS)

    async def cancel_reminder(self, key: str, name: str) -> bool:
        return await asyncio.wait_for(
            self._orchestrator.cancel_reminder.remote(self._agent_type, key, name), STORE_TIMEOUT_SECONDS)


def describe_identity(residents: dict[str, Any], agent_id: str, key: str) -> dict[str, Any] | None:
    """The activation of ``key`` on shard ``agent_id`` of this host, or None."""
    resident = residents.get(agent_id)
    shard = getattr(resident, "agent", None)
    return shard.describe(key) if isinstance(shard, VirtualShard) else None


def virtual_statistics(residents: dict[str, Any]) -> dict[str, int] | None:
    """Activations on this host's shards, summed; None when it runs no virtual type."""
    totals: dict[str, int] | None = None
    for resident in residents.values():
        shard = resident.agent
        if isinstance(shard, VirtualShard):
            totals = totals or {}
            for name, value in shard.statistics().items():
                totals[name] = totals.get(name, 0) + value
    return totals
