"""Hosts on every node of a multi-node cluster reach the data plane directly, over TLS with
mutual authentication, including a node that joined after the orchestrator started."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]  # this checkout's hive_ray, for the scenario and its workers


def test_hosts_on_every_node_connect_directly_with_tls_and_mutual_auth():
    script = Path(__file__).with_name("data_plane_scenario.py")
    # A private Ray temp directory: the cluster's address is not written where other Ray
    # sessions on this machine would find it (short: Ray's socket paths must fit 107 bytes).
    scratch = tempfile.mkdtemp(prefix="hive-dp-", dir="/tmp")
    try:
        done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=420,
                              env=dict(os.environ, RAY_TMPDIR=scratch, PYTHONPATH=str(ROOT)))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert sorted(report["nodes"].values()) == ["127.0.0.2", "127.0.0.3", "127.0.0.4"]
    hosts = {host["node_address"]: host for host in report["hosts"]}
    assert sorted(hosts) == ["127.0.0.2", "127.0.0.3", "127.0.0.4"]  # one host per node
    assert report["late_node"] in {host["node_id"] for host in report["hosts"]}
    for host in report["hosts"]:
        assert host["data_plane"]["transport"] == "stream", host  # direct, not the Ray fallback
        assert host["data_plane"]["authenticated"] is True
        assert host["data_plane"]["dialled"] == host["data_plane"]["address"]
    loopback = next(listener for listener in report["data_plane"]["listeners"] if not listener["tls"])
    node_listener = next(listener for listener in report["data_plane"]["listeners"] if listener["tls"])
    # The head's host (and the driver, on the head) use loopback; the others the TLS listener
    # on the head's node address, opened when the first of them needed it.
    assert loopback["address"].startswith("127.0.0.1:") and node_listener["address"].startswith("127.0.0.4:")
    assert hosts["127.0.0.4"]["data_plane"]["address"] == loopback["address"]
    assert hosts["127.0.0.4"]["data_plane"]["tls"] is False
    for address in ("127.0.0.2", "127.0.0.3"):
        assert hosts[address]["data_plane"]["address"] == node_listener["address"]
        assert hosts[address]["data_plane"]["tls"] is True
    assert report["driver_channel"]["address"] == loopback["address"]
    assert report["ran_on"] == ["127.0.0.2", "127.0.0.3", "127.0.0.4"]  # tasks ran on every node
    # Mutual: the orchestrator proves itself too, so a peer without the token learns it is
    # refused before sending anything of value, and the orchestrator counts the refusal.
    assert "HandshakeError" in report["forged_token"] and "could not prove" in report["forged_token"]
    assert sum(report["data_plane"]["refused"].values()) == 1
