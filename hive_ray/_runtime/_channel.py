"""The data plane: an authenticated (and, across nodes, encrypted) stream per host and driver.

Why not plain Ray actor calls for every dispatch? Measured on a 2-core machine
(Ray 2.60), submitting one actor call from inside an async actor costs about
0.3 ms of CPU, and a relay actor forwarding one call to another actor answers
in 2.0 to 2.3 ms where a direct call takes 0.75 ms. Dispatch through a relay
would make every task cost three times a plain Ray call. Ray stays the control
plane (placement, lifecycle, restarts, health); tasks and results travel as
framed pickles over one TCP stream per host, which costs tens of microseconds
per batch and, as a bonus, reports a dead host the moment its socket closes.

Why stdlib ``asyncio`` streams and ``ssl`` rather than grpcio's asyncio
streams (already a dependency)? Measured with ``perf/bench_transport.py`` on
the same machine (figures in docs/ARCHITECTURE.md): a grpc.aio bidirectional
stream costs two to three times the round trip of an asyncio stream (545 µs
against 212 µs at the median) and moves five to eight times fewer small
messages per second, with or without TLS; it is on a par only for megabyte
messages, which belong in Ray's object store. What a stream needs beyond bytes (who may
connect, frame bounds, back-pressure) had to be written either way; the
framing is a 13-byte header.

Security (see docs/ADMIN.md, "The data plane"):

* A connection is useful only after a mutual challenge-response over fresh
  nonces (:mod:`._handshake`): the token never crosses the wire, and nothing
  is unpickled, on either end, before the other end has proven it holds it.
* Peers on the orchestrator's node dial its loopback listener; peers on other
  nodes dial a listener on the node address that opens only when one needs it,
  and that listener speaks TLS (:mod:`._tls`) unless ``data_plane_tls`` is False.
* Every bound is explicit (:class:`~._frames.ChannelLimits`): handshakes in
  progress and their duration, frame size, bytes queued for a peer that does
  not read, calls in flight per driver.

Hosts and drivers that cannot reach the stream use Ray calls instead, so the
data plane is an accelerator, never a requirement.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from hive_ray._runtime._frames import (
    STREAM_LIMIT,
    ChannelClosed,
    ChannelLimits,
    FrameError,
    FrameWriter,
    Kind,
    encode,
    read_frame,
)
from hive_ray._runtime._handshake import (
    TLS_PREAMBLE,
    HandshakeError,
    Peer,
    accept_peer,
)
from hive_ray._runtime._tls import ServerTls

logger = logging.getLogger("hive_ray.channel")

CallHandler = Callable[[str, tuple[Any, ...]], Awaitable[Any]]
#: Answers a host's PARTS frame at once: ``Orchestrator.report_parts_many``.
PartsHandler = Callable[[list[Any]], list[Any]]


@dataclass(slots=True)
class Listener:
    """One listening socket of the orchestrator, plain or TLS."""

    host: str
    port: int
    tls: ServerTls | None
    server: asyncio.base_events.Server | None = None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


class Answers:
    """Calls sent on one stream that wait for their answer frame, by call number: the
    orchestrator's batches to a host, and a host's batches of parts to the orchestrator."""

    def __init__(self) -> None:
        self._waiting: dict[int, asyncio.Future[Any]] = {}
        self._numbers = itertools.count()

    def __len__(self) -> int:
        return len(self._waiting)

    def expect(self) -> tuple[int, asyncio.Future[Any]]:
        """A new call's number and the future its answer settles."""
        number = next(self._numbers)
        answer: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiting[number] = answer
        return number, answer

    def settle(self, number: int, value: Any = None, *, error: BaseException | None = None) -> None:
        """The answer to call ``number`` came (unknown or abandoned numbers are ignored)."""
        answer = self._waiting.pop(number, None)
        if answer is None or answer.done():
            return
        if error is not None:
            answer.set_exception(error)
        else:
            answer.set_result(value)

    def forget(self, number: int) -> None:
        self._waiting.pop(number, None)

    def fail_all(self, error: Callable[[], BaseException]) -> None:
        """The stream closed: every call still waiting fails with ``error()``."""
        waiting, self._waiting = self._waiting, {}
        for answer in waiting.values():
            if not answer.done():
                answer.set_exception(error())


class HostChannel:
    """The orchestrator's end of one host's stream: send batches, await outcomes."""

    def __init__(self, host_key: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 on_closed: Callable[[str], None], *, limits: ChannelLimits, listener: Listener,
                 parts_handler: PartsHandler | None = None) -> None:
        self.host_key = host_key
        self._parts_handler = parts_handler
        self.listener = listener
        self._reader = reader
        self._limits = limits
        self._frames = FrameWriter(writer, peer=f"host {host_key}", limits=limits, on_stalled=self._fail)
        self._pending = Answers()  # batches sent, awaiting their outcomes
        self._on_closed = on_closed
        self.closed = False
        self.close_reason = ""
        self._reader_task = asyncio.ensure_future(self._read_loop())

    def status(self) -> dict[str, Any]:
        """What ``hive.hosts(pool)`` shows about this stream."""
        return {"transport": "stream", "address": self.listener.address, "tls": self.listener.tls is not None,
                "authenticated": True, "pending_batches": len(self._pending)}

    async def run_batch(self, agent_id: str, envelopes: list[Any]) -> list[Any]:
        if self.closed:
            raise ChannelClosed(f"stream to host {self.host_key} is closed ({self.close_reason})")
        number, future = self._pending.expect()
        try:
            await self._frames.send(encode(Kind.RUN, number, (agent_id, envelopes)))
        except ChannelClosed as closed:
            self._fail(str(closed))
        return await future

    def cancel(self, agent_id: str, task_id: str) -> None:
        if self.closed:
            return
        try:
            self._frames.send_nowait(encode(Kind.CANCEL, 0, (agent_id, task_id)))
        except ChannelClosed as closed:
            self._fail(str(closed))

    async def _read_loop(self) -> None:
        try:
            while True:
                kind, number, message = await read_frame(self._reader, self._limits.max_frame_bytes)
                if kind == Kind.PARTS and self._parts_handler is not None:
                    self._answer_parts(number, message)
                    continue
                if kind not in (Kind.OUTCOMES, Kind.BATCH_ERROR):
                    raise FrameError(f"a {kind.name} frame from a host", number=number)
                if kind == Kind.OUTCOMES:
                    self._pending.settle(number, message)
                else:
                    self._pending.settle(number, error=RuntimeError(str(message)))
        except asyncio.CancelledError:
            self._fail("stream closed by the orchestrator")
            raise
        except (asyncio.IncompleteReadError, ConnectionResetError, BrokenPipeError) as error:
            self._fail(f"stream closed: {type(error).__name__}")
        except Exception as error:  # noqa: BLE001 - whatever broke the stream ends it, and only it
            logger.warning("data-plane stream of host %s failed: %s: %s", self.host_key,
                           type(error).__name__, error)
            self._fail(f"{type(error).__name__}: {error}")

    def _answer_parts(self, number: int, batches: Any) -> None:
        """A host's streaming parts: the handler never waits (a full buffer answers None)."""
        assert self._parts_handler is not None
        try:
            frame = encode(Kind.REPLY, number, self._parts_handler(batches))
        except Exception as error:  # noqa: BLE001 - a malformed batch fails its call, not the stream
            frame = encode(Kind.REPLY_ERROR, number, f"{type(error).__name__}: {error}")
        try:
            self._frames.send_nowait(frame)
        except ChannelClosed as closed:
            self._fail(str(closed))

    def _fail(self, reason: str) -> None:
        if self.closed:
            return
        self.closed = True
        self.close_reason = reason
        self._pending.fail_all(lambda: ChannelClosed(f"host {self.host_key}: {reason}"))
        self._frames.close()
        self._on_closed(self.host_key)

    def close(self) -> None:
        self._reader_task.cancel()
        self._fail("closed")


class ChannelServer:
    """Listens for hosts and drivers; each must pass the challenge-response first.

    Hosts then receive batches (:class:`HostChannel`); drivers send calls,
    which ``call_handler`` answers.
    """

    def __init__(self, token: bytes, call_handler: CallHandler | None = None,
                 limits: ChannelLimits | None = None, parts_handler: PartsHandler | None = None) -> None:
        self._token = token
        self._call_handler = call_handler
        self._parts_handler = parts_handler
        self._limits = limits or ChannelLimits()
        self.listeners: list[Listener] = []
        self.channels: dict[str, HostChannel] = {}
        self._arrivals: dict[str, asyncio.Event] = {}
        self._handshaking = 0
        self._clients: set[asyncio.StreamWriter] = set()  # drivers' open streams
        self.refused: Counter[str] = Counter()  # refused connections by reason, for statistics
        self._last_refusal_log = 0.0

    async def listen(self, host: str, tls: ServerTls | None = None, port: int = 0) -> Listener:
        listener = Listener(host=host, port=port, tls=tls)

        async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await self._accept(listener, reader, writer)

        listener.server = await asyncio.start_server(accept, host=host, port=port, limit=STREAM_LIMIT)
        listener.port = int(listener.server.sockets[0].getsockname()[1])
        self.listeners.append(listener)
        return listener

    async def _accept(self, listener: Listener, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> None:
        origin = _peer_name(writer)
        if self._handshaking >= self._limits.max_handshakes:
            self._refuse(writer, origin, "busy", f"{self._handshaking} handshakes already in progress")
            return
        self._handshaking += 1
        try:
            peer = await asyncio.wait_for(self._handshake(listener, reader, writer),
                                          self._limits.handshake_timeout)
        except asyncio.TimeoutError:
            self._refuse(writer, origin, "timeout",
                         f"no complete handshake within {self._limits.handshake_timeout:.1f} s")
            return
        except HandshakeError as error:
            self._refuse(writer, origin, "proof", str(error))
            return
        except Exception as error:  # noqa: BLE001 - garbage, TLS errors, resets: all refused alike
            self._refuse(writer, origin, "protocol", f"{type(error).__name__}: {error}")
            return
        finally:
            self._handshaking -= 1
        if peer.role == "client":
            self._clients.add(writer)
            try:
                await self._serve_client(peer, reader, writer)
            except asyncio.CancelledError:
                pass  # the loop is stopping; nobody awaits this connection's task
            finally:
                self._clients.discard(writer)
            return
        old = self.channels.pop(peer.name, None)
        if old is not None:
            old.close()
        self.channels[peer.name] = HostChannel(peer.name, reader, writer, self._forget,
                                               limits=self._limits, listener=listener,
                                               parts_handler=self._parts_handler)
        self._arrivals.setdefault(peer.name, asyncio.Event()).set()

    async def _handshake(self, listener: Listener, reader: asyncio.StreamReader,
                         writer: asyncio.StreamWriter) -> Peer:
        certificate = b""
        if listener.tls is not None:
            writer.write(TLS_PREAMBLE)
            await writer.start_tls(listener.tls.context)
            certificate = listener.tls.fingerprint
        return await accept_peer(reader, writer, token=self._token, certificate=certificate)

    def _refuse(self, writer: asyncio.StreamWriter, origin: str, category: str, reason: str) -> None:
        self.refused[category] += 1
        now = time.monotonic()
        if now - self._last_refusal_log >= 1.0:  # a flood of bad peers logs once a second
            self._last_refusal_log = now
            logger.warning("refused a data-plane connection from %s: %s (refused so far: %s)",
                           origin, reason, dict(self.refused))
        transport = writer.transport
        if transport is not None:
            transport.abort()

    async def _serve_client(self, peer: Peer, reader: asyncio.StreamReader,
                            writer: asyncio.StreamWriter) -> None:
        handler = self._call_handler
        frames = FrameWriter(writer, peer=f"client {peer.name}", limits=self._limits,
                             on_stalled=lambda reason: None)
        if handler is None:
            frames.close()
            return
        slots = asyncio.Semaphore(self._limits.max_calls_per_client)
        running: set[asyncio.Task[None]] = set()

        async def answer(number: int, method: str, args: tuple[Any, ...]) -> None:
            try:
                try:
                    frame = encode(Kind.REPLY, number, await handler(method, args))
                except Exception as error:  # noqa: BLE001 - errors travel back to the caller
                    frame = _error_frame(number, error)
                await frames.send(frame)
            except ChannelClosed:
                pass  # the client went away or stopped reading; the stream is being closed
            finally:
                slots.release()

        try:
            while True:
                await slots.acquire()  # at the limit, stop reading: the client's sends wait
                kind, number, message = await read_frame(reader, self._limits.max_frame_bytes)
                if kind != Kind.CALL:
                    raise FrameError(f"a {kind.name} frame from a client", number=number)
                method, args = message
                # Calls start in arrival order: a submit sent before a wait is accepted first.
                task = asyncio.ensure_future(answer(number, str(method), tuple(args)))
                running.add(task)
                task.add_done_callback(running.discard)
        except (asyncio.IncompleteReadError, ConnectionResetError, BrokenPipeError):
            pass  # the client closed its end
        except asyncio.CancelledError:
            raise
        except Exception as error:  # noqa: BLE001 - a bad frame ends this client's stream only
            logger.warning("data-plane stream of client %s failed: %s: %s", peer.name,
                           type(error).__name__, error)
        finally:
            for task in running:
                task.cancel()
            frames.close()

    def _forget(self, host_key: str) -> None:
        self._arrivals.pop(host_key, None)

    async def wait_for(self, host_key: str, timeout: float) -> HostChannel | None:
        channel = self.channels.get(host_key)
        if channel is not None and not channel.closed:
            return channel
        event = self._arrivals.setdefault(host_key, asyncio.Event())
        try:
            await asyncio.wait_for(event.wait(), timeout)
        except asyncio.TimeoutError:
            return None
        channel = self.channels.get(host_key)
        return channel if channel is not None and not channel.closed else None

    def channel(self, host_key: str) -> HostChannel | None:
        """The open stream of a host, if it has one."""
        channel = self.channels.get(host_key)
        return channel if channel is not None and not channel.closed else None

    def drop(self, host_key: str) -> None:
        channel = self.channels.pop(host_key, None)
        if channel is not None:
            channel.close()

    def close(self) -> None:
        for channel in list(self.channels.values()):
            channel.close()
        self.channels.clear()
        for writer in list(self._clients):
            if writer.transport is not None:
                writer.transport.abort()  # their read loops end and cancel their calls
        for listener in self.listeners:
            if listener.server is not None:
                listener.server.close()


def _error_frame(number: int, error: Exception) -> bytes:
    try:
        return encode(Kind.REPLY_ERROR, number, error)
    except Exception:  # noqa: BLE001 - an error that cannot be pickled travels as text
        return encode(Kind.REPLY_ERROR, number, RuntimeError(f"{type(error).__name__}: {error}"))


def _peer_name(writer: asyncio.StreamWriter) -> str:
    peer = writer.get_extra_info("peername")
    return f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) and len(peer) >= 2 else "an unknown peer"


__all__ = ["Answers", "ChannelClosed", "ChannelServer", "HostChannel", "Listener", "PartsHandler"]
