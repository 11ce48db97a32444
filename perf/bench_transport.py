"""The data plane's building blocks and its TLS cost, measured side by side in one run.

Every server runs in its own process (as the orchestrator does), the client in
this one, on loopback. Each transport echoes what it receives.

- ``rtt_p50_us@<transport>`` / ``rtt_p99_us@<transport>``: sequential round trips
  of a 200-byte message (a small task's size).
- ``pipelined_msgs_per_s@<transport>``: 1 KiB messages with 64 in flight (a busy
  pool's batches).
- ``bulk_mb_per_s@<transport>``: 1 MiB messages with 4 in flight (large payloads).

Each figure is the best of several interleaved passes (``passes`` in each row).

Transports: ``asyncio`` (stdlib asyncio streams, 4-byte length prefix),
``asyncio_tls`` (the same over TLS 1.3), ``grpc`` and ``grpc_tls`` (a grpc.aio
bidirectional stream with raw-bytes serializers), and the data plane itself,
``hive_channel`` and ``hive_channel_tls`` (hive's ChannelClient calling a
ChannelServer: framing, pickling, the reader thread and, for TLS, the pinned
ephemeral certificate). The ``*_tls`` rows carry the plain row as baseline, so
their ratio is TLS's cost.

    python perf/run.py transport [--quick] --json transport.json
"""

from __future__ import annotations

import asyncio
import os
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
_LENGTH = struct.Struct("!I")
#: As the data plane does (see _frames.STREAM_LIMIT): the default 64 KiB makes big reads crawl.
_STREAM_LIMIT = 1024 * 1024


# -- servers (each in its own process) ------------------------------------------------
def _certificate(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate with a SAN, so that grpc's name check can be pointed at it."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "hive-data-plane")])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=5))
                   .not_valid_after(now + datetime.timedelta(days=1))
                   .add_extension(x509.SubjectAlternativeName([x509.DNSName("hive-data-plane")]), critical=False)
                   .sign(key, hashes.SHA256()))
    key_path, cert_path = directory / "key.pem", directory / "cert.pem"
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    return key_path, cert_path


async def _serve_asyncio(tls: bool, directory: Path) -> None:
    import ssl

    context = None
    if tls:
        key_path, cert_path = _certificate(directory)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_3
        context.load_cert_chain(cert_path, key_path)

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                header = await reader.readexactly(_LENGTH.size)
                body = await reader.readexactly(_LENGTH.unpack(header)[0])
                writer.write(header + body)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0, ssl=context, limit=_STREAM_LIMIT)
    print(server.sockets[0].getsockname()[1], flush=True)
    await server.serve_forever()


async def _serve_grpc(tls: bool, directory: Path) -> None:
    import grpc

    async def echo(requests: Any, context: Any) -> Any:
        async for message in requests:
            yield message

    handler = grpc.method_handlers_generic_handler(
        "bench.Echo", {"Stream": grpc.stream_stream_rpc_method_handler(echo)})
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", 64 << 20),
                                      ("grpc.max_send_message_length", 64 << 20)])
    server.add_generic_rpc_handlers((handler,))
    if tls:
        key_path, cert_path = _certificate(directory)
        credentials = grpc.ssl_server_credentials([(key_path.read_bytes(), cert_path.read_bytes())])
        port = server.add_secure_port("127.0.0.1:0", credentials)
    else:
        port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(port, flush=True)
    await server.wait_for_termination()


async def _serve_hive(tls: bool) -> None:
    from hive_ray._runtime._data_plane import DataPlane
    from hive_ray._settings import Settings

    async def echo(method: str, args: tuple[Any, ...]) -> Any:
        return args[0]

    plane = await DataPlane.start(Settings(data_plane_tls=tls), node_id="head", node_address="127.0.0.1",
                                  call_handler=echo, environ={})
    assert plane is not None
    endpoint = await plane.endpoint_for("head")
    print(endpoint.port, endpoint.token.hex(), endpoint.tls, endpoint.fingerprint or "-", flush=True)
    await asyncio.Event().wait()


def _serve(kind: str, directory: str) -> None:
    tls = kind.endswith("_tls")
    base = kind.removesuffix("_tls")
    if base == "asyncio":
        asyncio.run(_serve_asyncio(tls, Path(directory)))
    elif base == "grpc":
        asyncio.run(_serve_grpc(tls, Path(directory)))
    else:
        asyncio.run(_serve_hive(tls))


def _start(kind: str, directory: Path) -> tuple[subprocess.Popen[str], list[str]]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    process = subprocess.Popen([sys.executable, __file__, "serve", kind, str(directory)],
                               stdout=subprocess.PIPE, text=True, env=env)
    assert process.stdout is not None
    return process, process.stdout.readline().split()


# -- clients ---------------------------------------------------------------------------
class _AsyncioClient:
    def __init__(self, port: int, tls: bool) -> None:
        self.port, self.tls = port, tls

    async def __aenter__(self) -> _AsyncioClient:
        import ssl

        context = None
        if self.tls:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port, ssl=context,
                                                                 limit=_STREAM_LIMIT)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.writer.close()

    async def send(self, message: bytes) -> None:
        self.writer.write(_LENGTH.pack(len(message)) + message)
        await self.writer.drain()

    async def receive(self) -> bytes:
        header = await self.reader.readexactly(_LENGTH.size)
        return await self.reader.readexactly(_LENGTH.unpack(header)[0])


class _GrpcClient:
    def __init__(self, port: int, tls: bool, directory: Path) -> None:
        self.port, self.tls, self.directory = port, tls, directory

    async def __aenter__(self) -> _GrpcClient:
        import grpc

        options = [("grpc.max_receive_message_length", 64 << 20), ("grpc.max_send_message_length", 64 << 20)]
        if self.tls:
            credentials = grpc.ssl_channel_credentials((self.directory / "cert.pem").read_bytes())
            options.append(("grpc.ssl_target_name_override", "hive-data-plane"))
            self.channel = grpc.aio.secure_channel(f"127.0.0.1:{self.port}", credentials, options=options)
        else:
            self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{self.port}", options=options)
        self.call = self.channel.stream_stream("/bench.Echo/Stream")()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.call.done_writing()
        await self.channel.close()

    async def send(self, message: bytes) -> None:
        await self.call.write(message)

    async def receive(self) -> bytes:
        return await self.call.read()


async def _measure_stream(client: Any, rounds: int, pipelined: int, bulk: int) -> dict[str, float]:
    from _measure import percentile

    async with client:
        small = os.urandom(200)
        for _ in range(50):  # warm up (and finish TLS)
            await client.send(small)
            await client.receive()
        samples = []
        for _ in range(rounds):
            started = time.perf_counter()
            await client.send(small)
            await client.receive()
            samples.append(time.perf_counter() - started)
        rate = await _pipelined(client, os.urandom(1024), pipelined, window=64)
        bulk_rate = await _pipelined(client, os.urandom(1 << 20), bulk, window=4)
    return {"p50": percentile(samples, 0.5), "p99": percentile(samples, 0.99),
            "pipelined": rate, "bulk_mb": bulk_rate * 1.0}


async def _pipelined(client: Any, message: bytes, count: int, window: int) -> float:
    slots = asyncio.Semaphore(window)

    async def write_all() -> None:
        for _ in range(count):
            await slots.acquire()
            await client.send(message)

    started = time.perf_counter()
    writer = asyncio.ensure_future(write_all())
    for _ in range(count):
        await client.receive()
        slots.release()
    await writer
    return count / (time.perf_counter() - started)


def _measure_hive(fields: list[str], rounds: int, pipelined: int, bulk: int) -> dict[str, float]:
    from _measure import percentile

    from hive_ray._runtime._channel_client import ChannelClient
    from hive_ray._runtime._endpoint import Endpoint

    port, token, tls, fingerprint = fields
    client = ChannelClient(Endpoint("127.0.0.1", int(port), bytes.fromhex(token), tls,
                                    "" if fingerprint == "-" else fingerprint), name="bench")
    try:
        small = os.urandom(200)
        for _ in range(50):
            client.call("echo", small)
        samples = []
        for _ in range(rounds):
            started = time.perf_counter()
            client.call("echo", small)
            samples.append(time.perf_counter() - started)

        def flood(message: bytes, count: int, window: int) -> float:
            slots = threading.Semaphore(window)
            started = time.perf_counter()
            futures = []
            for _ in range(count):
                slots.acquire()
                future = client.call_async("echo", message)
                future.add_done_callback(lambda _: slots.release())
                futures.append(future)
            for future in futures:
                future.result(60)
            return count / (time.perf_counter() - started)

        rate = flood(os.urandom(1024), pipelined, 64)
        bulk_rate = flood(os.urandom(1 << 20), bulk, 4)
    finally:
        client.close()
    return {"p50": percentile(samples, 0.5), "p99": percentile(samples, 0.99), "pipelined": rate,
            "bulk_mb": bulk_rate}


KINDS = ("asyncio", "asyncio_tls", "grpc", "grpc_tls", "hive_channel", "hive_channel_tls")


def _measure_once(kind: str, rounds: int, pipelined: int, bulk: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="hive-bench-") as scratch:
        directory = Path(scratch)
        process, fields = _start(kind, directory)
        try:
            if kind.startswith("hive"):
                return _measure_hive(fields, rounds, pipelined, bulk)
            port, tls = int(fields[0]), kind.endswith("_tls")
            client = _GrpcClient(port, tls, directory) if kind.startswith("grpc") else _AsyncioClient(port, tls)
            return asyncio.run(_measure_stream(client, rounds, pipelined, bulk))
        finally:
            process.kill()
            process.wait()


def run(quick: bool = False) -> list[dict[str, Any]]:
    """Every transport in each of several passes, interleaved; the best pass of each counts.

    On a shared machine, load from elsewhere only ever slows a pass down, so the best
    pass is the closest estimate of what the transport itself costs.
    """
    from _measure import row

    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))  # this checkout's hive_ray, as the servers use
    passes, rounds, pipelined, bulk = (2, 1000, 4000, 64) if quick else (3, 3000, 10000, 128)
    samples: dict[str, list[dict[str, float]]] = {kind: [] for kind in KINDS}
    for _ in range(passes):
        for kind in KINDS:
            samples[kind].append(_measure_once(kind, rounds, pipelined, bulk))
    best = {kind: {"p50": min(s["p50"] for s in runs), "p99": min(s["p99"] for s in runs),
                   "pipelined": max(s["pipelined"] for s in runs), "bulk_mb": max(s["bulk_mb"] for s in runs)}
            for kind, runs in samples.items()}
    rows = []
    metrics = (("rtt_p50_us", "p50", "us", 1e6), ("rtt_p99_us", "p99", "us", 1e6),
               ("pipelined_msgs_per_s", "pipelined", "msg/s", 1.0), ("bulk_mb_per_s", "bulk_mb", "MiB/s", 1.0))
    for kind, figures in best.items():
        base = kind.removesuffix("_tls")
        plain = best[base] if kind != base else None
        for metric, key, unit, scale in metrics:
            rows.append(row(f"{metric}@{kind}", figures[key] * scale, unit,
                            f"{base} (no TLS)" if plain else None,
                            None if plain is None else plain[key] * scale, passes=passes))
    return rows


if __name__ == "__main__":
    if len(sys.argv) >= 4 and sys.argv[1] == "serve":
        _serve(sys.argv[2], sys.argv[3])
    else:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        sys.path.insert(0, str(ROOT))
        import json

        print(json.dumps(run(quick="--quick" in sys.argv), indent=2))
