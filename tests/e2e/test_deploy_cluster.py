"""The deployment files against real Ray clusters started by the test.

* ``deploy/fake-cluster.yaml`` drives Ray's real autoscaler with the fake
  multi-node provider: agent demand beyond the head adds worker nodes, agents
  and their tasks run there, and idle nodes go away again.
* ``deploy/serve.yaml`` deploys with ``serve deploy`` and answers ``/healthz``.

Each cluster is a ``ray start --head --block`` child process on its own ports,
with its own Ray temp directory (``RAY_TMPDIR``, so that it never becomes the
machine's "current cluster" that a plain ``ray.init()`` elsewhere would join)
and its own token (``RAY_AUTH_MODE=token``). Drivers and CLIs run as
subprocesses: the pytest process may already be connected to the session Ray.
Clean-up kills every process of the head's session (the head is started as a
session leader and Ray's processes, fake worker nodes included, inherit its
session), then checks that nothing referring to the temp directory survived.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pytest
import yaml

pytestmark = [pytest.mark.slow, pytest.mark.cluster]

REPO = Path(__file__).resolve().parents[2]
FAKE_CLUSTER = REPO / "deploy" / "fake-cluster.yaml"
SERVE_CONFIG = REPO / "deploy" / "serve.yaml"
BIN = Path(sys.executable).parent
HEAD_START_TIMEOUT = 90.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def node_ip() -> str:
    """The address Ray picks for this machine (the fake provider's nodes use it too)."""
    from ray._private.services import get_node_ip_address

    return get_node_ip_address()


@dataclass
class RayHead:
    """A ``ray start --head --block`` child process and how to talk to it."""

    process: subprocess.Popen[bytes]
    address: str
    client_env: dict[str, str]
    temp_dir: Path
    log: Path
    ports: dict[str, int] = field(default_factory=dict)

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def run(self, command: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
        """A CLI or driver subprocess attached to this cluster."""
        return subprocess.run(command, env=self.client_env, capture_output=True, text=True,
                              timeout=timeout, cwd=self.temp_dir)

    def run_driver(self, script: str, *args: str, timeout: float) -> list[dict[str, Any]]:
        """Run a Python driver script; returns the JSON objects it printed as ``RESULT {...}``."""
        done = self.run([sys.executable, "-c", script, *args], timeout=timeout)
        results = [json.loads(line[len("RESULT "):]) for line in done.stdout.splitlines()
                   if line.startswith("RESULT ")]
        if done.returncode != 0:
            raise AssertionError(
                f"driver exited with {done.returncode}\n--- stdout\n{done.stdout[-3000:]}\n"
                f"--- stderr\n{done.stderr[-5000:]}\n--- head log\n{self.log_tail()}"
            )
        return results


def _session_members(session_id: int) -> list[psutil.Process]:
    members = []
    for pid in psutil.pids():
        try:
            if os.getsid(pid) == session_id:
                members.append(psutil.Process(pid))
        except (ProcessLookupError, PermissionError, psutil.Error):
            continue
    return members


def _kill_session(session_id: int) -> None:
    """SIGKILL every process of the head's session; repeated, as a raylet may fork meanwhile."""
    for _ in range(3):
        members = _session_members(session_id)
        if not members:
            return
        for member in members:
            with contextlib.suppress(psutil.Error):
                member.send_signal(signal.SIGKILL)
        psutil.wait_procs(members, timeout=10)


def _survivors(temp_dir: Path) -> list[str]:
    """Processes whose command line names our temp dir: there must be none after clean-up."""
    found = []
    for process in psutil.process_iter(["pid", "cmdline"]):
        with contextlib.suppress(psutil.Error, TypeError):
            if str(temp_dir) in " ".join(process.info["cmdline"] or ()):
                found.append(f"{process.info['pid']}: {' '.join(process.info['cmdline'])[:120]}")
    return found


@contextlib.contextmanager
def ray_head(extra_args: list[str], extra_env: dict[str, str] | None = None,
             gcs_port: int | None = None) -> Iterator[RayHead]:
    """Start a Ray head in its own session, temp dir and ports; kill all of it afterwards."""
    # A short path: Ray's Unix socket paths live under it (limit ~107 bytes).
    temp_dir = Path(tempfile.mkdtemp(prefix="hd", dir="/tmp"))
    token = secrets.token_hex(16)
    base_env = {key: value for key, value in os.environ.items() if key != "RAY_ADDRESS"}
    base_env.update({
        "RAY_TMPDIR": str(temp_dir),
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": token,
        "RAY_USAGE_STATS_ENABLED": "0",
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    })
    ports = {"gcs": gcs_port or free_port(), "client": free_port(), "agent": free_port()}
    address = f"{node_ip()}:{ports['gcs']}"
    command = [
        str(BIN / "ray"), "start", "--head", "--block", "--disable-usage-stats",
        f"--port={ports['gcs']}", f"--ray-client-server-port={ports['client']}",
        f"--dashboard-agent-listen-port={ports['agent']}", *extra_args,
    ]
    log = temp_dir / "head.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(command, env={**base_env, **(extra_env or {})}, stdout=sink,
                                   stderr=subprocess.STDOUT, start_new_session=True, cwd=temp_dir)
    head = RayHead(process, address, {**base_env, "RAY_ADDRESS": address}, temp_dir, log, ports)
    try:
        deadline = time.monotonic() + HEAD_START_TIMEOUT
        while "Ray runtime started" not in log.read_text(errors="replace"):
            if process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"ray start --head did not come up:\n{head.log_tail()}")
            time.sleep(0.25)
        yield head
    finally:
        _kill_session(process.pid)
        process.wait(timeout=10)
        leftovers = _survivors(temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)
        assert not leftovers, f"processes of the test cluster survived clean-up: {leftovers}"


# --------------------------------------------------------------------------- autoscaling
AGENTS = 3  # each worker node offers 2 agent slots: 3 agents need 2 worker nodes

AUTOSCALE_DRIVER = r"""
import json, sys, time
import ray
from hive_ray import Hive

def report(**fields):
    print("RESULT " + json.dumps(fields), flush=True)

def alive():
    return {n["NodeID"]: n["Resources"] for n in ray.nodes() if n["Alive"]}

agents, settings = int(sys.argv[1]), json.loads(sys.argv[2])
hive = Hive.connect(settings=settings)        # RAY_ADDRESS names the fake cluster
before = alive()
started = time.monotonic()
pool = hive.spawn("sleep", count=agents, pool="autoscale", resources={"agent_slot": 1})
spawn_seconds = time.monotonic() - started
during = alive()
hive.map(None, [{"seconds": 0.05}] * (2 * agents), pool="autoscale")
agent_nodes = {agent.agent_id: agent.node_id for agent in pool.agents}
task_nodes = [agent_nodes.get(task.agent_id) for task in hive.tasks(pool="autoscale", limit=100)]
report(phase="up", before=before, during=during, agent_nodes=agent_nodes, task_nodes=task_nodes,
       spawn_seconds=spawn_seconds)

hive.stop("autoscale")
started = time.monotonic()
while len(alive()) > 1 and time.monotonic() - started < 90:
    time.sleep(0.5)
report(phase="down", after=alive(), seconds=time.monotonic() - started)
"""

REQUEST_DRIVER = r"""
import json, time
import ray
from ray.autoscaler.sdk import request_resources

def report(**fields):
    print("RESULT " + json.dumps(fields), flush=True)

def workers():
    return [n["NodeID"] for n in ray.nodes() if n["Alive"] and n["Resources"].get("agent_slot")]

def wait(predicate, timeout):
    started = time.monotonic()
    while not predicate() and time.monotonic() - started < timeout:
        time.sleep(0.5)
    return time.monotonic() - started

ray.init(log_to_driver=False)                 # RAY_ADDRESS names the fake cluster
wait(lambda: not workers(), 60)               # the previous test's nodes are gone
before = workers()
request_resources(bundles=[{"agent_slot": 2}])  # capacity for two agents, nothing running yet
up_seconds = wait(workers, 60)
during = workers()
request_resources(bundles=[])                 # withdraw the request
down_seconds = wait(lambda: not workers(), 60)
report(before=before, during=during, after=workers(), up_seconds=up_seconds,
       down_seconds=down_seconds)
"""


@pytest.fixture(scope="module")
def fake_cluster() -> Iterator[RayHead]:
    """deploy/fake-cluster.yaml started with the real autoscaler, on free ports."""
    config = yaml.safe_load(FAKE_CLUSTER.read_text())
    head_resources = dict(config["available_node_types"][config["head_node_type"]]["resources"])
    num_cpus = head_resources.pop("CPU")
    gcs_port = free_port()
    # The one change to the file: new nodes join the GCS on this test's port, not 6379.
    config["provider"]["gcs_address"] = f"{node_ip()}:{gcs_port}"
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as copy:
        yaml.safe_dump(config, copy)
    try:
        with ray_head([
            f"--num-cpus={num_cpus}", f"--resources={json.dumps(head_resources)}",
            "--object-store-memory=100000000", "--include-dashboard=false",
            f"--autoscaling-config={copy.name}",
        ], {"RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1"}, gcs_port=gcs_port) as head:
            yield head
    finally:
        Path(copy.name).unlink(missing_ok=True)


def test_agent_demand_adds_worker_nodes_and_idle_nodes_go_away(fake_cluster: RayHead) -> None:
    config = yaml.safe_load(FAKE_CLUSTER.read_text())
    worker_type = config["available_node_types"]["agents.worker"]
    settings = {"state_dir": str(fake_cluster.temp_dir / "hive-state"), "namespace": "hive-deploy"}

    up, down = fake_cluster.run_driver(AUTOSCALE_DRIVER, str(AGENTS), json.dumps(settings), timeout=150)

    heads = [node for node, resources in up["before"].items() if "node:__internal_head__" in resources]
    assert list(up["before"]) == heads, "the cluster started with more than its head"
    [head] = heads
    workers = {node: resources for node, resources in up["during"].items() if node != head}
    # The autoscaler launched as many nodes as the agents' slots need, no more than allowed.
    slots = worker_type["resources"]["agent_slot"]
    assert len(workers) == -(-AGENTS // slots), up["during"]
    assert len(workers) <= worker_type["max_workers"]
    assert all(r.get("agent_slot") == slots for r in workers.values()), workers
    # Every agent runs on a new worker node, and so did every task.
    assert set(up["agent_nodes"].values()) <= set(workers), (head, up["agent_nodes"])
    assert len(up["task_nodes"]) == 2 * AGENTS
    assert set(up["task_nodes"]) <= set(workers), up["task_nodes"]
    # Demand gone: after idle_timeout_minutes the autoscaler removed the idle nodes.
    assert list(down["after"]) == [head], f"idle nodes not removed after {down['seconds']:.0f} s"


def test_request_resources_reaches_the_autoscaler(fake_cluster: RayHead) -> None:
    [result] = fake_cluster.run_driver(REQUEST_DRIVER, timeout=150)

    assert result["before"] == []
    assert len(result["during"]) == 1, result
    assert result["after"] == [], f"the requested node was not removed ({result['down_seconds']:.0f} s)"


def test_the_cluster_refuses_a_client_without_its_token(fake_cluster: RayHead) -> None:
    """Ray's token authentication is on: a driver that does not present the token is refused."""
    home = fake_cluster.temp_dir / "home"  # no ~/.ray/auth_token to fall back on
    home.mkdir(exist_ok=True)
    env = {key: value for key, value in fake_cluster.client_env.items()
           if key not in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN")}
    probe = "import ray; ray.init(log_to_driver=False); print('CONNECTED', flush=True)"
    client = subprocess.Popen([sys.executable, "-c", probe], env={**env, "HOME": str(home)}, cwd=home,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    # ray.init() retries for about 20 s before it gives up; the GCS's answer comes at once.
    seen = []
    watchdog = threading.Timer(90, client.kill)  # ends the read below if neither line ever comes
    watchdog.start()
    try:
        for line in client.stdout:  # type: ignore[union-attr]
            seen.append(line)
            if "InvalidAuthToken" in line or "CONNECTED" in line:
                break
    finally:
        watchdog.cancel()
        client.kill()
        client.wait(timeout=10)
    output = "".join(seen)
    assert "CONNECTED" not in output
    assert "Unauthenticated: RPC error: InvalidAuthToken" in output, output[-2000:]


# --------------------------------------------------------------------------- serve deploy
def test_serve_yaml_deploys_with_serve_deploy_and_answers_health() -> None:
    if not SERVE_CONFIG.exists():
        pytest.skip("deploy/serve.yaml not written yet")
    import httpx

    config = yaml.safe_load(SERVE_CONFIG.read_text())
    http_port, grpc_port, dashboard_port = free_port(), free_port(), free_port()
    # The file's own ports may be taken on a shared machine; everything else is as shipped.
    config.setdefault("http_options", {}).update(host="127.0.0.1", port=http_port)
    if "grpc_options" in config:
        config["grpc_options"]["port"] = grpc_port
    dashboard = f"http://127.0.0.1:{dashboard_port}"

    with ray_head(["--num-cpus=2", "--include-dashboard=true", "--dashboard-host=127.0.0.1",
                   f"--dashboard-port={dashboard_port}"]) as head:
        copy = head.temp_dir / "serve.yaml"
        copy.write_text(yaml.safe_dump(config))
        deployed = head.run([str(BIN / "serve"), "deploy", str(copy), "--address", dashboard], timeout=120)
        assert deployed.returncode == 0, f"{deployed.stdout}\n{deployed.stderr}\n{head.log_tail()}"

        url = f"http://127.0.0.1:{http_port}/healthz"
        deadline = time.monotonic() + 120
        answer: httpx.Response | None = None
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                answer = httpx.get(url, timeout=5)
                if answer.status_code == 200:
                    break
            time.sleep(1)
        if answer is None or answer.status_code != 200:
            status = head.run([str(BIN / "serve"), "status", "--address", dashboard], timeout=60)
            raise AssertionError(f"{url} answered {answer and answer.status_code}; serve status:\n"
                                 f"{status.stdout}\n{status.stderr}")
        assert answer.json()["status"] == "ok"
        # Readiness goes through to the orchestrator, which the app started on this cluster.
        ready = httpx.get(f"http://127.0.0.1:{http_port}/readyz", timeout=30)
        assert ready.status_code == 200, ready.text
