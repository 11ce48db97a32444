"""The shard: the agent a host runs for a virtual pool, holding the activations of its keys.

One :class:`VirtualShard` per agent id of a virtual pool; it owns the keys
:class:`hive_ray._routing.OwnerRing` gives it. Per message (a task naming its
key, see :mod:`hive_ray._virtual` for the whole story):

1. find the key's activation, or make one: load the saved state (unless the
   orchestrator said there is none) and call ``on_activate``; an activation the
   orchestrator's expectation shows to be stale is replaced;
2. take the identity's turn lock (one message at a time, in arrival order,
   unless the type is ``reentrant``);
3. run ``handle`` (or ``on_reminder`` for a reminder's message); a task id it
   already answered is answered from memory, not run twice;
4. attach the changed state to the outcome (:class:`~hive_ray._virtual.StateSave`);
   a failed turn, or one whose state does not pickle, is undone.

Activations idle for ``idle_seconds`` are dropped; timers live in an
activation and die with it. Pure Python (no Ray): unit-tested with a fake store.
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import itertools
import logging
import os
import pickle
import time
from collections.abc import Callable
from typing import Any, ClassVar

from hive_ray._agent import Agent, AgentContext
from hive_ray._journal_states import StateRow
from hive_ray._task import Task
from hive_ray._virtual import (
    EXPECTED_FIELD,
    KEY_FIELD,
    MAX_TIMERS,
    NO_STATE,
    REMEMBERED_ANSWERS,
    REMINDER_FIELD,
    SHARD_CONCURRENCY,
    StateSave,
    StateStore,
    Verdict,
    VirtualAgent,
    VirtualContext,
    dumps_state,
)

logger = logging.getLogger("hive_ray.virtual")


class _Activation:
    """One identity inside a shard."""

    __slots__ = ("agent", "key", "activation", "base", "version", "digest", "body", "lock", "answers",
                 "last_used", "turns", "busy", "timers")

    def __init__(self, agent: VirtualAgent, key: str, activation: str, row: StateRow | None,
                 reentrant: bool) -> None:
        self.agent = agent
        self.key = key
        self.activation = activation
        self.base = self.version = row.version if row is not None else 0
        self.body = row.body if row is not None else None
        self.digest = _digest(self.body) if self.body is not None else b""
        self.lock = None if reentrant else asyncio.Lock()
        self.answers: dict[str, Any] | None = None  # task id -> answer, oldest first
        self.last_used = time.monotonic()
        self.turns = 0
        self.busy = 0  # messages taken for it and not yet answered: never dropped while busy
        self.timers: dict[str, asyncio.Task[None]] | None = None

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
            # Delivered again (an orchestrator restart lost its outcome): its turn already ran
            # here. The state goes along again: the outcome that carried it may be what was lost.
            if activation.version > activation.base and activation.body is not None:
                self.context.attach_state(task.task_id, StateSave(
                    activation.key, activation.activation, activation.base, activation.version, activation.body))
            return answers[task.task_id]
        agent = activation.agent
        activation.last_used = self._clock()
        try:
            reminder = task.metadata.get(REMINDER_FIELD)
            value = agent.handle(task) if reminder is None else agent.on_reminder(reminder)
            if inspect.isawaitable(value):
                value = await value
            elif inspect.isgenerator(value) or inspect.isasyncgen(value):
                raise TypeError(f"{self.cls.__name__}.handle is a generator: virtual agents answer with a "
                                f"value (they do not stream); return the parts as a list, or stream from "
                                f"a plain Agent")
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
            answers = activation.answers = {}
        answers[task.task_id] = value
        if len(answers) > REMEMBERED_ANSWERS:
            del answers[next(iter(answers))]
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
            if len(self._activations) > self.cls.max_active:
                await self._evict_least_recently_used()
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
        if activation.timers:
            for timer in activation.timers.values():
                timer.cancel()
            activation.timers = None
        if self._activations.get(activation.key) is activation:
            del self._activations[activation.key]
            self.deactivated += 1

    # -- timers -------------------------------------------------------------------------
    def start_timer(self, activation: _Activation, name: str, due_in: float, every: float | None) -> None:
        if not isinstance(name, str) or not name:
            raise ValueError(f"a timer's name is a non-empty string, got {name!r}")
        for value, what in ((due_in, "due_in"), (every, "every")):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int | float) or value < 0
                                      or (what == "every" and value <= 0)):
                raise ValueError(f"a timer's {what} is a number of seconds above 0, got {value!r}")
        if self._activations.get(activation.key) is not activation:
            raise RuntimeError(f"{self.cls.type_name()}/{activation.key} is no longer active: no timer started")
        self.stop_timer(activation, name)
        if len(activation.timers or ()) >= MAX_TIMERS:
            raise ValueError(f"an activation has at most {MAX_TIMERS} timers")
        if activation.timers is None:
            activation.timers = {}
        activation.timers[name] = asyncio.ensure_future(self._run_timer(activation, name, float(due_in), every))

    def stop_timer(self, activation: _Activation, name: str) -> bool:
        timer = activation.timers.pop(name, None) if activation.timers else None
        if timer is None:
            return False
        if timer is not asyncio.current_task():
            timer.cancel()
        return True

    async def _run_timer(self, activation: _Activation, name: str, due_in: float, every: float | None) -> None:
        delay = due_in
        while True:
            await asyncio.sleep(delay)
            if self._activations.get(activation.key) is not activation:
                return
            try:
                if activation.lock is None:
                    await self._timer_turn(activation, name)
                else:
                    async with activation.lock:
                        await self._timer_turn(activation, name)
            except Exception:  # noqa: BLE001 - a failing timer keeps its rhythm; the error is logged
                logger.exception("timer %r of %s/%s failed", name, self.cls.type_name(), activation.key)
            if every is None:
                if activation.timers and activation.timers.get(name) is asyncio.current_task():
                    del activation.timers[name]
                return
            delay = float(every)

    async def _timer_turn(self, activation: _Activation, name: str) -> None:
        if self._activations.get(activation.key) is not activation:
            return
        try:
            value = activation.agent.on_timer(name)
            if inspect.isawaitable(value):
                await value
        except BaseException:
            self._restore(activation)
            raise
        await self.save_now(activation)

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

    async def _evict_least_recently_used(self) -> None:
        """Over ``max_active``: drop the least recently used tenth that is not busy."""
        candidates = sorted((a for a in self._activations.values() if not a.busy), key=lambda a: a.last_used)
        for activation in candidates[:max(1, len(self._activations) // 10)]:
            await self._deactivate(activation, reason="over max_active")

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
                "idle_seconds": round(max(0.0, self._clock() - activation.last_used), 3),
                "timers": sorted(activation.timers or ())}

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


__all__ = ["VirtualShard"]
