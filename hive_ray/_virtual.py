"""Virtual agents: addressed by type and key, activated on their first message, state kept.

A virtual agent type is a :class:`VirtualAgent` subclass; each identity
``(agent_type, key)`` is one activation of it (an instance with ``self.key``
and ``self.state``), made when a message arrives for it and dropped when it
has been idle for ``idle_seconds``. Its pool's agents are *shards*: each owns
the identities that hash to it (see :class:`hive_ray._routing.OwnerRing`) and
keeps their activations in one process, so one identity has at most one
activation in the cluster. The shard (:mod:`hive_ray._virtual_shard`) turns
each message (a task whose metadata names its key) into a turn of the
identity's activation, and a changed ``self.state`` into a :class:`StateSave`
that travels with the task's outcome: the orchestrator keeps it and journals
it with the task's ending. A handler that raises leaves the state as the last
turn left it.

State versions guard against a stale activation: each save names the
activation that made it and the version it started from, and
:func:`judge_save` refuses one that would overwrite a newer state written by
another activation (the message is then run again on fresh state).

Pure Python (no Ray): unit-tested with a fake store.
"""

from __future__ import annotations

import enum
import logging
import pickle
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from hive_ray._agent import Agent
from hive_ray._journal_states import StateRow

if TYPE_CHECKING:
    from hive_ray._virtual_shard import VirtualShard, _Activation

logger = logging.getLogger("hive_ray.virtual")

#: Task metadata naming the identity's key (set by the orchestrator from the affinity key).
KEY_FIELD = "agent_key"
#: Envelope metadata with the state the orchestrator holds: "version:activation".
EXPECTED_FIELD = "hive.state"
#: Messages one shard runs at once (over all its identities).
SHARD_CONCURRENCY = 1024
#: Timers one activation may run at once.
MAX_TIMERS = 100
#: Task ids an activation remembers with their answers (redelivered messages are not run twice).
REMEMBERED_ANSWERS = 8
#: Task metadata of a reminder's message: the reminder's name (the shard calls on_reminder).
REMINDER_FIELD = "reminder"
#: Longest key accepted: keys travel in every message and name a journal row.
MAX_KEY_LENGTH = 256


@dataclass(frozen=True, slots=True)
class StateSave:
    """A state an activation left after a turn (or saved with ``save_state``)."""

    key: str
    activation: str
    base: int  # the version it loaded when it was activated
    version: int  # base + its saves so far
    body: bytes

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        # One per changed turn, in every outcome frame: a tuple pickles several times faster
        # than a slotted dataclass (which goes through dataclasses.fields()).
        return StateSave, (self.key, self.activation, self.base, self.version, self.body)


class Verdict(str, enum.Enum):
    ACCEPTED = "accepted"
    SUPERSEDED = "superseded"  # an older save of the activation that already wrote a newer one
    CONFLICT = "conflict"  # another activation wrote a newer state: this one is stale


def judge_save(current: StateRow | None, save: StateSave) -> Verdict:
    """Whether ``save`` may replace ``current``.

    The activation that wrote ``current`` may write any newer version (its
    saves can arrive out of order: each holds the whole state, so the newest
    wins). Another activation may write only over the version it loaded.
    """
    if current is not None and current.activation == save.activation:
        return Verdict.ACCEPTED if save.version > current.version else Verdict.SUPERSEDED
    stored = current.version if current is not None else 0
    return Verdict.ACCEPTED if save.base == stored else Verdict.CONFLICT


#: EXPECTED_FIELD when the orchestrator holds no state for the key.
NO_STATE = "0:"


def expected_of(row: StateRow | None) -> str:
    """The envelope metadata saying which state the orchestrator holds."""
    return NO_STATE if row is None else f"{row.version}:{row.activation}"


def check_key(key: Any) -> str:
    """A usable identity key, or a ValueError that says what is wrong."""
    if not isinstance(key, str) or not key:
        raise ValueError(f"a virtual agent's key must be a non-empty string, got {key!r}")
    if len(key) > MAX_KEY_LENGTH:
        raise ValueError(f"a virtual agent's key is at most {MAX_KEY_LENGTH} characters, got {len(key)}")
    return key


def scoped_message_id(key: str, message_id: str) -> str:
    """The idempotency key of a message to a virtual agent: its id, within its agent's key
    (two agents may receive messages with the same id). Shown in the task's record."""
    return f"{key}\x1f{message_id}"


def dumps_state(state: Any) -> bytes:
    try:
        return pickle.dumps(state, protocol=5)
    except (pickle.PicklingError, TypeError, AttributeError):
        from ray import cloudpickle  # a state holding lambdas or local classes

        return cloudpickle.dumps(state, protocol=5)


class StateStore(Protocol):
    """Where a shard loads and force-saves states (the orchestrator, through its host)."""

    async def load(self, key: str) -> StateRow | None: ...

    async def save(self, save: StateSave) -> Verdict: ...

    async def set_reminder(self, key: str, name: str, due_in: float, period: float | None) -> None: ...

    async def cancel_reminder(self, key: str, name: str) -> bool: ...


class VirtualAgent(Agent):
    """Base class of virtual agent types: one instance per key, state kept across activations.

    Subclass it, set ``agent_type``, implement ``handle`` (plain or ``async``)
    and keep what must survive in ``self.state`` (anything that pickles). Reach
    one with ``hive.agent("cart", "user-42").ask(message)``.

    Class attributes:
        idle_seconds: an activation idle this long is dropped (``on_deactivate``
            runs); the next message activates it again, with its saved state.
        max_active: most activations one shard keeps; past it, the least recently
            used tenth that is not busy is dropped (as if idle).
        reentrant: when True the identity may handle several messages at once
            (at its ``await`` points); by default one at a time, in arrival order.
        subscriptions: topics whose messages go to the agent keyed by the
            message's source (``hive.publish("promotions", offer, source="user-42")``
            reaches ``("cart", "user-42")``); the task's metadata names the topic.

    A synchronous ``handle`` runs on the host's event loop (keep it short, or
    make it ``async``): a shard serves thousands of identities, and a thread
    hop per message would cost more than the message.
    """

    idle_seconds: ClassVar[float] = 600.0
    max_active: ClassVar[int] = 200_000
    reentrant: ClassVar[bool] = False
    subscriptions: ClassVar[tuple[str, ...]] = ()

    def __init__(self, context: Any) -> None:
        super().__init__(context)
        self.key: str = getattr(context, "key", "")

    def on_activate(self, saved: Any = None) -> None | Awaitable[None]:  # type: ignore[override]
        """Called once the activation's state is loaded, before its first message (may be async)."""
        return None

    def on_deactivate(self) -> None | Awaitable[None]:
        """Called before an idle activation is dropped (may be async). Changes to
        ``self.state`` made here are not saved: save in ``handle``."""
        return None

    async def save_state(self) -> None:
        """Save ``self.state`` now and wait until it is durable (a turn's end saves it anyway).

        Raises:
            RuntimeError: another activation of this identity wrote a newer state.
        """
        await self.context.save_state(self)

    def on_reminder(self, name: str) -> Any:
        """A reminder set with :meth:`set_reminder` is due: runs as a turn (may be async), its
        state saved like a message's. It activates the agent if it was not active."""
        return None

    async def set_reminder(self, name: str, due_in: float, *, every: float | None = None) -> None:
        """Call ``on_reminder(name)`` in ``due_in`` seconds (then every ``every`` seconds, at least 1),
        even if this activation is gone by then, or the host, or the orchestrator restarted meanwhile
        (reminders are journaled). Replaces a reminder of the same name."""
        await self.context.store.set_reminder(self.key, name, due_in, every)

    async def cancel_reminder(self, name: str) -> bool:
        """Remove a reminder; False when there was none of that name."""
        return await self.context.store.cancel_reminder(self.key, name)

    def on_timer(self, name: str) -> Any:
        """A timer started with :meth:`start_timer` is due: runs as a turn (may be async); a
        changed state is saved when it ends."""
        return None

    def start_timer(self, name: str, due_in: float, *, every: float | None = None) -> None:
        """Call ``on_timer(name)`` in ``due_in`` seconds (then every ``every`` seconds) while this
        activation lives; timers die with it (use a reminder for what must outlive it) and do
        not keep it from being deactivated when idle. Replaces a timer of the same name."""
        self.context.start_timer(name, due_in, every)

    def stop_timer(self, name: str) -> bool:
        """Stop a timer; False when there was none of that name."""
        return self.context.stop_timer(name)

    @classmethod
    def concurrency(cls) -> int:  # the shard's: many identities at once
        return SHARD_CONCURRENCY

    @classmethod
    def is_virtual(cls) -> bool:
        return True


class VirtualContext:
    """``self.context`` of one activation: the shard's context, plus its key."""

    __slots__ = ("_shard", "_activation", "key")

    def __init__(self, shard: VirtualShard, key: str) -> None:
        self._shard = shard
        self._activation: _Activation | None = None
        self.key = key

    def __getattr__(self, name: str) -> Any:  # delegate, report_progress, config, record_usage...
        return getattr(self._shard.context, name)

    def agent(self, agent_type: str, key: str) -> Any:
        """A reference to another virtual agent, to ``await ref.ask(message)`` or ``ref.tell``."""
        return self._shard.context.agent(agent_type, key)

    async def save_state(self, agent: VirtualAgent) -> None:
        assert self._activation is not None
        await self._shard.save_now(self._activation)

    @property
    def store(self) -> StateStore:
        return self._shard.store

    def start_timer(self, name: str, due_in: float, every: float | None) -> None:
        assert self._activation is not None
        self._shard.start_timer(self._activation, name, due_in, every)

    def stop_timer(self, name: str) -> bool:
        assert self._activation is not None
        return self._shard.stop_timer(self._activation, name)


__all__ = ["VirtualAgent", "StateSave", "Verdict", "judge_save", "check_key"]
