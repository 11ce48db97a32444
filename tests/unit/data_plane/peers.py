"""Shared pieces of the data-plane unit tests: an event loop on a thread, servers, hostile peers.

The orchestrator's side runs on :class:`LoopThread`'s loop, as it runs on the
actor's loop; blocking drivers (``ChannelClient``) and raw sockets run on the
test's own thread, as they do in a driver process.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any

from hive_ray._runtime._channel import ChannelServer, Listener
from hive_ray._runtime._endpoint import Endpoint
from hive_ray._runtime._frames import HEADER, ChannelLimits, Kind
from hive_ray._runtime._handshake import ROLE_CLIENT, ClientHandshake

TOKEN = bytes(range(32))
WRONG_TOKEN = bytes(32)

#: What unpickling a :class:`Tripwire` records: a test asserts it stays empty.
UNPICKLED: list[str] = []


def _note(tag: str) -> str:
    UNPICKLED.append(tag)
    return tag


class Tripwire:
    """A payload whose unpickling leaves a trace (as code execution would)."""

    def __init__(self, tag: str) -> None:
        self.tag = tag

    def __reduce__(self) -> tuple[Any, ...]:
        return (_note, (self.tag,))


class LoopThread:
    """An asyncio loop on its own thread: the orchestrator's side of every test."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, coroutine: Coroutine[Any, Any, Any], timeout: float = 20.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def call(self, function: Callable[[], Any]) -> Any:
        async def invoke() -> Any:
            return function()

        return self.run(invoke())

    def close(self) -> None:
        async def finish() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        self.run(finish())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        self.loop.close()


def start_server(loop: LoopThread, *, handler: Any = None, limits: ChannelLimits | None = None,
                 tls: Any = None) -> tuple[ChannelServer, Listener]:
    async def start() -> tuple[ChannelServer, Listener]:
        server = ChannelServer(TOKEN, handler, limits)
        return server, await server.listen("127.0.0.1", tls)

    return loop.run(start())


def fake_server(loop: LoopThread, serve: Callable[..., Coroutine[Any, Any, None]]) -> tuple[Any, Endpoint]:
    """A hand-written "orchestrator" on loopback running ``serve(reader, writer)`` per
    connection, and an endpoint (with the right token) that dials it."""

    async def listen() -> Any:
        return await asyncio.start_server(serve, "127.0.0.1", 0)

    server = loop.run(listen())
    return server, Endpoint("127.0.0.1", server.sockets[0].getsockname()[1], TOKEN)


def endpoint_of(listener: Listener, token: bytes = TOKEN, **overrides: Any) -> Endpoint:
    tls = "off" if listener.tls is None else listener.tls.mode
    fingerprint = listener.tls.fingerprint.hex() if listener.tls is not None else ""
    fields = {"host": listener.host, "port": listener.port, "token": token, "tls": tls,
              "fingerprint": fingerprint, **overrides}
    return Endpoint(**fields)


def raw_socket(listener: Listener, timeout: float = 10.0) -> socket.socket:
    sock = socket.create_connection((listener.host, listener.port), timeout=timeout)
    sock.settimeout(timeout)
    return sock


def receive_exactly(sock: socket.socket, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError(f"closed after {len(data)} of {size} bytes")
        data += chunk
    return bytes(data)


def closed_by_peer(sock: socket.socket) -> bool:
    """True once the other end closed or reset (reads whatever it had sent first)."""
    try:
        while True:
            if not sock.recv(65536):
                return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False


def authenticated_client(listener: Listener, name: str = "raw") -> socket.socket:
    """A raw socket that passed the challenge-response as a client (plain listener)."""
    sock = raw_socket(listener)
    state = ClientHandshake(TOKEN, ROLE_CLIENT, name.encode(), b"")
    sock.sendall(state.hello())
    sock.sendall(state.answer(receive_exactly(sock, 4 + 1 + 32 + 32)))
    assert receive_exactly(sock, 6) == b"HIVEOK"
    return sock


def raw_frame(kind: Kind, number: int, body: bytes) -> bytes:
    return HEADER.pack(len(body), kind, number) + body


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


def _server_only() -> None:
    raise ImportError("No module named 'server_only' (importable on the orchestrator only)")


class MISSING_MODULE_REPLY:  # noqa: N801 - named for what the client sees
    """Pickled fine by the orchestrator; loading it needs a module the client lacks."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (_server_only, ())
