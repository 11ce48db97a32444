"""A driver's end of the data plane: blocking, thread-safe calls to the orchestrator.

Callers, on any thread (or a notebook's event loop, through
:func:`asyncio.wrap_future`), get a :class:`concurrent.futures.Future` per
call. How the bytes move depends on the stream:

* **plain (loopback)**: callers write to the socket themselves, under a lock,
  and one reader thread reads; only that thread ever closes the socket (under
  the same lock), so no thread can touch a socket number that was closed and
  reused by another connection. This is the fast path: one thread hop per
  reply, none per call (measured with ``perf/bench_transport.py``).
* **TLS**: the stream lives on a private event loop in a thread of its own,
  so one thread does every TLS read and write (a TLS connection's state must
  not be used by two threads at once).

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
import socket
import struct
import threading
from concurrent.futures import Future
from typing import Any

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
from hive_ray._runtime._handshake import ROLE_CLIENT, prove_to_server_blocking
from hive_ray._runtime._host_link import open_stream

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
        self._stream: _SocketStream | _LoopStream | None = None
        stream = _SocketStream if endpoint.tls == "off" else _LoopStream
        # Its reader may fail the client before the constructor returns: close it then.
        opened = stream(self, endpoint, name, self._limits)
        with self._state_lock:
            self._stream = opened
            closed = self.closed
        if closed:
            opened.close()
        self.tls_version = opened.tls_version

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
        assert self._stream is not None  # set before the constructor returns
        self._stream.send(frame)
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

    def _on_frame(self, kind: Kind, number: int, body: bytes) -> None:
        """A frame from the orchestrator (on the stream's thread); raises FrameError if bad."""
        if kind not in (Kind.REPLY, Kind.REPLY_ERROR):
            raise FrameError(f"a {kind.name} frame from the orchestrator", number=number)
        value = decode(kind, number, body)
        with self._state_lock:
            future = self._pending.pop(number, None)
        if future is None or future.done():
            return  # its caller gave up waiting
        if kind == Kind.REPLY:
            future.set_result(value)
        elif isinstance(value, BaseException):
            future.set_exception(value)
        else:
            future.set_exception(RuntimeError(str(value)))

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
        with self._state_lock:
            stream = self._stream
        if stream is not None:  # None: still being opened; the constructor closes it
            stream.close()

    def close(self) -> None:
        self._fail("closed by the client")
        if self._stream is not None:
            self._stream.join()


class _SocketStream:
    """A plain stream: callers send under a lock, one thread reads and, at the end, closes."""

    def __init__(self, client: ChannelClient, endpoint: Endpoint, name: str, limits: ChannelLimits) -> None:
        self._client = client
        self._limits = limits
        self.tls_version: str | None = None
        self._send_lock = threading.Lock()
        self._close_lock = threading.Lock()
        self._socket: socket.socket | None = _dial_plain(endpoint, name, limits)
        self._thread = threading.Thread(target=self._read_loop, name="hive-channel", daemon=True)
        self._thread.start()

    def send(self, frame: bytes) -> None:
        try:
            with self._send_lock:
                sock = self._socket
                if sock is None:
                    raise ConnectionError("the stream is closed")
                sock.sendall(frame)
        except OSError as error:  # includes the send timeout: the orchestrator stopped reading
            self._client._fail(f"send failed: {type(error).__name__}: {error}")

    def _receive(self, size: int) -> bytes:
        sock = self._socket
        assert sock is not None
        buffer = bytearray(size)
        view = memoryview(buffer)
        received = 0
        while received < size:
            count = sock.recv_into(view[received:], size - received)
            if count == 0:
                raise ConnectionError("the orchestrator closed the stream")
            received += count
        return bytes(buffer)

    def _read_loop(self) -> None:
        try:
            while True:
                length, kind, number = parse_header(self._receive(HEADER.size), self._limits.max_frame_bytes)
                self._client._on_frame(kind, number, self._receive(length))
        except FrameError as error:
            self._client._fail(str(error), culprit=error)
        except Exception as error:  # noqa: BLE001 - whatever it is, the stream is over and says why
            self._client._fail(str(error) or type(error).__name__)
        finally:
            # Only this thread releases the socket, and only while no caller is mid-send:
            # nobody can then use its number after the system gave it to another socket.
            with self._send_lock, self._close_lock:
                sock, self._socket = self._socket, None
                if sock is not None:
                    sock.close()

    def close(self) -> None:
        """From any thread: wake the reader (and any blocked sender); the reader closes."""
        with self._close_lock:
            if self._socket is not None:
                try:
                    self._socket.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def join(self) -> None:
        if threading.current_thread() is not self._thread:
            self._thread.join(5)


def _dial_plain(endpoint: Endpoint, name: str, limits: ChannelLimits) -> socket.socket:
    sock = socket.create_connection((endpoint.host, endpoint.port), timeout=limits.connect_timeout)
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.settimeout(limits.handshake_timeout)  # bounds every step of the handshake
        prove_to_server_blocking(sock, token=endpoint.token, role=ROLE_CLIENT, name=name, certificate=b"")
        sock.settimeout(None)
        # A send that cannot progress for this long (the orchestrator stopped reading) fails
        # with an OSError instead of blocking the calling thread forever.
        seconds = int(limits.write_timeout)
        micros = int((limits.write_timeout - seconds) * 1e6)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, struct.pack("ll", seconds, micros))
    except BaseException:
        sock.close()
        raise
    return sock


class _LoopStream:
    """A TLS stream on a private event loop: one thread does every TLS read and write."""

    def __init__(self, client: ChannelClient, endpoint: Endpoint, name: str, limits: ChannelLimits) -> None:
        self._client = client
        self._limits = limits
        self.tls_version: str | None = None
        self._frames: FrameWriter | None = None
        self._draining: asyncio.Task[None] | None = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run_loop, name="hive-channel", daemon=True)
        self._thread.start()
        opening = asyncio.run_coroutine_threadsafe(self._open(endpoint, name), self._loop)
        try:
            # Each step inside is bounded; this bound only guards against a stuck loop.
            opening.result(limits.connect_timeout + limits.handshake_timeout + 5)
        except BaseException:
            opening.cancel()
            self.close()
            raise

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

    async def _open(self, endpoint: Endpoint, name: str) -> None:
        reader, writer = await open_stream(endpoint, ROLE_CLIENT, name, self._limits)
        ssl_object = writer.get_extra_info("ssl_object")
        self.tls_version = None if ssl_object is None else ssl_object.version()
        self._frames = FrameWriter(writer, peer=f"the orchestrator at {endpoint.address}",
                                   limits=self._limits, on_stalled=lambda reason: self._client._fail(reason))
        asyncio.ensure_future(self._read_loop(reader))

    async def _read_loop(self, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                length, kind, number = parse_header(await reader.readexactly(HEADER.size),
                                                    self._limits.max_frame_bytes)
                self._client._on_frame(kind, number, await reader.readexactly(length))
        except asyncio.CancelledError:
            self._client._fail("closed by the client")
            raise
        except FrameError as error:
            self._client._fail(str(error), culprit=error)
        except asyncio.IncompleteReadError:
            self._client._fail("the orchestrator closed the stream")
        except Exception as error:  # noqa: BLE001 - whatever it is, the stream is over and says why
            self._client._fail(f"{type(error).__name__}: {error}")

    def send(self, frame: bytes) -> None:
        try:
            self._loop.call_soon_threadsafe(self._send, frame)
        except RuntimeError:
            pass  # the loop ended: the stream closed, and that failed this call too

    def _send(self, frame: bytes) -> None:
        """On the loop: queue a frame; above the high-water mark, watch the peer drain it."""
        assert self._frames is not None
        try:
            self._frames.send_nowait(frame)
        except ChannelClosed as closed:
            self._client._fail(str(closed))
            return
        if self._draining is None and self._frames.queued_bytes() > self._limits.write_high_water:
            self._draining = asyncio.ensure_future(self._drain())

    async def _drain(self) -> None:
        assert self._frames is not None
        try:
            await self._frames.drain()  # a peer that does not read in time is dropped
        except ChannelClosed as closed:
            self._client._fail(str(closed))
        finally:
            self._draining = None

    def close(self) -> None:
        """From any thread: close the stream and end the loop's thread."""

        def stop() -> None:
            if self._frames is not None:
                self._frames.close()
            self._loop.stop()

        try:
            self._loop.call_soon_threadsafe(stop)
        except RuntimeError:
            pass  # the loop is closed already

    def join(self) -> None:
        if threading.current_thread() is not self._thread:
            self._thread.join(5)


__all__ = ["CallTimedOut", "ChannelClient", "PendingCall"]
