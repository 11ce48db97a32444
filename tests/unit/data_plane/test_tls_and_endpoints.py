"""TLS on the data plane (pinned ephemeral and Ray's certificates), and who is given which listener."""

from __future__ import annotations

import datetime
import ssl

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from hive_ray._errors import ConfigurationError
from hive_ray._runtime._channel_client import ChannelClient
from hive_ray._runtime._data_plane import DataPlane
from hive_ray._runtime._endpoint import Endpoint
from hive_ray._runtime._frames import ChannelLimits
from hive_ray._runtime._handshake import HandshakeError
from hive_ray._runtime._host_link import connect_host
from hive_ray._runtime._tls import RayTlsFiles, ServerTls
from hive_ray._settings import Settings
from tests.unit.data_plane.peers import TOKEN, endpoint_of, start_server, wait_until


async def _echo(method, args):
    return (method, args)


async def _run_batch(agent_id, envelopes):
    return envelopes


async def _cancel(agent_id, task_id):
    return True


def _start_plane(loop, environ=None, **settings):
    async def start():
        return await DataPlane.start(Settings(**settings), node_id="head-node", node_address="127.0.0.1",
                                     call_handler=_echo, environ=environ or {})

    return loop.run(start())


def test_peers_on_the_orchestrators_node_get_loopback_and_others_a_tls_listener_opened_on_demand(loop):
    plane = _start_plane(loop)
    assert [listener["tls"] for listener in plane.statistics()["listeners"]] == [False]  # loopback only
    local = loop.run(plane.endpoint_for("head-node"))
    assert (local.host, local.tls) == ("127.0.0.1", "off")
    assert loop.run(plane.endpoint_for(None)) == local  # a peer that does not say where it runs
    assert len(plane.statistics()["listeners"]) == 1
    remote = loop.run(plane.endpoint_for("worker-node"))
    assert remote.tls == "pinned" and len(remote.fingerprint) == 64 and remote.port != local.port
    assert loop.run(plane.endpoint_for("another-worker")) == remote  # one listener for all other nodes
    assert [listener["tls"] for listener in plane.statistics()["listeners"]] == [False, True]
    assert TOKEN.hex() not in repr(remote) and remote.token.hex() not in repr(remote)
    loop.call(plane.close)


def test_hosts_and_drivers_on_other_nodes_connect_over_pinned_tls(loop):
    plane = _start_plane(loop)
    remote = loop.run(plane.endpoint_for("worker-node"))
    link = loop.run(connect_host(remote, "pool/host-1", run_batch=_run_batch, cancel=_cancel))
    channel = loop.run(plane.wait_for("pool/host-1", 5))
    assert loop.run(channel.run_batch("a", [1, 2])) == [1, 2]
    assert plane.status("pool/host-1") == {"transport": "stream", "address": f"127.0.0.1:{remote.port}",
                                           "tls": True, "authenticated": True, "pending_batches": 0}
    assert link.status() == {"transport": "stream", "address": remote.address, "tls": True, "tls_mode": "pinned"}
    client = ChannelClient(remote, name="driver-elsewhere")
    try:
        assert client.tls_version == "TLSv1.3"
        assert client.call("health", timeout=10) == ("health", ())
    finally:
        client.close()
        loop.call(link.close)
        loop.call(plane.close)


def test_a_certificate_other_than_the_pinned_one_is_refused(loop):
    plane = _start_plane(loop)
    remote = loop.run(plane.endpoint_for("worker-node"))
    impostor_pin = Endpoint(remote.host, remote.port, remote.token, "pinned", "ab" * 32)
    with pytest.raises(HandshakeError, match="not the orchestrator's"):
        ChannelClient(impostor_pin)
    with pytest.raises(HandshakeError, match="not the orchestrator's"):
        loop.run(connect_host(impostor_pin, "pool/host-2", run_batch=_run_batch, cancel=_cancel))
    assert plane.channel("pool/host-2") is None
    loop.call(plane.close)


def test_a_plain_peer_on_a_tls_listener_is_refused(loop):
    quick = ChannelLimits(handshake_timeout=0.5)
    server, listener = start_server(loop, handler=_echo, tls=ServerTls.ephemeral(), limits=quick)
    with pytest.raises(OSError):  # refused, or no challenge before its own timeout
        ChannelClient(endpoint_of(listener, tls="off"), limits=quick)
    assert wait_until(lambda: sum(server.refused.values()) == 1)
    assert server.channels == {}


@pytest.mark.parametrize(("setting", "local_tls", "remote_tls"), [(True, "pinned", "pinned"), (False, "off", "off")])
def test_the_tls_setting_overrides_the_default(loop, setting, local_tls, remote_tls):
    plane = _start_plane(loop, data_plane_tls=setting)
    assert loop.run(plane.endpoint_for("head-node")).tls == local_tls
    assert loop.run(plane.endpoint_for("worker-node")).tls == remote_tls
    loop.call(plane.close)


def test_the_data_plane_can_be_turned_off(loop):
    assert _start_plane(loop, data_plane=False) is None


def test_a_wildcard_listener_hands_out_the_node_address(loop):
    plane = _start_plane(loop)
    from hive_ray._runtime._channel import Listener

    endpoint = plane._endpoint(Listener(host="0.0.0.0", port=4321, tls=None))
    assert (endpoint.host, endpoint.port) == ("127.0.0.1", 4321)
    loop.call(plane.close)


# -- Ray's certificates -----------------------------------------------------------------
def _write_certificate(directory, name, issuer_key=None, issuer_name=None, ca=False):
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer_name or subject)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=1)))
    if ca:
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
    certificate = builder.sign(issuer_key or key, hashes.SHA256())
    (directory / f"{name}.key").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    (directory / f"{name}.crt").write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    return key, subject


def _ray_environment(directory, name, ca_name="ca"):
    return {"RAY_USE_TLS": "1", "RAY_TLS_SERVER_CERT": str(directory / f"{name}.crt"),
            "RAY_TLS_SERVER_KEY": str(directory / f"{name}.key"), "RAY_TLS_CA_CERT": str(directory / f"{ca_name}.crt")}


@pytest.fixture
def ray_certificates(tmp_path):
    ca_key, ca_name = _write_certificate(tmp_path, "ca", ca=True)
    _write_certificate(tmp_path, "node", issuer_key=ca_key, issuer_name=ca_name)
    chain = tmp_path / "node.crt"  # served as a chain: the node's certificate, then the CA's
    chain.write_bytes(chain.read_bytes() + (tmp_path / "ca.crt").read_bytes())
    _write_certificate(tmp_path, "stranger")  # self-signed: not from Ray's CA
    return tmp_path


def test_with_rays_tls_every_listener_uses_rays_certificates_both_ways(loop, ray_certificates, monkeypatch):
    environment = _ray_environment(ray_certificates, "node")
    plane = _start_plane(loop, environ=environment)
    local = loop.run(plane.endpoint_for("head-node"))
    assert local.tls == "ray" and local.fingerprint == ""  # Ray's CA decides, not a pin
    for name, value in environment.items():
        monkeypatch.setenv(name, value)  # as on every node of a cluster with Ray's TLS on
    client = ChannelClient(local)
    assert client.call("health", timeout=10) == ("health", ())
    client.close()
    link = loop.run(connect_host(local, "pool/host-3", run_batch=_run_batch, cancel=_cancel))
    assert loop.run(plane.wait_for("pool/host-3", 5)).status()["tls"] is True
    loop.call(link.close)
    # A peer whose certificate Ray's CA did not sign is refused by TLS itself (mutual TLS).
    for name, value in _ray_environment(ray_certificates, "stranger", ca_name="ca").items():
        monkeypatch.setenv(name, value)
    with pytest.raises((ssl.SSLError, ConnectionError)):
        ChannelClient(local).call("health", timeout=10)
    loop.call(plane.close)


def test_rays_tls_settings_are_read_and_incomplete_ones_explained(ray_certificates):
    assert RayTlsFiles.from_environment({}) is None
    assert RayTlsFiles.from_environment({"RAY_USE_TLS": "0"}) is None
    files = RayTlsFiles.from_environment(_ray_environment(ray_certificates, "node"))
    assert files is not None and files.certificate.endswith("node.crt")
    with pytest.raises(ConfigurationError, match="RAY_TLS_SERVER_KEY, RAY_TLS_CA_CERT is not set"):
        RayTlsFiles.from_environment({"RAY_USE_TLS": "1", "RAY_TLS_SERVER_CERT": "x"})


def test_the_old_off_value_of_data_plane_host_is_refused_with_the_new_setting_named():
    with pytest.raises(ValueError, match="replaced by data_plane: false"):
        Settings(data_plane_host="off")


def test_many_threads_share_one_tls_stream_and_closed_clients_never_touch_new_streams(loop):
    """Every byte of a driver's stream is moved by one thread: concurrent callers get their
    own answers, and a closed client's thread cannot read from a later socket that reused
    its number (which once stole the first bytes of the next connection's handshake)."""
    from concurrent.futures import ThreadPoolExecutor

    plane = _start_plane(loop)
    remote = loop.run(plane.endpoint_for("worker-node"))
    client = ChannelClient(remote)

    def calls(worker: int) -> bool:
        return all(client.call("echo", worker, n, timeout=30) == ("echo", (worker, n)) for n in range(40))

    with ThreadPoolExecutor(8) as pool:
        assert all(pool.map(calls, range(8)))
    client.close()
    for round_number in range(15):
        short_lived = ChannelClient(remote)
        assert short_lived.call("health", timeout=10) == ("health", ())
        short_lived.close()
        link = loop.run(connect_host(remote, f"pool/host-{round_number}", run_batch=_run_batch, cancel=_cancel))
        loop.call(link.close)
    assert dict(plane.server.refused) == {}
    loop.call(plane.close)
