"""Streams after the handshake: batches, calls, and every way they can fail without a hang."""

from __future__ import annotations

import asyncio
import logging
import socket

import pytest

from hive_ray._runtime._channel_client import CallTimedOut, ChannelClient
from hive_ray._runtime._frames import ChannelClosed, ChannelLimits, FrameError, Kind, encode
from hive_ray._runtime._handshake import ROLE_HOST, accept_peer, prove_to_server
from hive_ray._runtime._host_link import connect_host
from tests.unit.data_plane.peers import (
    MISSING_MODULE_REPLY,
    TOKEN,
    authenticated_client,
    endpoint_of,
    fake_server,
    raw_frame,
    start_server,
    wait_until,
)

#: Pickles that cannot be loaded in the client: a module it does not have, an attribute
#: its version of a module lacks.
MISSING_MODULE = b"cserver_only_module_xyz\nResult\n."
MISSING_ATTRIBUTE = b"cos\nno_such_attribute_xyz\n."


async def _run_batch(agent_id, envelopes):
    return [("done", agent_id, envelope) for envelope in envelopes]


def test_batches_and_cancels_travel_over_a_host_stream(loop):
    cancelled = []

    async def cancel(agent_id, task_id):
        cancelled.append((agent_id, task_id))

    server, listener = start_server(loop)
    link = loop.run(connect_host(endpoint_of(listener), "pool/host-0", run_batch=_run_batch, cancel=cancel))
    channel = loop.run(server.wait_for("pool/host-0", 5))

    async def batches():
        return await asyncio.gather(*(channel.run_batch(f"a{i}", [i, i + 1]) for i in range(20)))

    results = loop.run(batches())
    assert results[7] == [("done", "a7", 7), ("done", "a7", 8)]
    loop.call(lambda: channel.cancel("a1", "task-9"))
    assert wait_until(lambda: cancelled == [("a1", "task-9")])
    assert link.status()["transport"] == "stream"
    loop.call(link.close)
    assert wait_until(lambda: channel.closed)  # the orchestrator sees the host go at once
    with pytest.raises(ChannelClosed):
        loop.run(channel.run_batch("a1", [1]))


@pytest.mark.parametrize("body", [MISSING_MODULE, MISSING_ATTRIBUTE], ids=["ImportError", "AttributeError"])
def test_an_unreadable_reply_fails_its_call_and_every_other_one_without_a_hang(loop, body):
    """A reply the client cannot unpickle ends the stream: that call, the calls pending
    beside it and every later call fail at once with a clear error."""
    answered = asyncio.Event()

    async def server_side(reader, writer):
        await accept_peer(reader, writer, token=TOKEN, certificate=b"")
        for _ in range(2):  # two calls arrive; the second is answered with the bad pickle
            header = await reader.readexactly(13)
            await reader.readexactly(int.from_bytes(header[:4], "big"))
        writer.write(raw_frame(Kind.REPLY, 1, body))
        await writer.drain()
        answered.set()
        await reader.read()

    fake, fake_endpoint = fake_server(loop, server_side)
    client = ChannelClient(fake_endpoint)
    waiting = client.call_async("wait", "task-a", None)
    with pytest.raises(FrameError, match="could not be unpickled here") as raised:
        client.call("task", "task-b", timeout=10)
    assert raised.value.number == 1
    assert type(body) is bytes and ("ModuleNotFoundError" in str(raised.value)) == (body == MISSING_MODULE)
    with pytest.raises(ChannelClosed, match="could not be unpickled"):
        waiting.result(10)  # the call pending beside it
    with pytest.raises(ChannelClosed, match="closed"):
        client.call("health", timeout=10)  # later calls fail at once
    assert client.closed
    loop.call(fake.close)


def test_a_real_servers_reply_of_a_server_only_class_fails_the_call(loop):
    async def handler(method, args):
        return MISSING_MODULE_REPLY() if method == "task" else "fine"

    _, listener = start_server(loop, handler=handler)
    client = ChannelClient(endpoint_of(listener))
    assert client.call("health", timeout=10) == "fine"
    with pytest.raises(FrameError, match="ImportError: No module named 'server_only'"):
        client.call("task", "id", timeout=10)
    with pytest.raises(ChannelClosed):
        client.call("health", timeout=10)


def test_an_unreadable_frame_from_a_host_fails_every_pending_batch(loop):
    server, listener = start_server(loop)

    async def hostile_host():
        reader, writer = await asyncio.open_connection(listener.host, listener.port)
        await prove_to_server(reader, writer, token=TOKEN, role=ROLE_HOST, name="pool/host-0", certificate=b"")
        return reader, writer

    reader, writer = loop.run(hostile_host())
    channel = loop.run(server.wait_for("pool/host-0", 5))
    closed = []
    channel._on_closed = closed.append

    async def run_two_then_answer_badly():
        first = asyncio.ensure_future(channel.run_batch("a", [1]))
        second = asyncio.ensure_future(channel.run_batch("b", [2]))
        for _ in range(2):
            header = await reader.readexactly(13)
            await reader.readexactly(int.from_bytes(header[:4], "big"))
        writer.write(raw_frame(Kind.OUTCOMES, 0, MISSING_MODULE))
        return await asyncio.gather(first, second, return_exceptions=True)

    outcomes = loop.run(run_two_then_answer_badly())
    assert all(isinstance(outcome, ChannelClosed) for outcome in outcomes)
    assert "could not be unpickled" in str(outcomes[1])
    assert closed == ["pool/host-0"] and channel.closed


def test_client_timeouts_hold_against_a_server_that_never_answers(loop):
    async def handler(method, args):
        if method == "wait":
            await asyncio.Event().wait()  # never answers
        return "pong"

    _, listener = start_server(loop, handler=handler)
    client = ChannelClient(endpoint_of(listener))
    with pytest.raises(CallTimedOut, match=r"did not answer wait\(\) within 0.2 s"):
        client.call("wait", "task-1", None, timeout=0.2)
    pending = client.call_async("wait", "task-2", None)
    with pytest.raises(CallTimedOut):
        pending.wait(0.1)
    assert client._pending == {}  # a call given up on is forgotten, not kept forever
    assert client.call("health", timeout=10) == "pong"  # the stream itself is fine
    client.close()


def test_a_client_that_stops_reading_is_disconnected_not_buffered(loop, caplog):
    limits = ChannelLimits(write_high_water=64 * 1024, write_hard_limit=512 * 1024, write_timeout=0.3)

    async def handler(method, args):
        return bytes(256 * 1024)  # replies pile up at a peer that does not read

    server, listener = start_server(loop, handler=handler, limits=limits)
    sock = authenticated_client(listener)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    assert wait_until(lambda: len(server._clients) == 1)
    caplog.set_level(logging.WARNING, logger="hive_ray.channel")
    frames = b"".join(encode(Kind.CALL, number, ("statistics", ())) for number in range(400))
    sock.sendall(frames)
    assert wait_until(lambda: not server._clients)  # its stream was dropped
    assert "does not read its stream" in caplog.text
    sock.close()


def test_a_host_that_stops_reading_is_disconnected_and_its_batches_fail(loop, caplog):
    limits = ChannelLimits(write_high_water=64 * 1024, write_hard_limit=1024 * 1024, write_timeout=0.3)
    server, listener = start_server(loop, limits=limits)
    caplog.set_level(logging.WARNING, logger="hive_ray.channel")

    async def deaf_host():
        reader, writer = await asyncio.open_connection(listener.host, listener.port)
        writer.transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        await prove_to_server(reader, writer, token=TOKEN, role=ROLE_HOST, name="pool/host-9", certificate=b"")
        writer.transport.pause_reading()  # and never reads again
        return writer

    writer = loop.run(deaf_host())
    channel = loop.run(server.wait_for("pool/host-9", 5))

    async def flood():
        return await asyncio.gather(*(channel.run_batch("a", [bytes(256 * 1024)]) for _ in range(64)),
                                    return_exceptions=True)

    outcomes = loop.run(flood())
    assert all(isinstance(outcome, ChannelClosed) for outcome in outcomes)
    assert channel.closed and "does not read its stream" in channel.close_reason
    assert "does not read its stream" in caplog.text
    loop.call(writer.close)


def test_calls_beyond_the_per_client_limit_wait_unread(loop):
    release = asyncio.Event()
    started = []

    async def handler(method, args):
        started.append(args[0])
        await release.wait()
        return args[0]

    _, listener = start_server(loop, handler=handler, limits=ChannelLimits(max_calls_per_client=2))
    client = ChannelClient(endpoint_of(listener))
    pending = [client.call_async("wait", number) for number in range(3)]
    assert wait_until(lambda: len(started) == 2)
    assert not wait_until(lambda: len(started) == 3, timeout=0.3)  # the third waits, unread
    loop.call(release.set)
    assert [call.wait(10) for call in pending] == [0, 1, 2]
    client.close()


def test_a_call_is_answered_with_the_error_the_orchestrator_raised(loop):
    async def handler(method, args):
        raise KeyError(f"no {method}")

    _, listener = start_server(loop, handler=handler)
    client = ChannelClient(endpoint_of(listener))
    with pytest.raises(KeyError, match="no task"):
        client.call("task", timeout=10)
    client.close()


def test_a_hosts_streaming_parts_are_answered_over_its_stream(loop):
    received = []

    def parts_handler(batches):
        received.extend(batches)
        return [None if parts == ["full"] else True for _, _, _, parts, _ in batches]

    async def start():
        from hive_ray._runtime._channel import ChannelServer

        server = ChannelServer(TOKEN, None, None, parts_handler)
        return server, await server.listen("127.0.0.1")

    server, listener = loop.run(start())
    link = loop.run(connect_host(endpoint_of(listener), "pool/host-0", run_batch=_run_batch, cancel=_cancel))
    channel = loop.run(server.wait_for("pool/host-0", 5))
    batches = [("t1", "a1", 1, ["x", "y"], True), ("t2", "a1", 1, ["full"], False)]
    assert loop.run(link.report_parts_many(batches)) == [True, None]
    assert received == batches
    # A batch the handler cannot take fails its call, not the stream.
    assert loop.run(channel.run_batch("a1", [1])) == [("done", "a1", 1)]
    with pytest.raises(RuntimeError, match="ValueError: not enough values"):
        loop.run(link.report_parts_many([("t3",)]))
    assert link.open and not channel.closed
    # A call in flight when the stream closes fails with ChannelClosed: never a hang.
    loop.call(channel.close)
    assert wait_until(lambda: not link.open)
    with pytest.raises(ChannelClosed):
        loop.run(link.report_parts_many(batches))


async def _cancel(agent_id, task_id):
    return None
