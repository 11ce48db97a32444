"""Mutual challenge-response: each end of a data-plane stream proves it holds the token.

The token never crosses the wire. The dialling peer (a host or a driver) and the
orchestrator each send a fresh 32-byte nonce, and each proves itself with an
HMAC-SHA256 over the whole transcript::

    client -> server   HELLO      magic, version, role, client nonce, name
    server -> client   CHALLENGE  magic, version, server nonce, server proof
    client -> server   PROOF      client proof
    server -> client   ACCEPTED

    proof = HMAC(token, label | role | name | client nonce | server nonce | certificate)

The label differs by side ("server" or "client"), so neither proof can be
reflected back as the other; both nonces are fresh, so no recorded proof
verifies on another connection; the role and name are bound, so a host's
handshake cannot be replayed as a client's or as another host's; and the
SHA-256 of the server's TLS certificate is bound when the stream runs over
TLS, so a man in the middle holding another certificate cannot relay a
handshake through it. Every message is fixed-size binary: nothing is unpickled
until both sides have proven themselves.

The pure functions here compute and check messages; :func:`accept_peer` and
:func:`prove_to_server` only move the bytes.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
import struct
from dataclasses import dataclass

from hive_ray._runtime._frames import ChannelClosed

MAGIC = b"HIVE"
VERSION = 1
NONCE_BYTES = 32
PROOF_BYTES = 32
MAX_NAME_BYTES = 200
ROLE_HOST = b"h"
ROLE_CLIENT = b"c"
ROLES = {ROLE_HOST: "host", ROLE_CLIENT: "client"}

_HELLO = struct.Struct(f"!4sBc{NONCE_BYTES}sH")
_CHALLENGE = struct.Struct(f"!4sB{NONCE_BYTES}s{PROOF_BYTES}s")
ACCEPTED = MAGIC + b"OK"
#: A TLS listener's first bytes, sent in clear just before it starts TLS: the dialling side
#: starts its TLS handshake only after reading them, so no TLS byte can reach the
#: listener while its stream is still plain (where it would be read as plain data).
TLS_PREAMBLE = MAGIC + b"TLS1"


class HandshakeError(ChannelClosed):
    """A peer did not prove it holds the token, or broke the handshake protocol."""


@dataclass(frozen=True, slots=True)
class Peer:
    """Who proved itself at the other end of an accepted connection."""

    role: str  # "host" or "client"
    name: str  # the host key, or the client's name


def _transcript(side: bytes, role: bytes, name: bytes, client_nonce: bytes, server_nonce: bytes,
                certificate: bytes) -> bytes:
    parts = (b"hive-data-plane/1", side, role, name, client_nonce, server_nonce, certificate)
    # Length-prefixed, so that no two different transcripts concatenate to the same bytes.
    return b"".join(struct.pack("!H", len(part)) + part for part in parts)


def proof(token: bytes, side: bytes, role: bytes, name: bytes, client_nonce: bytes,
          server_nonce: bytes, certificate: bytes) -> bytes:
    """HMAC-SHA256 of the transcript; ``side`` is ``b"server"`` or ``b"client"``."""
    transcript = _transcript(side, role, name, client_nonce, server_nonce, certificate)
    return hmac.new(token, transcript, hashlib.sha256).digest()


# -- the client's side ---------------------------------------------------------------
@dataclass(slots=True)
class ClientHandshake:
    """The dialling peer's state: build HELLO, check CHALLENGE, answer with PROOF."""

    token: bytes
    role: bytes
    name: bytes
    certificate: bytes  # SHA-256 of the server's certificate as seen here; b"" without TLS
    nonce: bytes = b""

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"unknown data-plane role {self.role!r}")
        if len(self.name) > MAX_NAME_BYTES:
            raise ValueError(f"data-plane peer name longer than {MAX_NAME_BYTES} bytes")
        self.nonce = os.urandom(NONCE_BYTES)

    def hello(self) -> bytes:
        return _HELLO.pack(MAGIC, VERSION, self.role, self.nonce, len(self.name)) + self.name

    def answer(self, challenge: bytes) -> bytes:
        """Check the server's proof; return ours. Raises :class:`HandshakeError`."""
        magic, version, server_nonce, server_proof = _CHALLENGE.unpack(challenge)
        if magic != MAGIC or version != VERSION:
            raise HandshakeError("the server does not speak hive's data-plane protocol")
        if server_nonce == self.nonce:
            raise HandshakeError("the server reflected our nonce")
        expected = proof(self.token, b"server", self.role, self.name, self.nonce, server_nonce,
                         self.certificate)
        if not hmac.compare_digest(server_proof, expected):
            raise HandshakeError("the server could not prove it holds the data-plane token")
        return proof(self.token, b"client", self.role, self.name, self.nonce, server_nonce,
                     self.certificate)


async def prove_to_server(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *,
                          token: bytes, role: bytes, name: str, certificate: bytes) -> None:
    """The dialling side over asyncio streams; returns once the server accepted us."""
    state = ClientHandshake(token, role, name.encode("utf-8"), certificate)
    writer.write(state.hello())
    challenge = await _read(reader, _CHALLENGE.size)
    writer.write(state.answer(challenge))
    await writer.drain()
    if await _read(reader, len(ACCEPTED)) != ACCEPTED:
        raise HandshakeError("the server did not accept our proof")


# -- the server's side -----------------------------------------------------------------
async def accept_peer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *,
                      token: bytes, certificate: bytes) -> Peer:
    """The orchestrator's side: challenge the peer, prove ourselves, check its proof.

    The caller bounds the time it may take. Raises :class:`HandshakeError`.
    """
    magic, version, role, client_nonce, name_length = _HELLO.unpack(await _read(reader, _HELLO.size))
    if magic != MAGIC or version != VERSION:
        raise HandshakeError("not hive's data-plane protocol (bad magic or version)")
    if role not in ROLES:
        raise HandshakeError(f"unknown role {role!r}")
    if name_length > MAX_NAME_BYTES:
        raise HandshakeError(f"a peer name of {name_length} bytes (the limit is {MAX_NAME_BYTES})")
    name = await _read(reader, name_length)
    try:
        text = name.decode("utf-8")
    except UnicodeDecodeError:
        raise HandshakeError("a peer name that is not UTF-8") from None
    server_nonce = os.urandom(NONCE_BYTES)
    server_proof = proof(token, b"server", role, name, client_nonce, server_nonce, certificate)
    writer.write(_CHALLENGE.pack(MAGIC, VERSION, server_nonce, server_proof))
    await writer.drain()
    client_proof = await _read(reader, PROOF_BYTES)
    expected = proof(token, b"client", role, name, client_nonce, server_nonce, certificate)
    if not hmac.compare_digest(client_proof, expected):
        raise HandshakeError(f"{ROLES[role]} {text!r} could not prove it holds the data-plane token")
    writer.write(ACCEPTED)
    await writer.drain()
    return Peer(role=ROLES[role], name=text)


async def _read(reader: asyncio.StreamReader, size: int) -> bytes:
    try:
        return await reader.readexactly(size)
    except asyncio.IncompleteReadError:
        raise HandshakeError("the peer closed the connection during the handshake") from None


__all__ = ["ACCEPTED", "ROLE_CLIENT", "ROLE_HOST", "TLS_PREAMBLE", "ClientHandshake", "HandshakeError", "Peer", "accept_peer",
           "proof", "prove_to_server"]
