"""The challenge-response, and hostile peers on both ends: refused, with nothing unpickled."""

from __future__ import annotations

import asyncio
import pickle
import struct

import pytest

from hive_ray._runtime._channel_client import ChannelClient
from hive_ray._runtime._frames import ChannelLimits, Kind, encode
from hive_ray._runtime._handshake import (
    ROLE_CLIENT,
    ROLE_HOST,
    ClientHandshake,
    HandshakeError,
    accept_peer,
    proof,
)
from hive_ray._runtime._host_link import connect_host
from tests.unit.data_plane.peers import (
    TOKEN,
    UNPICKLED,
    WRONG_TOKEN,
    Tripwire,
    authenticated_client,
    closed_by_peer,
    endpoint_of,
    fake_server,
    raw_socket,
    receive_exactly,
    start_server,
    wait_until,
)

CHALLENGE_BYTES = 4 + 1 + 32 + 32


async def _echo(method, args):
    return (method, args)


async def _run_batch(agent_id, envelopes):
    return [f"{agent_id}:{envelope}" for envelope in envelopes]


async def _cancel(agent_id, task_id):
    return True


def test_proofs_differ_by_side_and_bind_every_field():
    fields = dict(role=ROLE_HOST, name=b"pool/host-0", client_nonce=b"c" * 32, server_nonce=b"s" * 32,
                  certificate=b"f" * 32)
    server = proof(TOKEN, b"server", **fields)
    assert server != proof(TOKEN, b"client", **fields)  # a proof cannot be reflected as the other side's
    assert server != proof(WRONG_TOKEN, b"server", **fields)
    for name, other in [("role", ROLE_CLIENT), ("name", b"pool/host-1"), ("client_nonce", b"C" * 32),
                        ("server_nonce", b"S" * 32), ("certificate", b"")]:
        assert proof(TOKEN, b"server", **{**fields, name: other}) != server, name


def test_a_host_and_a_client_are_accepted_and_their_traffic_flows(loop):
    server, listener = start_server(loop, handler=_echo)
    link = loop.run(connect_host(endpoint_of(listener), "pool/host-0", run_batch=_run_batch, cancel=_cancel))
    channel = loop.run(server.wait_for("pool/host-0", 5))
    assert channel is not None and channel.status()["authenticated"]
    assert loop.run(channel.run_batch("agent-1", [1, 2])) == ["agent-1:1", "agent-1:2"]
    client = ChannelClient(endpoint_of(listener), name="driver-1")
    try:
        assert client.call("health", 7, timeout=10) == ("health", (7,))
    finally:
        client.close()
        loop.call(link.close)
    assert dict(server.refused) == {}


def test_a_client_with_the_wrong_token_refuses_the_server_and_is_refused(loop):
    server, listener = start_server(loop, handler=_echo)
    with pytest.raises(HandshakeError, match="could not prove it holds the data-plane token"):
        ChannelClient(endpoint_of(listener, token=WRONG_TOKEN))
    assert wait_until(lambda: sum(server.refused.values()) == 1)


def test_a_wrong_client_proof_is_refused_and_what_follows_is_never_unpickled(loop):
    server, listener = start_server(loop, handler=_echo)
    sock = raw_socket(listener)
    state = ClientHandshake(TOKEN, ROLE_CLIENT, b"intruder", b"")
    sock.sendall(state.hello())
    receive_exactly(sock, CHALLENGE_BYTES)
    sock.sendall(bytes(32))  # not the proof
    sock.sendall(encode(Kind.CALL, 1, ("health", (Tripwire("after a wrong proof"),))))
    assert closed_by_peer(sock)
    assert server.refused["proof"] == 1
    assert UNPICKLED == []


def test_garbage_and_pickles_instead_of_a_hello_are_dropped_unread(loop):
    server, listener = start_server(loop, handler=_echo)
    for attempt in (pickle.dumps(Tripwire("as a hello")), b"GET / HTTP/1.1\r\n\r\n" + bytes(64),
                    encode(Kind.CALL, 1, ("health", (Tripwire("as a frame"),)))):
        sock = raw_socket(listener)
        sock.sendall(attempt)
        assert closed_by_peer(sock)
    assert server.refused["protocol"] + server.refused["proof"] == 3
    assert UNPICKLED == []
    assert server.channels == {}


def test_a_2_gib_length_prefix_is_refused_before_and_after_the_handshake(loop):
    server, listener = start_server(loop, handler=_echo)
    before = raw_socket(listener)
    before.sendall(struct.pack("!I", 2**31) + bytes(36))
    assert closed_by_peer(before)
    # Proven, then a frame that claims 2 GiB: the stream ends at the header, nothing is read.
    after = authenticated_client(listener)
    after.sendall(struct.pack("!IBQ", 2**31, Kind.CALL, 1))
    assert closed_by_peer(after)
    assert UNPICKLED == []


def test_a_silent_peer_is_dropped_at_the_handshake_timeout(loop):
    server, listener = start_server(loop, limits=ChannelLimits(handshake_timeout=0.2))
    sock = raw_socket(listener)
    assert closed_by_peer(sock)  # the test's socket would wait 10 s; the server gives up first
    assert server.refused["timeout"] == 1


def test_a_reflected_server_proof_is_refused(loop):
    server, listener = start_server(loop, handler=_echo)
    sock = raw_socket(listener)
    state = ClientHandshake(TOKEN, ROLE_CLIENT, b"reflector", b"")
    sock.sendall(state.hello())
    challenge = receive_exactly(sock, CHALLENGE_BYTES)
    sock.sendall(challenge[-32:])  # the server's own proof, sent back as ours
    assert closed_by_peer(sock)
    assert server.refused["proof"] == 1


def test_a_recorded_handshake_replayed_on_a_new_connection_is_refused(loop):
    server, listener = start_server(loop, handler=_echo)
    genuine = raw_socket(listener)
    state = ClientHandshake(TOKEN, ROLE_CLIENT, b"driver", b"")
    hello = state.hello()
    genuine.sendall(hello)
    recorded_proof = state.answer(receive_exactly(genuine, CHALLENGE_BYTES))
    genuine.sendall(recorded_proof)
    assert receive_exactly(genuine, 6) == b"HIVEOK"
    replay = raw_socket(listener)  # an eavesdropper who saw both messages
    replay.sendall(hello)
    receive_exactly(replay, CHALLENGE_BYTES)  # a fresh server nonce
    replay.sendall(recorded_proof)
    assert closed_by_peer(replay)
    assert server.refused["proof"] == 1
    genuine.close()


def test_a_server_replaying_a_recorded_challenge_is_refused_and_nothing_it_sends_is_unpickled(loop):
    _, listener = start_server(loop, handler=_echo)
    sock = raw_socket(listener)
    sock.sendall(ClientHandshake(TOKEN, ROLE_CLIENT, b"driver", b"").hello())
    recorded = receive_exactly(sock, CHALLENGE_BYTES)  # valid for that hello's nonce only
    sock.close()

    async def impostor(reader, writer):
        await reader.readexactly(40 + len(b"driver"))
        writer.write(recorded + encode(Kind.REPLY, 0, Tripwire("from an impostor")))
        await writer.drain()
        await reader.read()

    fake, fake_endpoint = fake_server(loop, impostor)
    with pytest.raises(HandshakeError, match="could not prove"):
        ChannelClient(fake_endpoint, name="driver")
    with pytest.raises(HandshakeError):
        loop.run(connect_host(fake_endpoint, "driver", run_batch=_run_batch, cancel=_cancel))
    loop.call(fake.close)
    assert UNPICKLED == []


@pytest.mark.parametrize("role", ["client", "host"])
def test_a_server_that_sends_pickles_instead_of_a_challenge_gets_nothing_unpickled(loop, role):
    async def hostile(reader, writer):
        writer.write(encode(Kind.REPLY, 0, Tripwire("instead of a challenge")) * 4)
        await writer.drain()
        await reader.read()

    fake, fake_endpoint = fake_server(loop, hostile)
    endpoint = fake_endpoint
    with pytest.raises(HandshakeError):
        if role == "client":
            ChannelClient(endpoint)
        else:
            loop.run(connect_host(endpoint, "pool/host-0", run_batch=_run_batch, cancel=_cancel))
    loop.call(fake.close)
    assert UNPICKLED == []


def test_handshakes_beyond_the_limit_are_refused_at_once(loop):
    server, listener = start_server(loop, limits=ChannelLimits(max_handshakes=2, handshake_timeout=30))
    silent = [raw_socket(listener), raw_socket(listener)]
    assert wait_until(lambda: server._handshaking == 2)
    extra = raw_socket(listener, timeout=5)
    assert closed_by_peer(extra)  # long before the 30 s handshake timeout
    assert server.refused["busy"] == 1
    for sock in silent:
        sock.close()
    assert wait_until(lambda: server._handshaking == 0)
    client = ChannelClient(endpoint_of(listener))  # room again
    client.close()


def test_the_server_side_handshake_rejects_a_foreign_protocol_and_long_names():
    async def scenario(hello: bytes) -> str:
        reader = asyncio.StreamReader()
        reader.feed_data(hello)
        reader.feed_eof()

        class Writer:
            def write(self, data):
                pass

            async def drain(self):
                pass

        try:
            await accept_peer(reader, Writer(), token=TOKEN, certificate=b"")
        except HandshakeError as error:
            return str(error)
        return "accepted"

    assert "not hive's data-plane protocol" in asyncio.run(scenario(b"SSH-2.0-OpenSSH_9.6\r\n" + bytes(40)))
    long_name = struct.pack("!4sBc32sH", b"HIVE", 1, b"c", bytes(32), 5000)
    assert "peer name of 5000 bytes" in asyncio.run(scenario(long_name))
    unknown_role = struct.pack("!4sBc32sH", b"HIVE", 1, b"x", bytes(32), 0)
    assert "unknown role" in asyncio.run(scenario(unknown_role))
