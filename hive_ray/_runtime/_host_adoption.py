"""How an agent host outlives its orchestrator: adoption, and exiting when orphaned.

A mixin of :class:`~hive_ray._runtime._host.AgentHost`. Hosts are detached
actors, so an orchestrator crash does not take them (and their agents'
in-memory state) with it. A restarted orchestrator adopts each one
(:meth:`HostAdoption.adopt`): the host reconnects to the new data plane and
hands over what it ran meanwhile from its
:class:`~hive_ray._runtime._host_ledger.OutcomeLedger`. A host whose
orchestrator is gone for good (dead and not restarting) stops its agents and
exits by itself (:meth:`HostAdoption._watch_orchestrator`), so nothing leaks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import ray

from hive_ray._runtime._host_ledger import OutcomeLedger
from hive_ray._task import Outcome

if TYPE_CHECKING:
    from hive_ray._runtime._endpoint import Endpoint
    from hive_ray._runtime._host_link import HostLink

logger = logging.getLogger("hive_ray.host")


class HostAdoption:
    """Adoption by a new orchestrator, and the orphan watchdog."""

    # State of AgentHost this part reads or writes.
    _orchestrator: Any
    _link: HostLink | None
    _residents: dict[str, Any]
    _passivated: dict[str, Any]

    def _init_adoption(self, orchestrator_name: str | None, namespace: str | None,
                       orphan_exit_seconds: float | None) -> None:
        self._ledger = OutcomeLedger()
        self._orchestrator_name = orchestrator_name
        self._namespace = namespace
        self._activations_running = 0
        self._no_activation: asyncio.Event | None = None  # made on the actor's event loop
        self._loop: asyncio.AbstractEventLoop | None = None  # the actor's, once a call arrived
        self._stop_watching = threading.Event()
        if orphan_exit_seconds is not None and orchestrator_name:
            # A thread, started with the actor: a host that only starts once its orchestrator
            # is gone (it waited for resources) never receives a call, yet must not stay.
            threading.Thread(target=self._watch_orchestrator, args=(orphan_exit_seconds,),
                             name="hive-orphan-watchdog", daemon=True).start()

    @contextlib.contextmanager
    def _activating(self) -> Iterator[None]:
        """Around an activation: adoption waits until none runs, so its answer names every agent."""
        idle = self._idle()
        self._activations_running += 1
        idle.clear()
        try:
            yield
        finally:
            self._activations_running -= 1
            if not self._activations_running:
                idle.set()

    def _idle(self) -> asyncio.Event:
        if self._no_activation is None:
            self._no_activation = asyncio.Event()
            self._no_activation.set()
        return self._no_activation

    async def adopt(self, data_plane: Endpoint | None = None, orchestrator: Any = None,
                    host_key: str = "") -> dict[str, Any]:
        """A restarted orchestrator takes this host over.

        Activations still in progress finish first, so the answer names every
        agent. The old stream died with the old orchestrator: the host connects
        to the new one's (``data_plane``, as in :meth:`activate`). Returns where
        the host runs, its agents (active and passivated, their state intact),
        the batches it is still running and the outcomes it kept (see
        :class:`~hive_ray._runtime._host_ledger.OutcomeLedger`).
        """
        self._called()
        if orchestrator is not None:
            self._orchestrator = orchestrator
        await self._idle().wait()
        if self._link is not None:
            self._link.close()  # its batches still running finish into the ledger
            self._link = None
        if data_plane is not None:
            await self._connect(data_plane, host_key)
        running, outcomes = self._ledger.snapshot()
        return {**self.where(), "agents": [*self._residents, *self._passivated],
                "running": running, "outcomes": outcomes}

    async def reclaim(self, task_ids: list[str]) -> list[Outcome]:
        """Outcomes of tasks this host ran for an earlier orchestrator, once they ended."""
        return await self._ledger.claim(task_ids)

    def _called(self) -> None:
        """The orchestrator called: note the event loop, for an orphaned host's teardown."""
        self._ledger.contact()
        self._loop = asyncio.get_running_loop()

    def _watch_orchestrator(self, exit_seconds: float) -> None:
        """Exit once the orchestrator is gone for good, within about ``exit_seconds`` (a thread).

        A host is detached, so nothing else would ever stop it. It looks its
        orchestrator up by name only while it hears nothing from it (health
        pings, batches); a restarting orchestrator keeps its name, a dead one
        loses it, and one created anew under that name is another actor. Two
        lookups in a row must say so: a restart is not a death.
        """
        period = exit_seconds / 3
        misses = 0
        while not self._stop_watching.wait(period):
            if time.monotonic() - self._ledger.last_contact < period:
                misses = 0
                continue
            alive = self._orchestrator_exists()
            misses = misses + 1 if alive is False else 0
            if misses >= 2:
                self._exit_orphaned()
                return

    def _orchestrator_exists(self) -> bool | None:
        """True or False, or None when Ray cannot tell right now."""
        try:
            found = ray.get_actor(self._orchestrator_name, namespace=self._namespace)
        except ValueError:
            return False
        except Exception:  # noqa: BLE001 - the cluster's control store is busy: ask again later
            return None
        mine = getattr(self._orchestrator, "_actor_id", None)
        return mine is None or getattr(found, "_actor_id", None) == mine

    def _exit_orphaned(self) -> None:
        logger.warning("orchestrator %r (namespace %r) is gone for good; stopping %d agent(s) and exiting",
                       self._orchestrator_name, self._namespace, len(self._residents) + len(self._passivated))
        loop = self._loop
        if loop is not None and loop.is_running():  # agents were set up there: tear them down
            try:
                asyncio.run_coroutine_threadsafe(self.shutdown(), loop).result(30)
            except Exception:  # noqa: BLE001 - exiting anyway
                logger.exception("teardown of an orphaned host failed")
        try:
            ray.kill(ray.get_runtime_context().current_actor, no_restart=True)
        except Exception:  # noqa: BLE001 - Ray refused: leave the hard way
            os._exit(0)


__all__ = ["HostAdoption"]
