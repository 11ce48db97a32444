"""What a host or a driver is told about the orchestrator's data plane, through Ray.

An :class:`Endpoint` travels inside an authenticated Ray call (a host's
``activate``, a driver's ``client_endpoint``), never over the data plane
itself: the token and the certificate pin are only as exposed as Ray's own
control traffic.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where to dial, how to prove ourselves, and which server certificate to accept."""

    host: str
    port: int
    token: bytes = field(repr=False)  # the shared secret: proven, never sent
    tls: str = "off"  # "off" | "pinned" (the fingerprint below) | "ray" (Ray's CA)
    fingerprint: str = ""  # hex SHA-256 of the orchestrator's certificate when tls == "pinned"

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def describe(self) -> dict[str, Any]:
        """What a status page may show (never the token)."""
        return {"address": self.address, "tls": self.tls != "off", "tls_mode": self.tls}


__all__ = ["Endpoint"]
