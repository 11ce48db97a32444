"""A driver's end of the data plane: blocking, thread-safe calls to the orchestrator.

The stream lives on a private event loop in a thread of its own: every byte
(TLS included) is read and written by that one thread, so no two threads ever
use the socket or its TLS state at once, and no thread can read from a socket
number that another one closed and the system reused. Callers, on any thread
(or a notebook's event loop, through :func:`asyncio.wrap_future`), get a
:class:`concurrent.futures.Future` per call.

Nothing waits forever: any failure of the stream (a closed socket, a frame
over the limit, a reply that cannot be unpickled here, an orchestrator that
stops reading) fails the connection and every call pending on it, and
:meth:`ChannelClient.result` gives up at the caller's timeout even if the
orchestrator never answers.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
from concurrent.futures import Future
from typing import Any

from hive_ray._runtime._channel import open_stream
from hive_ray._runtime._endpoint import Endpoint
from hive_ray._runtime._frames import (
    HEADER,
    ChannelClosed,
    ChannelLimits,
    FrameError,
    FrameWriter,
    Kind,
    decode,
    encode,
    parse_header,
)
from hive_ray._runtime._handshake import ROLE_CLIENT

logger = logging.getLogger("hive_ray.channel")


class CallTimedOut(TimeoutError):
    """The orchestrator did not answer a data-plane call within the caller's timeout."""


class PendingCall(Future):  # type: ignore[type-arg]
    """The future reply of one call; :meth:`wait` gives up at a timeout and forgets the call."""

    def __init__(self, client: ChannelClient, number: int, method: str) -> None:
        super().__init__()
        self.client = client
        self.number = number
        self.method = method

    def wait(self, timeout: float | None = None) -> Any:
        return self.client.result(self, timeout)


class ChannelClient:
    """A driver's authenticated stream to the orchestrator (see the module docstring)."""

    def __init__(self, endpoint: Endpoint, name: str = "driver", limits: ChannelLimits | None = None) -> None:
        self._limits = limits or ChannelLimits()
        self.endpoint = endpoint
        self._state_lock = threading.Lock()  # guards closed and _pending
        self._pending: dict[int, PendingCall] = {}
        self._numbers = itertools.count()
        self.closed = False
        self.close_reason = ""
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run_loop, name="hive-channel", daemon=True)
        self._thread.start()
        opening = asyncio.run_coroutine_threadsafe(self._open(name), self._loop)
        try:
            # Each step inside is bounded; this bound only guards against a stuck loop.
            opening.result(self._limits.connect_timeout + self._limits.handshake_timeout + 5)
        except BaseException:
            opening.cancel()
            self._stop_loop()
            raise

    # -- the loop thread -------------------------------------------------------------
    def _run_loop(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_forever()
        finally:
            pending = [task for task in asyncio.all_tasks(self._loop) if not task.done()]
            for task in pending:
                task.cancel()
            self._loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            self._loop.close()

    async def _open(self, name: str) -> None:
        self._stream, writer = await open_stream(self.endpoint, ROLE_CLIENT, name, self._limits)
        ssl_object = writer.get_extra_info("ssl_object")
        self.tls_version: str | None = None if ssl_object is None else ssl_object.version()
        self._frames = FrameWriter(writer, peer=f"the orchestrator at {self.endpoint.address}",
                                   limits=self._limits, on_stalled=lambda reason: self._fail(reason))
        self._draining: asyncio.Task[None] | None = None
        self._reading = asyncio.ensure_future(self._read_loop())

    async def _read_loop(self) -> None:
        reader = self._stream
        try:
            while True:
                length, kind, number = parse_header(await reader.readexactly(HEADER.size),
                                                    self._limits.max_frame_bytes)
                body = await reader.readexactly(length)
                if kind not in (Kind.REPLY, Kind.REPLY_ERROR):
                    raise FrameError(f"a {kind.name} frame from the orchestrator", number=number)
                value = decode(kind, number, body)
                with self._state_lock:
                    future = self._pending.pop(number, None)
                if future is None or future.done():
                    continue  # its caller gave up waiting
                if kind == Kind.REPLY:
                    future.set_result(value)
                elif isinstance(value, BaseException):
                    future.set_exception(value)
                else:
                    future.set_exception(RuntimeError(str(value)))
        except asyncio.CancelledError:
            self._fail("closed by the client")
            raise
        except FrameError as error:
            self._fail(str(error), culprit=error)
        except asyncio.IncompleteReadError:
            self._fail("the orchestrator closed the stream")
        except Exception as error:  # noqa: BLE001 - whatever it is, the stream is over and says why
            self._fail(f"{type(error).__name__}: {error}")

    def _send(self, frame: bytes) -> None:
        """On the loop: queue a frame; above the high-water mark, watch the peer drain it."""
        try:
            self._frames.send_nowait(frame)
        except ChannelClosed as closed:
            self._fail(str(closed))
            return
        if self._draining is None and self._frames.queued_bytes() > self._limits.write_high_water:
            self._draining = asyncio.ensure_future(self._drain())

    async def _drain(self) -> None:
        try:
            await self._frames.drain()  # a peer that does not read in time is dropped
        except ChannelClosed as closed:
            self._fail(str(closed))
        finally:
            self._draining = None

    # -- any thread --------------------------------------------------------------------
    def call_async(self, method: str, *args: Any) -> PendingCall:
        """Send a call; returns its future reply (a :class:`concurrent.futures.Future`)."""
        with self._state_lock:
            number = next(self._numbers)
            future = PendingCall(self, number, method)
            if self.closed:
                future.set_exception(ChannelClosed(
                    f"the stream to the orchestrator is closed ({self.close_reason})"))
                return future
            self._pending[number] = future
        try:
            frame = encode(Kind.CALL, number, (method, args))
        except BaseException:
            self.forget(future)  # arguments that cannot be pickled: this call only
            raise
        try:
            self._loop.call_soon_threadsafe(self._send, frame)
        except RuntimeError:
            pass  # the stream closed meanwhile, and that failed this call too
        return future

    def result(self, future: PendingCall, timeout: float | None = None) -> Any:
        """Wait for a reply, at most ``timeout`` seconds (None: as long as the stream lives).

        Raises:
            CallTimedOut: no reply in time (the call is forgotten; a late reply is dropped).
            ChannelClosed: the stream failed; :class:`FrameError` if this call's own
                reply could not be read.
        """
        try:
            return future.result(timeout)
        except TimeoutError:
            if future.done():
                raise  # the reply itself was a TimeoutError raised by the orchestrator
            self.forget(future)
            raise CallTimedOut(
                f"the orchestrator did not answer {future.method}() within {timeout:.1f} s"
            ) from None

    def forget(self, future: PendingCall) -> None:
        """Stop waiting for a call's reply (its caller gave up)."""
        with self._state_lock:
            self._pending.pop(future.number, None)
        future.cancel()

    def call(self, method: str, *args: Any, timeout: float | None = None) -> Any:
        return self.result(self.call_async(method, *args), timeout)

    def _fail(self, reason: str, culprit: FrameError | None = None) -> None:
        with self._state_lock:
            if self.closed:
                return
            self.closed = True
            self.close_reason = reason
            pending, self._pending = self._pending, {}
        if culprit is not None:
            logger.warning("data-plane stream to the orchestrator failed: %s", reason)
        for number, future in pending.items():
            if future.done():
                continue
            if culprit is not None and number == culprit.number:
                future.set_exception(culprit)
            else:
                future.set_exception(ChannelClosed(f"the stream to the orchestrator closed: {reason}"))
        self._stop_loop()

    def _stop_loop(self) -> None:
        """Close the stream and end the loop thread (from any thread, the loop's own included)."""

        def stop() -> None:
            frames = getattr(self, "_frames", None)
            if frames is not None:
                frames.close()
            self._loop.stop()

        try:
            self._loop.call_soon_threadsafe(stop)
        except RuntimeError:
            pass  # the loop is closed already

    def close(self) -> None:
        self._fail("closed by the client")
        if threading.current_thread() is not self._thread:
            self._thread.join(5)


__all__ = ["CallTimedOut", "ChannelClient", "PendingCall"]
