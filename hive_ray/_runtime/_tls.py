"""TLS for the data plane: Ray's certificates when Ray uses TLS, else a pinned ephemeral one.

Two modes, chosen by the orchestrator and handed to every peer inside its
:class:`~hive_ray._runtime._endpoint.Endpoint` (through a Ray call, which Ray
itself authenticates):

``ray``
    Ray's TLS is on (``RAY_USE_TLS=1`` with ``RAY_TLS_SERVER_CERT``,
    ``RAY_TLS_SERVER_KEY`` and ``RAY_TLS_CA_CERT``, set on every node). The
    orchestrator serves Ray's certificate and asks every peer for one signed
    by Ray's CA, exactly as Ray's own gRPC channels do.
``pinned``
    No Ray certificates: the orchestrator makes a self-signed certificate (a
    fresh P-256 key, in memory for its lifetime) and each peer accepts exactly
    that certificate, by the SHA-256 fingerprint it got with the address. No
    CA to run or rotate, nothing on disk, and a man in the middle is refused
    because its certificate has another fingerprint.

Host names are not checked in either mode (nodes come and go by IP address);
the certificate's fingerprint is bound into the challenge-response instead
(see :mod:`hive_ray._runtime._handshake`).
"""

from __future__ import annotations

import hashlib
import os
import ssl
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from hive_ray._errors import ConfigurationError
from hive_ray._runtime._handshake import HandshakeError

_TRUE = {"1", "true", "yes", "on"}


@dataclass(frozen=True, slots=True)
class RayTlsFiles:
    """Where Ray's TLS certificate, key and CA live on this node."""

    certificate: str
    key: str
    ca: str

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> RayTlsFiles | None:
        """Ray's own TLS configuration (Ray reads the same variables); None when it is off.

        Raises:
            ConfigurationError: ``RAY_USE_TLS`` is on but a certificate variable is missing.
        """
        environ = os.environ if environ is None else environ
        if environ.get("RAY_USE_TLS", "0").strip().lower() not in _TRUE:
            return None
        names = ("RAY_TLS_SERVER_CERT", "RAY_TLS_SERVER_KEY", "RAY_TLS_CA_CERT")
        missing = [name for name in names if not environ.get(name)]
        if missing:
            raise ConfigurationError(
                f"RAY_USE_TLS is on but {', '.join(missing)} is not set; set all of "
                f"{', '.join(names)} on every node, as Ray itself requires"
            )
        return cls(*(environ[name] for name in names))


def fingerprint(der: bytes) -> bytes:
    """SHA-256 of a certificate in DER form (what peers pin and the handshake binds)."""
    return hashlib.sha256(der).digest()


@dataclass(frozen=True, slots=True)
class ServerTls:
    """The orchestrator's TLS: its context, and the fingerprint of the certificate it serves."""

    context: ssl.SSLContext
    fingerprint: bytes
    mode: str  # "ray" | "pinned"

    @classmethod
    def from_ray(cls, files: RayTlsFiles) -> ServerTls:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(files.certificate, files.key)
        context.load_verify_locations(files.ca)
        context.verify_mode = ssl.CERT_REQUIRED  # mutual TLS, as Ray does
        return cls(context=context, fingerprint=fingerprint(_leaf_der(Path(files.certificate).read_text())),
                   mode="ray")

    @classmethod
    def ephemeral(cls) -> ServerTls:
        """A fresh self-signed certificate; the key never leaves this process's memory
        except for the instant the ssl module needs it as a file (mode 0600, then removed)."""
        key_pem, cert_pem = _self_signed()
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_3  # both ends are ours
        with tempfile.TemporaryDirectory(prefix="hive-tls-") as directory:
            key_path = Path(directory) / "key.pem"
            key_path.touch(mode=0o600)
            key_path.write_bytes(key_pem)
            cert_path = Path(directory) / "cert.pem"
            cert_path.write_bytes(cert_pem)
            context.load_cert_chain(str(cert_path), str(key_path))
        der = ssl.PEM_cert_to_DER_cert(cert_pem.decode("ascii"))
        return cls(context=context, fingerprint=fingerprint(der), mode="pinned")


def _leaf_der(pem: str) -> bytes:
    """The first certificate of a PEM file (the one served; a chain may follow it)."""
    footer = "-----END CERTIFICATE-----"
    if footer not in pem:
        raise ConfigurationError("Ray's TLS certificate file holds no PEM certificate")
    first = pem[pem.index("-----BEGIN CERTIFICATE-----"):pem.index(footer) + len(footer)]
    return ssl.PEM_cert_to_DER_cert(first)


def _self_signed() -> tuple[bytes, bytes]:
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "hive-ray data plane")])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        # Peers pin the fingerprint and never check dates; a long validity keeps an
        # orchestrator that runs for years from tripping a clock check somewhere.
        .not_valid_after(now + datetime.timedelta(days=3650))
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return key_pem, certificate.public_bytes(serialization.Encoding.PEM)


def client_context(mode: str, environ: Mapping[str, str] | None = None) -> ssl.SSLContext:
    """The dialling side's context for ``mode`` ("pinned" or "ray")."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False  # nodes are addressed by IP; the fingerprint is checked instead
    if mode == "pinned":
        context.minimum_version = ssl.TLSVersion.TLSv1_3
        context.verify_mode = ssl.CERT_NONE  # checked below against the pinned fingerprint
        return context
    if mode == "ray":
        files = RayTlsFiles.from_environment(environ)
        if files is None:
            raise ConfigurationError(
                "the orchestrator's data plane uses Ray's TLS certificates, but RAY_USE_TLS is "
                "not set here; run this process with Ray's TLS variables like the rest of the cluster"
            )
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(files.ca)
        context.load_cert_chain(files.certificate, files.key)
        return context
    raise ValueError(f"unknown data-plane TLS mode {mode!r}")


def verify_server(ssl_object: ssl.SSLObject | ssl.SSLSocket | None, mode: str, pinned: str) -> bytes:
    """The fingerprint of the server's certificate, checked against the pin in ``pinned`` mode.

    Raises:
        HandshakeError: no certificate, or not the pinned one.
    """
    der = None if ssl_object is None else ssl_object.getpeercert(binary_form=True)
    if not der:
        raise HandshakeError("the server presented no TLS certificate")
    seen = fingerprint(der)
    if mode == "pinned" and seen.hex() != pinned:
        raise HandshakeError(
            f"the server's TLS certificate (sha256 {seen.hex()[:16]}...) is not the orchestrator's "
            f"(sha256 {pinned[:16]}...): refusing a possible man in the middle"
        )
    return seen


__all__ = ["RayTlsFiles", "ServerTls", "client_context", "fingerprint", "verify_server"]
