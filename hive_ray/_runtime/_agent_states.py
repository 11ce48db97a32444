"""Virtual agents in the orchestrator: their states, their owners, and the messages to them.

A mixin of :class:`~hive_ray._runtime._orchestrator.Orchestrator`.

* **Messages** are tasks of a virtual pool whose affinity key is the agent's
  key (:meth:`_message_keys` checks it; it is named in the metadata too). The
  pool's scheduler sends every key to the one shard that owns it
  (:class:`~hive_ray._routing.OwnerRing`), so an identity has one activation.
* **States** arrive with outcomes (:class:`~hive_ray._virtual.StateSave`) or
  forced saves; :func:`~hive_ray._virtual.judge_save` decides, and an accepted
  one is journaled with the next group commit, which also carries its task's
  ending (or an earlier one). A refused one means the activation was stale:
  its message runs again on the current state.
* **What the orchestrator holds** of each identity is its version and writer
  (a bounded cache over the journal; the bodies stay in the journal), put in
  each message's envelope so a shard can tell a stale activation. Without a
  journal the states live here only, and an orchestrator restart loses them.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from hive_ray._errors import ConfigurationError, UnknownAgentTypeError
from hive_ray._journal_states import StateRow
from hive_ray._task import TaskEntry
from hive_ray._virtual import (
    EXPECTED_FIELD,
    KEY_FIELD,
    StateSave,
    Verdict,
    check_key,
    expected_of,
    judge_save,
)

if TYPE_CHECKING:
    from hive_ray._runtime._pools import Pool

logger = logging.getLogger("hive_ray.orchestrator")

#: Identities whose version the orchestrator remembers with a journal (others are read again).
MAX_REMEMBERED_STATES = 1_000_000
_UNKNOWN = object()


class AgentStates:
    """Virtual agents' states and addressing; see the module docstring."""

    _journal: Any
    _pools: dict[str, Any]
    _counters: dict[str, int]
    _placement: Any

    def _init_agent_states(self) -> None:
        # (agent type, key) -> its StateRow (without the body when a journal keeps it), or None
        self._states: dict[tuple[str, str], StateRow | None] = {}

    # ------------------------------------------------------------------ messages
    @staticmethod
    def _message_keys(pool: Pool, template: dict[str, Any], count: int) -> list[str] | None:
        """The affinity key of each of ``count`` tasks when they differ (``affinity_keys``, one per
        payload), else None. A virtual pool's tasks must each name their agent's key.

        Raises:
            ConfigurationError: keys missing or malformed, or not one per payload.
        """
        keys = template.get("affinity_keys")
        if not pool.info.virtual and KEY_FIELD in (template.get("metadata") or {}):
            agent_type = pool.spec["agent_type"]
            raise ConfigurationError(
                f"agent type {agent_type!r} is not virtual: hive.agent(type, key) addresses VirtualAgent types "
                f"(one agent per key). Send {agent_type!r} tasks with hive.submit or hive.run, or make the "
                f"type a VirtualAgent")
        if keys is None:
            if not pool.info.virtual:
                return None
            if template.get("affinity_key") is None:
                agent_type = pool.spec["agent_type"]
                raise ConfigurationError(
                    f"agent type {agent_type!r} is virtual: each message goes to one agent, named by its "
                    f"key. Send it with hive.agent({agent_type!r}, key).ask(message), POST "
                    f"/v1/agents/{agent_type}/{{key}}/messages, or give the task an affinity_key")
            keys = [template["affinity_key"]] * count
        elif not isinstance(keys, list | tuple) or len(keys) != count:
            raise ConfigurationError(f"affinity_keys must be a list with one key per payload ({count}), "
                                     f"got {type(keys).__name__} of {len(keys) if hasattr(keys, '__len__') else '?'}")
        try:
            return [check_key(key) for key in keys]
        except ValueError as error:
            raise ConfigurationError(str(error)) from None

    def _with_expected_state(self, agent_type: str, metadata: dict[str, str]) -> dict[str, str]:
        """A message's metadata as its envelope carries it: with the state the orchestrator holds."""
        return {**metadata, EXPECTED_FIELD: expected_of(self._state_of(agent_type, metadata[KEY_FIELD]))}

    # ------------------------------------------------------------------ states
    def _state_of(self, agent_type: str, key: str) -> StateRow | None:
        """What the orchestrator holds of an identity's state (version and writer at least)."""
        identity = (agent_type, key)
        row = self._states.get(identity, _UNKNOWN)
        if row is _UNKNOWN:
            row = self._journal.state(agent_type, key) if self._journal is not None else None
            self._remember(identity, row)
        return row  # type: ignore[return-value]

    def _remember(self, identity: tuple[str, str], row: StateRow | None) -> None:
        if self._journal is None:
            self._states[identity] = row  # the only copy
            return
        if len(self._states) >= MAX_REMEMBERED_STATES and identity not in self._states:
            del self._states[next(iter(self._states))]  # the journal has it: read again when needed
        self._states[identity] = None if row is None else StateRow(row.version, row.activation, b"")

    def _apply_save(self, agent_type: str, save: Any) -> Verdict:
        """Judge a state an activation left and keep it if it may replace the current one."""
        if not isinstance(save, StateSave):
            logger.warning("a %s agent sent a state that is not a StateSave (%r); ignored",
                           agent_type, type(save).__name__)
            return Verdict.CONFLICT
        current = self._state_of(agent_type, save.key)
        verdict = judge_save(current, save)
        if verdict == Verdict.ACCEPTED:
            row = StateRow(save.version, save.activation, save.body)
            if self._journal is not None:
                self._journal.record_state(agent_type, save.key, row)
            self._remember((agent_type, save.key), row)
            self._counters["states_saved"] += 1
        elif verdict == Verdict.CONFLICT:
            self._counters["state_conflicts"] += 1
        return verdict

    def _virtual_pool(self, agent_type: str) -> Pool:
        for pool in self._pools.values():
            if pool.spec["agent_type"] == agent_type and pool.info.virtual:
                return pool
        known = sorted(p.spec["agent_type"] for p in self._pools.values() if p.info.virtual)
        raise UnknownAgentTypeError(
            f"no pool runs virtual agent type {agent_type!r}; running virtual types: "
            f"{', '.join(known) or '(none)'}. Spawn one first: hive.spawn(YourVirtualAgent)")

    def _settle_state(self, pool: Pool, entry: TaskEntry, save: Any) -> bool:
        """Keep the state an outcome carries; False when it was refused (the message must run again)."""
        verdict = self._apply_save(pool.spec["agent_type"], save)
        if verdict != Verdict.CONFLICT:
            return True
        logger.warning("task %s: the state its turn left on %s/%s was refused: another activation wrote a "
                       "newer one; it runs again on the current state", entry.task_id,
                       pool.spec["agent_type"], entry.metadata.get(KEY_FIELD))
        return False

    # ------------------------------------------------------------------ operations
    async def load_agent_states(self, agent_type: str, keys: list[str]) -> list[tuple[int, str, bytes] | None]:
        """The saved states of ``keys`` (a shard activating them), in order; None for no state."""
        await self._ensure_started()  # type: ignore[attr-defined]
        if self._journal is not None:
            found = await self._journal.states(agent_type, list(keys))
        else:
            found = {key: row for key in keys if (row := self._states.get((agent_type, key))) is not None}
        return [None if (row := found.get(key)) is None else (row.version, row.activation, row.body)
                for key in keys]

    async def save_agent_state(self, agent_type: str, save: Any) -> str:
        """Keep a state an activation saves now (``save_state``); answers once it is durable."""
        await self._ensure_started()  # type: ignore[attr-defined]
        verdict = self._apply_save(agent_type, save)
        if verdict == Verdict.ACCEPTED and self._journal is not None:
            await self._journal.durable()
        return verdict.value

    async def agent_state(self, agent_type: str, key: str) -> dict[str, Any]:
        """One virtual agent: its saved state (pickled), version, owner and activation, if active."""
        await self._ensure_started()  # type: ignore[attr-defined]
        try:
            key = check_key(key)
        except ValueError as error:
            raise ConfigurationError(str(error)) from None
        pool = self._virtual_pool(agent_type)
        row = self._journal.state(agent_type, key) if self._journal is not None else \
            self._states.get((agent_type, key))
        owner = pool.scheduler.owner_of(key)
        activation = None
        record = pool.agents.get(owner) if owner is not None else None
        if record is not None and record.state == "ready":
            try:
                activation = await self._placement.describe_identity(owner, key)
            except Exception as error:  # noqa: BLE001 - the state is still worth answering with
                logger.info("could not ask shard %s about %s/%s: %s", owner, agent_type, key, error)
        return {"agent_type": agent_type, "key": key, "pool": pool.name, "owner": owner,
                "version": row.version if row is not None else 0,
                "state": row.body if row is not None else None, "activation": activation,
                "reminders": self._reminders_of(agent_type, key)}  # type: ignore[attr-defined]
