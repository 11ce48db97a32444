"""A driver's end of the data plane: blocking, thread-safe calls to the orchestrator.

A reader thread matches replies to calls, so any number of threads (or a
notebook's event loop, through :func:`asyncio.wrap_future`) can call at once.
Nothing waits forever: a reader that meets any failure (a closed socket, a
frame over the limit, a reply that cannot be unpickled here) fails the
connection and every call pending on it, and :meth:`ChannelClient.result`
gives up at the caller's timeout even if the orchestrator never answers.
"""

from __future__ import annotations

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
    Kind,
    decode,
    encode,
    parse_header,
)
from hive_ray._runtime._handshake import (
    ROLE_CLIENT,
    TLS_PREAMBLE,
    HandshakeError,
    prove_to_server_blocking,
)
from hive_ray._runtime._tls import client_context, verify_server

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
        self._socket = _dial(endpoint, name, self._limits)
        self._state_lock = threading.Lock()  # guards closed and _pending
        self._send_lock = threading.Lock()
        self._pending: dict[int, PendingCall] = {}
        self._numbers = itertools.count()
        self.closed = False
        self.close_reason = ""
        self._reader = threading.Thread(target=self._read_loop, name="hive-channel", daemon=True)
        self._reader.start()

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
        frame = encode(Kind.CALL, number, (method, args))
        try:
            with self._send_lock:
                self._socket.sendall(frame)
        except OSError as error:  # includes the send timeout: the orchestrator stopped reading
            self._fail(f"send failed: {type(error).__name__}: {error}")
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

    def _receive_exactly(self, size: int) -> bytes:
        buffer = bytearray(size)
        view = memoryview(buffer)
        received = 0
        while received < size:
            count = self._socket.recv_into(view[received:], size - received)
            if count == 0:
                raise ConnectionError("the orchestrator closed the stream")
            received += count
        return bytes(buffer)

    def _read_loop(self) -> None:
        try:
            while True:
                length, kind, number = parse_header(self._receive_exactly(HEADER.size),
                                                    self._limits.max_frame_bytes)
                body = self._receive_exactly(length)
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
        except FrameError as error:
            self._fail(str(error), culprit=error)
        except Exception as error:  # noqa: BLE001 - whatever it is, the stream is over and says why
            self._fail(str(error) or type(error).__name__)

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
        try:
            self._socket.close()
        except OSError:
            pass

    def close(self) -> None:
        try:
            self._socket.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._fail("closed by the client")


def _dial(endpoint: Endpoint, name: str, limits: ChannelLimits) -> socket.socket:
    """Connect, start TLS if the orchestrator said so, and pass the challenge-response."""
    sock = socket.create_connection((endpoint.host, endpoint.port), timeout=limits.connect_timeout)
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.settimeout(limits.handshake_timeout)  # bounds every step of the handshake
        certificate = b""
        if endpoint.tls != "off":
            preamble = sock.recv(len(TLS_PREAMBLE), socket.MSG_WAITALL)
            if preamble != TLS_PREAMBLE:
                raise HandshakeError(f"{endpoint.address} did not start TLS as the orchestrator would")
            sock = client_context(endpoint.tls).wrap_socket(sock, server_hostname=endpoint.host)
            certificate = verify_server(sock, endpoint.tls, endpoint.fingerprint)
        prove_to_server_blocking(sock, token=endpoint.token, role=ROLE_CLIENT, name=name,
                                 certificate=certificate)
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


__all__ = ["CallTimedOut", "ChannelClient", "PendingCall"]
