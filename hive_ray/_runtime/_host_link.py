"""The dialling ends of the data plane: how a host or a driver opens its stream to the
orchestrator (:func:`open_stream`: connect, TLS, the challenge-response), and a host's end
of its stream (:class:`HostLink`: it runs the batches that arrive and sends its streaming
tasks' parts). The orchestrator's end is :mod:`hive_ray._runtime._channel`; a driver's is
:mod:`hive_ray._runtime._channel_client`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from hive_ray._runtime._channel import Answers
from hive_ray._runtime._endpoint import Endpoint
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
from hive_ray._runtime._handshake import ROLE_HOST, TLS_PREAMBLE, HandshakeError, prove_to_server
from hive_ray._runtime._tls import client_context, verify_server

logger = logging.getLogger("hive_ray.channel")


class HostLink:
    """A host's end of its stream: runs every batch that arrives, until the stream closes."""

    def __init__(self, endpoint: Endpoint, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 *, limits: ChannelLimits, run_batch: Callable[[str, list[Any]], Awaitable[list[Any]]],
                 cancel: Callable[[str, str], Awaitable[Any]]) -> None:
        self.endpoint = endpoint
        self._reader = reader
        self._limits = limits
        self._frames = FrameWriter(writer, peer=f"the orchestrator at {endpoint.address}", limits=limits,
                                   on_stalled=lambda reason: None)
        self._run_batch = run_batch
        self._cancel = cancel
        self.close_reason = ""
        self._calls = Answers()  # report_parts_many calls awaiting their replies
        self.task = asyncio.ensure_future(self._loop())

    @property
    def open(self) -> bool:
        return not self.task.done()

    def status(self) -> dict[str, Any]:
        if self.open:
            return {"transport": "stream", **self.endpoint.describe()}
        return {"transport": "ray", "reason": f"the stream closed: {self.close_reason}"}

    async def report_parts_many(self, batches: list[Any]) -> list[bool | None]:
        """Streaming runs' parts to the orchestrator over this stream (see ``PartMux``).

        Raises:
            ChannelClosed: the stream closed before the answer came (the parts may or may
                not have arrived: the caller must not send them again).
        """
        if not self.open:
            raise ChannelClosed(f"stream to the orchestrator is closed ({self.close_reason})")
        number, answer = self._calls.expect()
        try:
            await self._frames.send(encode(Kind.PARTS, number, batches))
            return await answer
        finally:
            self._calls.forget(number)

    async def _run_one(self, number: int, agent_id: str, envelopes: list[Any]) -> None:
        try:
            outcomes = await self._run_batch(agent_id, envelopes)
            frame = encode(Kind.OUTCOMES, number, outcomes)
        except Exception as error:  # noqa: BLE001 - report, do not kill the stream
            frame = encode(Kind.BATCH_ERROR, number, f"{type(error).__name__}: {error}")
        try:
            await self._frames.send(frame)
        except ChannelClosed:
            self.task.cancel()

    async def _loop(self) -> None:
        running: set[asyncio.Task[None]] = set()
        try:
            while True:
                kind, number, message = await read_frame(self._reader, self._limits.max_frame_bytes)
                if kind == Kind.RUN:
                    agent_id, envelopes = message
                    task = asyncio.ensure_future(self._run_one(number, agent_id, envelopes))
                    running.add(task)
                    task.add_done_callback(running.discard)
                elif kind == Kind.CANCEL:
                    await self._cancel(*message)
                elif kind == Kind.REPLY:
                    self._calls.settle(number, message)
                elif kind == Kind.REPLY_ERROR:
                    self._calls.settle(number, error=RuntimeError(str(message)))
                else:
                    raise FrameError(f"a {kind.name} frame from the orchestrator", number=number)
        except asyncio.CancelledError:
            self.close_reason = self.close_reason or "closed by the host"
            raise
        except (asyncio.IncompleteReadError, ConnectionResetError, BrokenPipeError):
            self.close_reason = "the orchestrator closed it"
            logger.info("data-plane stream to the orchestrator closed")
        except Exception as error:  # noqa: BLE001 - a broken stream ends; Ray calls still work
            self.close_reason = f"{type(error).__name__}: {error}"
            logger.warning("data-plane stream to the orchestrator failed: %s", self.close_reason)
        finally:
            self._frames.close()
            self._calls.fail_all(lambda: ChannelClosed(f"stream to the orchestrator closed ({self.close_reason})"))

    def close(self) -> None:
        self.task.cancel()


async def connect_host(endpoint: Endpoint, host_key: str, *,
                       run_batch: Callable[[str, list[Any]], Awaitable[list[Any]]],
                       cancel: Callable[[str, str], Awaitable[Any]],
                       limits: ChannelLimits | None = None) -> HostLink:
    """Dial the orchestrator, prove ourselves and check its proof, then serve batches.

    Raises:
        ChannelClosed (HandshakeError among them), OSError, asyncio.TimeoutError:
            the stream cannot be used; the caller falls back to Ray calls.
    """
    limits = limits or ChannelLimits()
    reader, writer = await open_stream(endpoint, ROLE_HOST, host_key, limits)
    return HostLink(endpoint, reader, writer, limits=limits, run_batch=run_batch, cancel=cancel)


async def open_stream(endpoint: Endpoint, role: bytes, name: str,
                      limits: ChannelLimits) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """The dialling side of every stream: connect, start TLS if the orchestrator said so
    (and check its certificate), then pass the challenge-response, each step bounded."""
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection(endpoint.host, endpoint.port, limit=STREAM_LIMIT), limits.connect_timeout)
    try:
        await asyncio.wait_for(_dial_handshake(endpoint, role, name, reader, writer), limits.handshake_timeout)
    except BaseException:
        writer.transport.abort()
        raise
    return reader, writer


async def _dial_handshake(endpoint: Endpoint, role: bytes, name: str, reader: asyncio.StreamReader,
                          writer: asyncio.StreamWriter) -> None:
    certificate = b""
    if endpoint.tls != "off":
        if await reader.readexactly(len(TLS_PREAMBLE)) != TLS_PREAMBLE:
            raise HandshakeError(f"{endpoint.address} did not start TLS as the orchestrator would")
        await writer.start_tls(client_context(endpoint.tls), server_hostname=endpoint.host)
        certificate = verify_server(writer.get_extra_info("ssl_object"), endpoint.tls, endpoint.fingerprint)
    await prove_to_server(reader, writer, token=endpoint.token, role=role, name=name, certificate=certificate)


__all__ = ["HostLink", "connect_host", "open_stream"]
