"""Virtual agents: addressed by type and key, activated on their first message, state kept.

A virtual agent type is a :class:`VirtualAgent` subclass; each identity
``(agent_type, key)`` is one activation of it (an instance with ``self.key``
and ``self.state``), made when a message arrives for it and dropped when it
has been idle for ``idle_seconds``. Its pool's agents are *shards*: each owns
the identities that hash to it (see :class:`hive_ray._routing.OwnerRing`) and
keeps their activations in one process, so one identity has at most one
activation in the cluster. A :class:`VirtualShard` is the ordinary agent the
host runs for such a pool: it turns each message (a task whose metadata names
its key) into a turn of the identity's activation:

1. find the activation, or make one: load the saved state (or start from
   ``{}``), call ``on_activate``;
2. take the identity's turn lock (messages are handled one at a time, in
   arrival order, unless the type is ``reentrant``);
3. run ``handle``; a message it already handled (the same task id, delivered
   again after an orchestrator restart) is answered from memory, not run twice;
4. if ``self.state`` changed, attach a :class:`StateSave` to the outcome: the
   orchestrator keeps it and journals it with the task's ending. A handler
   that raises leaves the state as the last turn left it.

State versions guard against a stale activation: each save names the
activation that made it and the version it started from, and
:func:`judge_save` refuses one that would overwrite a newer state written by
another activation (the message is then run again on fresh state).

Pure Python (no Ray): unit-tested with a fake store.
"""

from __future__ import annotations

import asyncio
import enum
import hashlib
import inspect
import itertools
import logging
import os
import pickle
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

from hive_ray._agent import Agent, AgentContext
from hive_ray._journal_states import StateRow
from hive_ray._task import Task

logger = logging.getLogger("hive_ray.virtual")

#: Task metadata naming the identity's key (set by the orchestrator from the affinity key).
KEY_FIELD = "agent_key"
#: Envelope metadata with the state the orchestrator holds: "version:activation".
EXPECTED_FIELD = "hive.state"
#: Messages one shard runs at once (over all its identities).
SHARD_CONCURRENCY = 1024
#: Task ids an activation remembers with their answers (redelivered messages are not run twice).
REMEMBERED_ANSWERS = 16
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


class VirtualAgent(Agent):
    """Base class of virtual agent types: one instance per key, state kept across activations.

    Subclass it, set ``agent_type``, implement ``handle`` (plain or ``async``)
    and keep what must survive in ``self.state`` (anything that pickles). Reach
    one with ``hive.agent("cart", "user-42").ask(message)``.

    Class attributes:
        idle_seconds: an activation idle this long is dropped (``on_deactivate``
            runs); the next message activates it again, with its saved state.
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


class _Activation:
    """One identity inside a shard."""

    __slots__ = ("agent", "key", "activation", "base", "version", "digest", "body", "lock", "answers",
                 "last_used", "turns", "busy")

    def __init__(self, agent: VirtualAgent, key: str, activation: str, row: StateRow | None,
                 reentrant: bool) -> None:
        self.agent = agent
        self.key = key
        self.activation = activation
        self.base = self.version = row.version if row is not None else 0
        self.body = row.body if row is not None else None
        self.digest = _digest(self.body) if self.body is not None else b""
        self.lock = None if reentrant else asyncio.Lock()
        self.answers: OrderedDict[str, Any] | None = None
        self.last_used = time.monotonic()
        self.turns = 0
        self.busy = 0  # messages taken for it and not yet answered: never dropped while busy

    def stale(self, expected: str | None) -> bool:
        """Whether the orchestrator holds a state this activation did not write nor load."""
        if not expected:
            return False
        version_text, _, writer = expected.partition(":")
        version = int(version_text or 0)
        return writer != self.activation and version != self.base


_activation_numbers = itertools.count(1)


class VirtualShard(Agent):
    """The agent a host runs for a virtual pool: the activations of the keys it owns."""

    concurrent: ClassVar[bool] = True
    max_concurrency: ClassVar[int] = SHARD_CONCURRENCY

    def __init__(self, context: AgentContext, cls: type[VirtualAgent], store: StateStore,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(context)
        self.cls = cls
        self.store = store
        self._clock = clock
        self._activations: dict[str, _Activation] = {}
        self._activating: dict[str, asyncio.Future[_Activation]] = {}
        self._prefix = f"{os.getpid():x}.{context.agent_id}.{os.urandom(3).hex()}."
        self._sweeper: asyncio.Task[None] | None = None
        self.activated = 0
        self.deactivated = 0
        self.handled = 0

    # -- the message path -------------------------------------------------------------
    async def handle(self, task: Task) -> Any:
        key = task.metadata.get(KEY_FIELD)
        if not key:
            raise ValueError(f"a message to virtual agent type {self.cls.type_name()!r} names no key; "
                             f"send it with hive.agent({self.cls.type_name()!r}, key)")
        expected = task.metadata.get(EXPECTED_FIELD)
        while True:
            activation = self._activations.get(key)
            if activation is None or activation.stale(expected):
                activation = await self._activate(key, activation, expected)
            activation.busy += 1
            try:
                if activation.lock is None:
                    return await self._turn(activation, task)
                async with activation.lock:
                    if self._activations.get(key) is activation:
                        return await self._turn(activation, task)
            finally:
                activation.busy -= 1
            # replaced (stale) while this message waited its turn: again, on the new one

    async def _turn(self, activation: _Activation, task: Task) -> Any:
        answers = activation.answers
        if answers is not None and task.task_id in answers:
            return answers[task.task_id]  # delivered again: its turn already ran here
        agent = activation.agent
        activation.last_used = self._clock()
        try:
            value = agent.handle(task)
            if inspect.isawaitable(value):
                value = await value
        except BaseException:
            self._restore(activation)  # a failed turn leaves the state as the last one did
            raise
        finally:
            activation.last_used = self._clock()
        activation.turns += 1
        self.handled += 1
        try:
            save = self._changed(activation)
        except Exception as error:  # noqa: BLE001 - whatever pickling raised
            self._restore(activation)
            raise TypeError(f"the state of virtual agent {self.cls.type_name()}/{activation.key} does not pickle "
                            f"({type(error).__name__}: {error}); keep only data that pickles in self.state. "
                            f"This message's changes were undone") from None
        if save is not None:
            self.context.attach_state(task.task_id, save)
        if answers is None:
            answers = activation.answers = OrderedDict()
        answers[task.task_id] = value
        if len(answers) > REMEMBERED_ANSWERS:
            answers.popitem(last=False)
        return value

    def _changed(self, activation: _Activation) -> StateSave | None:
        body = dumps_state(activation.agent.state)
        digest = _digest(body)
        if digest == activation.digest:
            return None
        activation.version += 1
        activation.body, activation.digest = body, digest
        return StateSave(activation.key, activation.activation, activation.base, activation.version, body)

    def _restore(self, activation: _Activation) -> None:
        try:
            activation.agent.state = pickle.loads(activation.body) if activation.body is not None else {}
        except Exception:  # noqa: BLE001 - keep what the handler left rather than nothing
            logger.exception("the state of %s/%s could not be restored after a failed turn",
                             self.cls.type_name(), activation.key)

    async def save_now(self, activation: _Activation) -> None:
        save = self._changed(activation)
        if save is None:
            return
        verdict = await self.store.save(save)
        if verdict == Verdict.CONFLICT:
            self._drop(activation)
            raise RuntimeError(f"virtual agent {self.cls.type_name()}/{activation.key}: another activation "
                               f"saved a newer state; this one is stale and was dropped")

    # -- activation ---------------------------------------------------------------------
    async def _activate(self, key: str, stale: _Activation | None, expected: str | None) -> _Activation:
        pending = self._activating.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[_Activation] = asyncio.get_running_loop().create_future()
        self._activating[key] = future
        try:
            if stale is not None:
                await self._deactivate(stale, reason="stale")
            # The orchestrator said it holds no state for the key: nothing to load.
            row = None if expected == NO_STATE else await self.store.load(key)
            context = VirtualContext(self, key)
            agent = self.cls(context)
            agent.key = key
            if row is not None:
                agent.state = pickle.loads(row.body)
            activation = _Activation(agent, key, f"{self._prefix}{next(_activation_numbers)}", row,
                                     self.cls.reentrant)
            context._activation = activation
            result = agent.on_activate(None)
            if inspect.isawaitable(result):
                await result
            self._activations[key] = activation
            self.activated += 1
            self._start_sweeper()
            future.set_result(activation)
            return activation
        except BaseException as error:
            future.set_exception(error)
            future.exception()  # retrieved: waiters get it, nobody else must
            raise
        finally:
            del self._activating[key]

    def _drop(self, activation: _Activation) -> None:
        if self._activations.get(activation.key) is activation:
            del self._activations[activation.key]
            self.deactivated += 1

    async def _deactivate(self, activation: _Activation, *, reason: str) -> None:
        self._drop(activation)
        try:
            result = activation.agent.on_deactivate()
            if inspect.isawaitable(result):
                await result
        except Exception:  # noqa: BLE001 - it is dropped anyway
            logger.exception("on_deactivate of %s/%s failed (%s)", self.cls.type_name(), activation.key, reason)

    def _start_sweeper(self) -> None:
        if self._sweeper is None:
            self._sweeper = asyncio.ensure_future(self._sweep())

    async def _sweep(self) -> None:
        idle = max(0.01, float(self.cls.idle_seconds))
        while True:
            await asyncio.sleep(min(60.0, max(0.01, idle / 4)))
            await self.sweep_idle()

    async def sweep_idle(self) -> int:
        """Drop activations idle for ``idle_seconds`` (not one in a turn); returns how many."""
        horizon = self._clock() - float(self.cls.idle_seconds)
        idle = [a for a in self._activations.values() if a.last_used < horizon and not a.busy]
        for activation in idle:
            await self._deactivate(activation, reason="idle")
        return len(idle)

    # -- what the host and the API see --------------------------------------------------------
    def describe(self, key: str) -> dict[str, Any] | None:
        activation = self._activations.get(key)
        if activation is None:
            return None
        return {"activation": activation.activation, "version": activation.version, "turns": activation.turns,
                "idle_seconds": round(max(0.0, self._clock() - activation.last_used), 3)}

    def statistics(self) -> dict[str, int]:
        return {"active": len(self._activations), "activated": self.activated,
                "deactivated": self.deactivated, "handled": self.handled}

    async def teardown(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        for activation in list(self._activations.values()):
            await self._deactivate(activation, reason="shard stopped")


def _digest(body: bytes) -> bytes:
    return hashlib.blake2b(body, digest_size=16).digest()


__all__ = ["VirtualAgent", "VirtualShard", "StateSave", "StateRow", "Verdict", "judge_save"]
