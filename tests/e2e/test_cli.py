"""The `hive` command line as an operator uses it: up, status, submit, tasks, down."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def hive(*args: str, env: dict[str, str], timeout: float = 240) -> subprocess.CompletedProcess[str]:
    command = [str(Path(sys.executable).with_name("hive")), *args]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=timeout)


def test_up_status_submit_tasks_down(tmp_path):
    http_port, grpc_port = free_port(), free_port()
    env = {**os.environ, "HIVE_STATE_DIR": str(tmp_path / "state"), "HIVE_HTTP_PORT": str(http_port),
           "HIVE_GRPC_PORT": str(grpc_port), "HIVE_JOURNAL_DIR": str(tmp_path / "journal")}
    env.pop("RAY_ADDRESS", None)
    up = hive("up", "--no-block", env=env)
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        assert "pool 'echo': 2 echo agent(s)" in up.stdout
        key_file = tmp_path / "state" / "api_key"
        assert oct(key_file.stat().st_mode & 0o777) == "0o600"
        status = hive("status", env=env)
        assert status.returncode == 0, status.stderr
        assert "echo" in status.stdout and "2/2 agents" in status.stdout
        submitted = hive("submit", "compute", '{"rounds": 100, "seed": "cli"}', env=env)
        assert submitted.returncode == 0, submitted.stderr
        from hive_ray.actors.compute import expected_digest

        assert json.loads(submitted.stdout)["digest"] == expected_digest(100, "cli")
        bad = hive("submit", "echo", "{not json", env=env)
        assert bad.returncode == 1 and "the payload must be JSON" in bad.stderr
        tasks = hive("tasks", "--json", env=env)
        assert any(record["pool"] == "compute" for record in json.loads(tasks.stdout))
        # The API that `hive up` serves answers on loopback with the key it created.
        key = key_file.read_text().strip()
        answer = httpx.get(f"http://127.0.0.1:{http_port}/v1/pools",
                           headers={"Authorization": f"Bearer {key}"}, timeout=30)
        assert answer.status_code == 200 and {p["name"] for p in answer.json()} >= {"echo", "compute"}
        assert httpx.get(f"http://127.0.0.1:{http_port}/v1/pools", timeout=30).status_code == 401
    finally:
        down = hive("down", env=env)
    assert down.returncode == 0, down.stdout + down.stderr
    assert "local Ray head" in down.stdout
    after = hive("status", env=env)
    assert after.returncode == 1 and "no hive cluster is running" in after.stderr
