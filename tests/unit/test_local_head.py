"""The local head and Ray access, without Ray: the token, the loopback switch, process
identity, the record, Ray's pointer, and stopping a process tree (real processes, not Ray
ones)."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time
import types

import psutil
import pytest

from hive_ray._errors import ConfigurationError
from hive_ray._local_head import (
    CLUSTER_FILE,
    HeadRecord,
    StopReport,
    describe_process,
    head_command,
    head_processes,
    pointer_is_ours,
    remove_pointer,
    running_head,
    same_process,
    stop_head,
)
from hive_ray._ray_access import address_host, ensure_ray_token, is_loopback, prepare_driver


# ---------------------------------------------------------------------- token
def test_a_fresh_home_gets_a_token_readable_by_its_owner_only(tmp_path):
    source = ensure_ray_token({}, home=tmp_path)
    path = tmp_path / ".ray" / "auth_token"
    assert source is not None and source.path == path and source.created
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    token = path.read_text()
    assert len(token) == 64 and int(token, 16) >= 0  # Ray's format: 256 bits in hex
    again = ensure_ray_token({}, home=tmp_path)
    assert again is not None and not again.created and path.read_text() == token
    assert "created in" in source.describe() and "created" not in again.describe()


def test_a_token_from_the_environment_is_used_and_nothing_is_created(tmp_path):
    assert ensure_ray_token({"RAY_AUTH_TOKEN": "abc"}, home=tmp_path).path is None
    named = tmp_path / "token"
    named.write_text("abc")
    assert ensure_ray_token({"RAY_AUTH_TOKEN_PATH": str(named)}, home=tmp_path).path == named
    assert ensure_ray_token({"RAY_AUTH_MODE": "disabled"}, home=tmp_path) is None
    assert not (tmp_path / ".ray").exists()


def test_a_missing_or_empty_token_file_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigurationError, match="RAY_AUTH_TOKEN_PATH names .*missing or empty"):
        ensure_ray_token({"RAY_AUTH_TOKEN_PATH": str(tmp_path / "nope")}, home=tmp_path)
    (tmp_path / ".ray").mkdir()
    (tmp_path / ".ray" / "auth_token").write_text("")
    with pytest.raises(ConfigurationError, match="auth_token is empty: delete it"):
        ensure_ray_token({}, home=tmp_path)


# ---------------------------------------------------------------------- loopback
@pytest.mark.parametrize(("address", "host", "loopback"), [
    ("127.0.0.1:6379", "127.0.0.1", True), ("localhost:1", "localhost", True), ("[::1]:6379", "::1", True),
    ("10.0.0.5:6379", "10.0.0.5", False), ("auto", "auto", False), ("ray://h:10001", "h", False),
])
def test_loopback_addresses(address, host, loopback):
    assert address_host(address) == host
    assert is_loopback(address_host(address)) is loopback


def test_prepare_driver_tells_ray_about_a_loopback_head_only(monkeypatch):
    constants = types.ModuleType("ray._private.ray_constants")
    constants.ENABLE_RAY_CLUSTER = True
    monkeypatch.setitem(sys.modules, "ray._private.ray_constants", constants)
    monkeypatch.delenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", raising=False)
    prepare_driver("10.0.0.5:6379")
    assert constants.ENABLE_RAY_CLUSTER and "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER" not in os.environ
    prepare_driver("127.0.0.1:6379")
    assert not constants.ENABLE_RAY_CLUSTER and os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] == "0"


def test_the_head_command_fixes_every_port_it_would_otherwise_wait_for():
    ports = {"gcs": 1, "ray_client": 2, "dashboard_agent": 3, "dashboard_agent_grpc": 4,
             "runtime_env_agent": 5, "metrics_export": 6}
    command = head_command("127.0.0.1", ports)
    assert command[1:4] == ["start", "--head", "--block"]
    for flag, port in (("--port", 1), ("--ray-client-server-port", 2), ("--dashboard-agent-listen-port", 3),
                       ("--dashboard-agent-grpc-port", 4), ("--runtime-env-agent-port", 5),
                       ("--metrics-export-port", 6)):
        assert f"{flag}={port}" in command
    assert "--node-ip-address=127.0.0.1" in command and "--include-dashboard=false" in command


# ---------------------------------------------------------------------- identity
def test_a_process_is_proven_by_pid_start_time_and_command_line():
    me = describe_process(os.getpid())
    assert me is not None and me["cmdline"] == psutil.Process().cmdline()
    assert same_process(me, describe_process(os.getpid()))
    assert not same_process(me, None)
    assert not same_process(me, {**me, "create_time": me["create_time"] + 5})  # a recycled pid
    assert not same_process(me, {**me, "cmdline": ["something", "else"]})
    assert not same_process(me, {**me, "pid": me["pid"] + 1})
    assert not same_process({"pid": me["pid"]}, me)  # an old record without proof proves nothing


def test_a_finished_process_is_not_described():
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert describe_process(child.pid) is None


def _record_of(pid: int, tmp_path, **changes) -> HeadRecord:
    observed = describe_process(pid)
    assert observed is not None
    fields = {"address": "127.0.0.1:1", "pid": pid, "create_time": observed["create_time"],
              "cmdline": observed["cmdline"], "log": str(tmp_path / "log"), "started_at": time.time()}
    return HeadRecord(**{**fields, **changes})


def test_the_record_round_trips_privately_and_proves_its_process(tmp_path):
    record = _record_of(os.getpid(), tmp_path, ports={"gcs": 1}, api={"http": 2, "grpc": 3})
    path = record.save(tmp_path)
    assert path.name == CLUSTER_FILE and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert HeadRecord.load(tmp_path) == record
    assert running_head(tmp_path) == record
    _record_of(os.getpid(), tmp_path, create_time=1.0).save(tmp_path)
    assert running_head(tmp_path) is None  # same pid, another start time: not ours


@pytest.mark.parametrize("content", ["", "not json", '{"address": "127.0.0.1:1", "pid": 1}'])
def test_an_unreadable_or_old_record_is_none(tmp_path, content):
    (tmp_path / CLUSTER_FILE).write_text(content)
    assert HeadRecord.load(tmp_path) is None and running_head(tmp_path) is None


# ---------------------------------------------------------------------- Ray's pointer
def test_the_pointer_is_removed_only_while_it_names_our_cluster(tmp_path):
    pointer = tmp_path / "ray_current_cluster"
    record = _record_of(os.getpid(), tmp_path, pointer_file=str(pointer), pointer="127.0.0.1:1")
    assert pointer_is_ours("127.0.0.1:1", "127.0.0.1:1")
    assert not pointer_is_ours("127.0.0.1:2", "127.0.0.1:1")
    assert not pointer_is_ours(None, "127.0.0.1:1") and not pointer_is_ours("127.0.0.1:1", None)
    pointer.write_text("10.0.0.5:6379")  # another `ray start` since
    assert not remove_pointer(record) and pointer.read_text() == "10.0.0.5:6379"
    pointer.write_text("127.0.0.1:1\n")
    assert remove_pointer(record) and not pointer.exists()
    assert not remove_pointer(record)  # already gone
    unrecorded = _record_of(os.getpid(), tmp_path, pointer_file=str(pointer), pointer=None)
    pointer.write_text("127.0.0.1:1")
    assert not remove_pointer(unrecorded) and pointer.exists()


# ---------------------------------------------------------------------- stopping
def _tree(tmp_path) -> subprocess.Popen[bytes]:
    """A stand-in head: a session leader with children, one of which ignores SIGTERM and
    one that is orphaned (reparented) when the leader exits."""
    script = ("trap 'exit 0' TERM; "
              "(trap '' TERM; exec sleep 300) & "
              "sleep 300 & "
              "wait")
    child = subprocess.Popen(["bash", "-c", script], start_new_session=True)
    deadline = time.monotonic() + 10
    while len(psutil.Process(child.pid).children()) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    return child


def test_stop_head_ends_the_whole_tree_and_reaps_its_child(tmp_path):
    child = _tree(tmp_path)
    members = [psutil.Process(child.pid), *psutil.Process(child.pid).children(recursive=True)]
    record = _record_of(child.pid, tmp_path)
    report = stop_head(record, child, grace_seconds=1.0)
    assert report.stopped and report.processes == 3 and report.killed >= 1  # the one ignoring SIGTERM
    assert child.returncode is not None  # reaped: no zombie
    assert not [p.pid for p in members if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]


def test_stop_head_leaves_a_process_it_cannot_prove_alone(tmp_path):
    child = _tree(tmp_path)
    try:
        impostor = _record_of(child.pid, tmp_path, create_time=1.0)  # the pid, not the process
        report = stop_head(impostor, None, grace_seconds=0.5)
        assert not report.stopped and "another process" in report.reason
        assert child.poll() is None
    finally:
        os.killpg(child.pid, signal.SIGKILL)
        child.wait()


def test_what_a_dead_head_left_behind_is_stopped_when_it_was_seen_before(tmp_path):
    child = _tree(tmp_path)
    record = _record_of(child.pid, tmp_path)
    seen = head_processes(record)
    assert [p.pid for p in seen][0] == child.pid and len(seen) == 3
    os.kill(child.pid, signal.SIGKILL)  # the head dies; its children are orphaned
    child.wait()
    assert head_processes(record) == []
    report = stop_head(record, None, grace_seconds=0.5, known=seen[:2])
    # What was seen, and what is still in the head's session (started after the last look):
    # nothing holds the head's pid, so its session is still its own.
    assert report.stopped and report.processes == 2 and report.reason == "it had exited"
    assert not [p.pid for p in seen if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert stop_head(record, None, grace_seconds=0.5) == StopReport(False, reason="it is not running")


def test_gcs_answers_tells_a_listening_port_from_a_closed_one() -> None:
    import socket

    from hive_ray._local_head import gcs_answers

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        address = f"127.0.0.1:{listener.getsockname()[1]}"
        assert gcs_answers(address)
    assert not gcs_answers(address)  # closed now: a head being stopped
    assert not gcs_answers("not an address")


def test_a_stuck_lookup_is_bounded_and_never_joined_by_another() -> None:
    import threading

    from hive_ray._cli_up import _bounded

    release = threading.Event()
    try:
        assert isinstance(_bounded(release.wait, 30, timeout=0.05), TimeoutError)
        assert isinstance(_bounded(lambda: "second", timeout=0.05), TimeoutError)  # no second thread
    finally:
        release.set()
    for _ in range(100):
        answer = _bounded(lambda: "answer", timeout=1.0)
        if answer == "answer":
            break
        threading.Event().wait(0.01)  # the first lookup is still finishing
    assert answer == "answer"
    assert isinstance(_bounded(lambda: 1 / 0, timeout=1.0), ZeroDivisionError)
