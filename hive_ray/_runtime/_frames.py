"""Frames on the data plane, and the bounded writer every stream sends them through.

A frame is a 13-byte header (payload length, kind, call number) and a pickled
payload. The kind and number sit outside the pickle, so a payload that cannot
be unpickled (a class importable on one end only) still names the call it
answers, and that call fails with a clear error instead of waiting forever.

Frames are read only after the peer has proven it holds the data plane's token
(:mod:`hive_ray._runtime._handshake`); a length above the limit is refused
before anything is allocated.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import pickle
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger("hive_ray.channel")

HEADER = struct.Struct("!IBQ")
#: Frames larger than this are refused (a corrupt or hostile length prefix).
MAX_FRAME_BYTES = 256 * 1024 * 1024
#: The asyncio stream buffer (reading pauses at twice this). With the default of 64 KiB a
#: large frame is read with the transport paused and resumed every 128 KiB, which measured
#: 20 MiB/s for 1 MiB frames (perf/bench_transport.py).
STREAM_LIMIT = 1024 * 1024


class Kind(enum.IntEnum):
    """What a frame carries; the direction is fixed by the kind."""

    RUN = 1  # orchestrator -> host: (agent id, envelopes)
    CANCEL = 2  # orchestrator -> host: (agent id, task id)
    OUTCOMES = 3  # host -> orchestrator: outcomes of the batch with this number
    BATCH_ERROR = 4  # host -> orchestrator: why the batch with this number could not run
    CALL = 5  # client -> orchestrator: (method, args)
    REPLY = 6  # orchestrator -> client: the call's return value
    REPLY_ERROR = 7  # orchestrator -> client: the exception the call raised
    PARTS = 8  # host -> orchestrator: streaming runs' parts (report_parts_many); answered by REPLY


class ChannelClosed(ConnectionError):
    """The stream closed (the peer died, the network failed, or a frame was bad)."""


class FrameError(ChannelClosed):
    """A frame broke the protocol: too large, an unknown kind, or a payload that
    cannot be unpickled. The connection it arrived on is closed."""

    def __init__(self, message: str, *, number: int | None = None) -> None:
        super().__init__(message)
        self.number = number


@dataclass(frozen=True, slots=True)
class ChannelLimits:
    """Bounds of every stream: nothing waits forever and no buffer grows without limit.

    Built from :class:`hive_ray._settings.Settings` by :meth:`from_settings`;
    tests inject short timeouts.
    """

    #: A connection must finish TLS and the challenge-response within this.
    handshake_timeout: float = 10.0
    #: Handshakes in progress at once; more connections are refused at once.
    max_handshakes: int = 64
    #: A peer whose queued outgoing bytes stay above ``write_high_water`` this long is dropped.
    write_timeout: float = 30.0
    write_high_water: int = 4 * 1024 * 1024
    #: Queued outgoing bytes above which a peer is dropped without waiting.
    write_hard_limit: int = 64 * 1024 * 1024
    max_frame_bytes: int = MAX_FRAME_BYTES
    #: Calls one client may have in progress; more wait unread in the socket (backpressure).
    max_calls_per_client: int = 1000
    #: How long a host or client waits for the TCP connection itself.
    connect_timeout: float = 5.0

    @classmethod
    def from_settings(cls, settings: Any) -> ChannelLimits:
        return cls(
            handshake_timeout=settings.data_plane_handshake_timeout_seconds,
            max_handshakes=settings.data_plane_max_handshakes,
            write_timeout=settings.data_plane_write_timeout_seconds,
            max_calls_per_client=settings.max_concurrent_calls,
        )


def encode(kind: Kind, number: int, message: Any) -> bytes:
    """One frame: the header, then the pickled message (cloudpickle for lambdas and the like)."""
    try:
        body = pickle.dumps(message, protocol=5)
    except (pickle.PicklingError, TypeError, AttributeError):
        from ray import cloudpickle

        body = cloudpickle.dumps(message, protocol=5)
    return HEADER.pack(len(body), kind, number) + body


def parse_header(header: bytes, limit: int) -> tuple[int, Kind, int]:
    """``(length, kind, number)`` of a frame header; raises :class:`FrameError` if it is bad."""
    length, raw_kind, number = HEADER.unpack(header)
    if length > limit:
        raise FrameError(f"a frame of {length} bytes exceeds the {limit} byte limit", number=number)
    try:
        kind = Kind(raw_kind)
    except ValueError:
        raise FrameError(f"a frame of unknown kind {raw_kind}", number=number) from None
    return length, kind, number


def decode(kind: Kind, number: int, body: bytes) -> Any:
    """Unpickle a frame's payload. Any failure (ImportError, AttributeError, a corrupt
    pickle, whatever it is) becomes a :class:`FrameError` naming the call."""
    try:
        return pickle.loads(body)
    except Exception as error:  # noqa: BLE001 - every decode failure is the same protocol failure
        raise FrameError(
            f"the {kind.name.lower()} frame for call {number} could not be unpickled here "
            f"({type(error).__name__}: {error}); the class it holds must be importable on this "
            "side too (install the same packages, or return plain data)",
            number=number,
        ) from None


async def read_frame(reader: asyncio.StreamReader, limit: int = MAX_FRAME_BYTES) -> tuple[Kind, int, Any]:
    """Read one frame and decode it: ``(kind, number, message)``."""
    length, kind, number = parse_header(await reader.readexactly(HEADER.size), limit)
    return kind, number, decode(kind, number, await reader.readexactly(length))


class FrameWriter:
    """Sends frames on a stream without letting unsent bytes grow without bound.

    Below ``write_high_water`` a send is a plain buffered write. Above it the
    sender waits for the peer to read, up to ``write_timeout``; a peer that
    does not read in that time, or lets ``write_hard_limit`` bytes pile up, is
    disconnected with a log line that says so, and the send raises
    :class:`ChannelClosed`.
    """

    def __init__(self, writer: asyncio.StreamWriter, *, peer: str, limits: ChannelLimits,
                 on_stalled: Callable[[str], None]) -> None:
        self._writer = writer
        self._peer = peer
        self._limits = limits
        self._on_stalled = on_stalled
        self._drain_lock = asyncio.Lock()
        self.closed = False

    def queued_bytes(self) -> int:
        transport = self._writer.transport
        return 0 if transport is None else transport.get_write_buffer_size()

    def send_nowait(self, frame: bytes) -> None:
        """Queue a frame without waiting (for callers that cannot await, e.g. cancel)."""
        if self.closed or self._writer.is_closing():
            raise ChannelClosed(f"the stream to {self._peer} is closed")
        if self.queued_bytes() > self._limits.write_hard_limit:
            self._stall(f"{self.queued_bytes()} bytes queued, above the "
                        f"{self._limits.write_hard_limit} byte limit")
        self._writer.write(frame)

    async def send(self, frame: bytes) -> None:
        self.send_nowait(frame)
        await self.drain()

    async def drain(self) -> None:
        """Wait while more than ``write_high_water`` bytes are queued, up to ``write_timeout``."""
        if self.queued_bytes() <= self._limits.write_high_water:
            return
        async with self._drain_lock:  # one drainer; the others wait their turn behind it
            if self.closed:
                raise ChannelClosed(f"the stream to {self._peer} is closed")
            try:
                await asyncio.wait_for(self._writer.drain(), self._limits.write_timeout)
            except asyncio.TimeoutError:
                self._stall(f"it read nothing for {self._limits.write_timeout:.0f} s with "
                            f"{self.queued_bytes()} bytes queued")
            except (ConnectionError, OSError) as error:
                raise ChannelClosed(f"the stream to {self._peer} broke: {error}") from None

    def _stall(self, why: str) -> None:
        reason = f"data-plane peer {self._peer} does not read its stream ({why}); disconnected it"
        logger.warning(reason)
        self.close()
        self._on_stalled(reason)
        raise ChannelClosed(reason)

    def close(self) -> None:
        """Close the stream; bytes the peer did not read are dropped, not waited for."""
        self.closed = True
        transport = self._writer.transport
        try:
            if transport is not None and transport.get_write_buffer_size():
                transport.abort()  # close() would keep the socket open until they are sent
            else:
                self._writer.close()
        except Exception:  # noqa: BLE001 - closing a broken transport
            pass


__all__ = ["HEADER", "MAX_FRAME_BYTES", "STREAM_LIMIT", "ChannelClosed", "ChannelLimits", "FrameError", "FrameWriter",
           "Kind", "decode", "encode", "parse_header", "read_frame"]
