"""How the :class:`~hive_ray.Hive` client reaches the orchestrator: the data plane or Ray calls.

Every client call goes through :meth:`OrchestratorCalls._call` (or its
asynchronous and fire-and-collect forms). A call named ``data_plane`` in
:mod:`hive_ray._operations` travels over the orchestrator's stream when one is
open (:mod:`hive_ray._runtime._channel_client`), else as a Ray actor call.
Waits are bounded: a call with a timeout gives up
``settings.client_timeout_margin_seconds`` after it, answered or not; reads
are retried while the orchestrator restarts (up to :data:`RECONNECT_SECONDS`);
a broken stream is reopened on a thread of its own while calls use Ray.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import TYPE_CHECKING, Any

from hive_ray._errors import HiveConnectionError, HiveError
from hive_ray._operations import DATA_PLANE_OPERATIONS, RETRYABLE_OPERATIONS

if TYPE_CHECKING:
    from hive_ray._settings import Settings

logger = logging.getLogger("hive_ray.client")

#: Calls that go over the data plane when it is open (the rest are Ray calls), and calls
#: that are safe to send again after the stream broke: see hive_ray/_operations.py.
_CHANNEL_METHODS = DATA_PLANE_OPERATIONS
_RETRYABLE_METHODS = RETRYABLE_OPERATIONS

#: How long reads keep retrying while the orchestrator restarts.
RECONNECT_SECONDS = 60.0


class _Interrupted(Exception):
    """The orchestrator went away mid-call (it may be restarting)."""


class _NoAnswer(HiveConnectionError):
    """The orchestrator did not answer within the call's timeout plus the margin: unlike a
    broken connection, nothing is retried or recovered (that would wait past the timeout)."""


class OrchestratorCalls:
    """The call plumbing of :class:`~hive_ray.Hive` (a mixin: the client's state is its own)."""

    _orchestrator: Any
    settings: Settings
    _closed: bool
    _channel: Any  # hive_ray._runtime._channel_client.ChannelClient while the stream is open
    _reopening: bool

    def _open_channel(self) -> None:
        """Use the orchestrator's data plane when it can be reached and authenticated from here.

        The orchestrator says where to dial for this driver's Ray node (its loopback on its
        own node, its node address elsewhere) and how (TLS, the certificate to pin); a
        stream that cannot be opened leaves every call on Ray.
        """
        if not self.settings.data_plane:
            return
        import ray
        from ray.exceptions import GetTimeoutError

        from hive_ray._runtime._channel_client import ChannelClient
        from hive_ray._runtime._frames import ChannelLimits

        node_id = ray.get_runtime_context().get_node_id()
        try:
            endpoint = ray.get(self._orchestrator.client_endpoint.remote(node_id), timeout=60)
        except GetTimeoutError:
            logger.info("no data-plane endpoint from the orchestrator within 60 s; using Ray calls")
            return
        if endpoint is None:
            return
        try:
            self._channel = ChannelClient(endpoint, name=f"driver-{os.getpid()}",
                                          limits=ChannelLimits.from_settings(self.settings))
        except (OSError, HiveError) as error:  # unreachable, refused, TLS: Ray calls still work
            logger.info("data plane at %s unusable (%s: %s); using Ray calls", endpoint.address,
                        type(error).__name__, error)

    def _call(self, method: str, *args: Any, timeout: float | None = None) -> Any:
        """Call the orchestrator; reads are retried while it restarts (up to a limit).

        ``timeout`` bounds the client's wait: it gives up ``client_timeout_margin_seconds``
        after it with :class:`HiveConnectionError`, whether or not an answer came.
        """
        if self._closed:
            raise HiveConnectionError("this Hive client is closed; call Hive.connect() again")
        now = time.monotonic()
        reconnect_deadline = now + RECONNECT_SECONDS
        deadline = None if timeout is None else now + timeout + self.settings.client_timeout_margin_seconds
        while True:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                return self._call_once(method, *args, timeout=remaining)
            except _Interrupted as interrupted:
                now = time.monotonic()
                if method not in _RETRYABLE_METHODS or now > reconnect_deadline or \
                        (deadline is not None and now + 0.2 >= deadline):
                    raise HiveConnectionError(
                        f"lost the orchestrator during {method}() ({interrupted}); it may be "
                        "restarting. Try again in a few seconds, or run `hive status`."
                    ) from None
                time.sleep(0.2)
                self._reopen_channel()

    def _call_once(self, method: str, *args: Any, timeout: float | None = None) -> Any:
        channel = self._channel
        if channel is not None and not channel.closed and method in _CHANNEL_METHODS:
            from hive_ray._runtime._channel_client import CallTimedOut
            from hive_ray._runtime._frames import ChannelClosed, FrameError

            try:
                return channel.call(method, *args, timeout=timeout)
            except CallTimedOut:
                raise self._no_answer(method, timeout) from None
            except FrameError as error:
                # This call's answer (or the stream) was unreadable here: sending it again
                # would fail the same way, so it fails now; later calls get a new stream.
                self._reopen_channel()
                raise HiveConnectionError(f"{method}() failed on the data plane: {error}") from None
            except ChannelClosed as closed:
                self._channel = None  # the orchestrator restarted or went away
                raise _Interrupted(str(closed)) from None
        import ray
        from ray.exceptions import GetTimeoutError, RayActorError, RayTaskError

        try:
            return ray.get(getattr(self._orchestrator, method).remote(*args), timeout=timeout)
        except GetTimeoutError:
            raise self._no_answer(method, timeout) from None
        except RayTaskError as error:
            cause = error.cause if hasattr(error, "cause") else None
            if isinstance(cause, HiveError):
                raise cause from None
            raise
        except RayActorError as error:
            raise _Interrupted(type(error).__name__) from None

    def _no_answer(self, method: str, waited: float | None) -> HiveConnectionError:
        return _NoAnswer(
            f"the orchestrator did not answer {method}() within its timeout plus "
            f"{self.settings.client_timeout_margin_seconds:g} s ({waited or 0:.1f} s in all); it "
            "may be overloaded or restarting, and the call may still take effect. Try again, or "
            "run `hive status`."
        )

    def _reopen_channel(self) -> None:
        """Open a new stream on a thread of its own; calls use Ray until it is open.

        Opening waits for the orchestrator (its endpoint, then the handshake), which may
        take longer than the timeout of the call that found the stream broken.
        """
        if self._closed or self._reopening or (self._channel is not None and not self._channel.closed):
            return
        self._channel = None
        self._reopening = True

        def reopen() -> None:
            try:
                self._open_channel()
            except Exception:  # noqa: BLE001 - not back yet; the next broken call tries again
                pass
            finally:
                self._reopening = False
            if self._closed and self._channel is not None:
                self._channel.close()  # closed meanwhile: leave nothing open
                self._channel = None

        threading.Thread(target=reopen, name="hive-reopen-channel", daemon=True).start()

    async def _call_async(self, method: str, *args: Any, timeout: float | None = None) -> Any:
        """An orchestrator call that does not block the running event loop; ``timeout``
        bounds the wait as in :meth:`_call`."""
        import asyncio

        bound = None if timeout is None else timeout + self.settings.client_timeout_margin_seconds
        channel = self._channel
        if channel is not None and not channel.closed and method in _CHANNEL_METHODS:
            pending = channel.call_async(method, *args)
            try:
                return await asyncio.wait_for(asyncio.wrap_future(pending), bound)
            except asyncio.TimeoutError:
                channel.forget(pending)
                raise self._no_answer(method, bound) from None
        try:
            return await asyncio.wait_for(getattr(self._orchestrator, method).remote(*args), bound)
        except asyncio.TimeoutError:
            raise self._no_answer(method, bound) from None
        except Exception as error:  # noqa: BLE001
            raise _unwrap_ray_error(error) from None

    def _fire(self, method: str, *args: Any) -> Any:
        """Send a call without waiting: a Future on the data plane, else an ObjectRef."""
        channel = self._channel
        if channel is not None and not channel.closed and method in _CHANNEL_METHODS:
            return channel.call_async(method, *args)
        return getattr(self._orchestrator, method).remote(*args)

    def _collect(self, pending: Any, timeout: float | None = None) -> Any:
        """The answer of a call sent by :meth:`_fire`, waiting at most ``timeout`` seconds."""
        from hive_ray._runtime._channel_client import CallTimedOut, PendingCall

        if isinstance(pending, PendingCall):
            from hive_ray._runtime._frames import ChannelClosed

            try:
                return pending.wait(timeout)
            except CallTimedOut:
                raise self._no_answer(pending.method, timeout) from None
            except ChannelClosed as closed:
                raise HiveConnectionError(f"lost the orchestrator mid-call: {closed}") from None
        import ray
        from ray.exceptions import GetTimeoutError, RayActorError

        try:
            return ray.get(pending, timeout=timeout)
        except GetTimeoutError:
            raise self._no_answer("run_many", timeout) from None  # the only call collected with a timeout
        except RayActorError as error:
            raise HiveConnectionError(
                f"lost the orchestrator mid-call ({type(error).__name__}); it may be restarting"
            ) from None
        except Exception as error:  # noqa: BLE001
            raise _unwrap_ray_error(error) from None


def _unwrap_ray_error(error: BaseException) -> BaseException:
    cause = getattr(error, "cause", None)
    return cause if isinstance(cause, HiveError) else error


__all__ = ["RECONNECT_SECONDS", "OrchestratorCalls"]
