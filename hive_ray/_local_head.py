"""The local Ray head that ``hive up`` starts, and the proof ``hive down`` needs to stop it.

``hive up`` with no cluster to attach to runs ``ray start --head --block`` as its child, in a
session of its own, and records it in ``<state_dir>/cluster.json``: the address, the process
(pid, start time and command line), the ports it listens on, and Ray's "current cluster"
pointer that ``ray start`` wrote. Everything that later acts on that record proves first that
the process is still the one ``hive up`` started (a pid alone may since name another process):

- :func:`running_head` is what ``Hive.connect()`` and every ``hive`` command attach to;
- :func:`stop_head` signals only that process and the processes it started;
- :func:`remove_pointer` removes Ray's pointer only while it still names this cluster, so that
  afterwards a plain ``ray.init()`` starts a fresh local Ray instead of retrying a dead one.

The head listens on loopback only (``127.0.0.1``) unless ``hive up --node-ip-address`` names
another address (see :mod:`hive_ray._ray_access` for what that asks of drivers).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from hive_ray._errors import HiveConnectionError
from hive_ray._ray_access import LOOPBACK_SWITCH, is_loopback

#: File in the state directory where ``hive up`` records the head it started.
CLUSTER_FILE = "cluster.json"
#: Where ``ray start`` writes, and ``ray.init()`` reads, the address of "the" local cluster.
POINTER_NAME = "ray_current_cluster"
#: The line ``ray start`` logs once the head runs (its own CLI's wording).
STARTED_LINE = b"Ray runtime started"
#: What ``ray start`` says when the raylet gave up waiting for its agents (a busy machine).
SLOW_START_LINE = b"timed out during startup"
#: Seconds ``ray start`` may take (on 2 busy cores it has taken over a minute).
START_TIMEOUT_SECONDS = 120.0
#: Seconds the head gets to stop its processes after SIGTERM, before the rest are killed.
STOP_GRACE_SECONDS = 2.0


# ---------------------------------------------------------------------- process identity
def describe_process(pid: int) -> dict[str, Any] | None:
    """``{"pid", "create_time", "cmdline"}`` of a live process, or None (gone or a zombie)."""
    import psutil

    try:
        process = psutil.Process(pid)
        with process.oneshot():
            if process.status() == psutil.STATUS_ZOMBIE:
                return None
            return {"pid": pid, "create_time": process.create_time(), "cmdline": process.cmdline()}
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


def same_process(recorded: Mapping[str, Any], observed: Mapping[str, Any] | None) -> bool:
    """Whether ``observed`` is the process ``recorded`` describes: same pid, start time and
    command line (a recycled pid has another start time; a pid alone proves nothing)."""
    if observed is None or recorded.get("pid") != observed.get("pid"):
        return False
    recorded_time, observed_time = recorded.get("create_time"), observed.get("create_time")
    if not isinstance(recorded_time, (int, float)) or not isinstance(observed_time, (int, float)):
        return False
    return abs(recorded_time - observed_time) < 0.5 and list(recorded.get("cmdline") or []) == list(
        observed.get("cmdline") or [])


# ---------------------------------------------------------------------- the record
@dataclass(frozen=True)
class HeadRecord:
    """What ``hive up`` knows about the head it started (``cluster.json``)."""

    address: str
    pid: int
    create_time: float
    cmdline: list[str]
    log: str
    started_at: float
    ports: dict[str, int] = field(default_factory=dict)
    pointer_file: str | None = None
    pointer: str | None = None
    api: dict[str, int] | None = None
    #: The foreground ``hive up`` watching this head (pid, create_time, cmdline), if one runs:
    #: ``hive down`` asks it to stop everything, through its connection, instead of doing so
    #: itself beside it.
    watcher: dict[str, Any] | None = None

    @property
    def process(self) -> dict[str, Any]:
        return {"pid": self.pid, "create_time": self.create_time, "cmdline": self.cmdline}

    def watcher_alive(self) -> bool:
        """A foreground ``hive up`` provably still watches this head."""
        return self.watcher is not None and same_process(self.watcher, describe_process(self.watcher["pid"]))

    def alive(self) -> bool:
        """The recorded process still runs (proven, not assumed from the pid)."""
        return same_process(self.process, describe_process(self.pid))

    def save(self, state_dir: Path) -> Path:
        path = Path(state_dir) / CLUSTER_FILE
        temporary = path.with_suffix(".tmp")
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w") as file:
            json.dump(asdict(self), file)
        os.replace(temporary, path)
        return path

    @classmethod
    def load(cls, state_dir: Path) -> HeadRecord | None:
        """The record, or None if there is none or it is not one (an older format included)."""
        try:
            data = json.loads((Path(state_dir) / CLUSTER_FILE).read_text())
            return cls(**data)
        except (OSError, ValueError, TypeError):
            return None


def running_head(state_dir: Path) -> HeadRecord | None:
    """The head ``hive up`` started from this state directory, if it provably still runs."""
    record = HeadRecord.load(state_dir)
    return record if record is not None and record.alive() else None


def forget_head(state_dir: Path) -> None:
    (Path(state_dir) / CLUSTER_FILE).unlink(missing_ok=True)


# ---------------------------------------------------------------------- Ray's pointer
def pointer_file() -> Path:
    """Ray's current-cluster file for this environment (``RAY_TMPDIR`` and ``TMPDIR`` count)."""
    try:
        from ray._common.utils import get_ray_address_file

        return Path(get_ray_address_file(None))
    except (ImportError, AttributeError):  # another Ray layout: its documented default
        base = os.environ.get("RAY_TMPDIR") or os.environ.get("TMPDIR") or "/tmp"
        return Path(base) / "ray" / POINTER_NAME


def read_pointer(path: Path) -> str | None:
    try:
        return path.read_text().strip() or None
    except OSError:
        return None


def pointer_is_ours(current: str | None, recorded: str | None) -> bool:
    """Remove the pointer only if it still names the cluster we stopped (another
    ``ray start`` since then has overwritten it with its own)."""
    return current is not None and recorded is not None and current == recorded


def remove_pointer(record: HeadRecord) -> bool:
    """Remove Ray's pointer if it names ``record``'s cluster; True if removed."""
    if record.pointer_file is None:
        return False
    path = Path(record.pointer_file)
    if not pointer_is_ours(read_pointer(path), record.pointer):
        return False
    path.unlink(missing_ok=True)
    return True


# ---------------------------------------------------------------------- start
#: The ports ``hive up`` chooses for the head, by name (see :func:`head_command`).
PORT_NAMES = ("gcs", "ray_client", "dashboard_agent", "dashboard_agent_grpc", "runtime_env_agent",
              "metrics_export")


def head_command(node_ip: str, ports: Mapping[str, int]) -> list[str]:
    """``ray start --head --block`` on ``node_ip`` with every port given.

    Ray's fixed defaults (6379, 10001, 52365) would collide with a second cluster on the
    machine; and for each agent port left at 0 the raylet waits for the agent to write it to
    a file, at most 15 s, then aborts the whole head (seen on 2 busy cores, where the
    dashboard agent took 16 s to import). A port given up front needs no such wait.
    """
    ray_binary = Path(sys.executable).with_name("ray")
    return [str(ray_binary) if ray_binary.exists() else "ray", "start", "--head", "--block",
            f"--port={ports['gcs']}", f"--node-ip-address={node_ip}", "--include-dashboard=false",
            f"--ray-client-server-port={ports['ray_client']}",
            f"--dashboard-agent-listen-port={ports['dashboard_agent']}",
            f"--dashboard-agent-grpc-port={ports['dashboard_agent_grpc']}",
            f"--runtime-env-agent-port={ports['runtime_env_agent']}",
            f"--metrics-export-port={ports['metrics_export']}"]


def start_head(state_dir: Path, node_ip: str = "127.0.0.1") -> tuple[HeadRecord, subprocess.Popen[bytes]]:
    """Start the head as a child in its own session (a terminal's Ctrl-C reaches ``hive up``
    only, which then stops the head itself) and wait until it runs; record it.

    Raises:
        HiveConnectionError: ``ray start`` failed or did not come up in time; the message
            names its log. ``details["slow"]``: Ray's own agents started too slowly for its
            raylet (a busy machine); another attempt may well succeed.
    """
    log_path = Path(state_dir) / "logs" / "ray-head.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    if log_path.exists():
        os.replace(log_path, log_path.with_suffix(".log.1"))  # keep one previous run
    ports = _free_ports(len(PORT_NAMES))
    command = head_command(node_ip, ports)
    environment = dict(os.environ)
    # On SIGTERM (`kill`, `ray stop`) Ray 2.5x+ first marks the node draining and waits up to
    # 30 s for it to go idle, for Serve replicas to move to other nodes. This head is the
    # cluster's only node unless an admin adds more: there is nowhere to move, only a wait
    # that outlasts every stop bound. An admin's own setting is kept.
    environment.setdefault("RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S", "0")
    if is_loopback(node_ip):
        environment[LOOPBACK_SWITCH] = "0"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   start_new_session=True, env=environment)
    try:
        _wait_started(process, log_path)
    except BaseException:  # failed, timed out or interrupted (Ctrl-C): leave nothing behind
        _kill_session(process)
        raise
    address = f"{node_ip}:{ports['gcs']}"
    observed = describe_process(process.pid) or {"create_time": 0.0, "cmdline": command}
    pointer_path = pointer_file()
    current = read_pointer(pointer_path)
    record = HeadRecord(address=address, pid=process.pid, create_time=observed["create_time"],
                        cmdline=observed["cmdline"], log=str(log_path), started_at=time.time(),
                        ports=ports, pointer_file=str(pointer_path),
                        pointer=current if current == address else None)
    record.save(state_dir)
    return record, process


def _wait_started(process: subprocess.Popen[bytes], log_path: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while STARTED_LINE not in log_path.read_bytes():
        if process.poll() is not None:
            raise HiveConnectionError(
                f"`ray start` exited with code {process.returncode}: {_last_line(log_path)} "
                f"(the whole log: {log_path})", slow=SLOW_START_LINE in log_path.read_bytes())
        if time.monotonic() > deadline:
            raise HiveConnectionError(
                f"the local Ray head did not start in {START_TIMEOUT_SECONDS:.0f} s; see {log_path}")
        time.sleep(0.2)


def _free_ports(count: int) -> dict[str, int]:
    """Distinct free ports, one per name of :data:`PORT_NAMES` (held open together so that
    none is handed out twice)."""
    probes = [socket.socket() for _ in range(count)]
    try:
        for probe in probes:
            probe.bind(("127.0.0.1", 0))
        return {name: int(probe.getsockname()[1]) for name, probe in zip(PORT_NAMES, probes, strict=True)}
    finally:
        for probe in probes:
            probe.close()


def _last_line(path: Path) -> str:
    lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    return lines[-1].strip() if lines else "(no output)"


def _kill_session(process: subprocess.Popen[bytes]) -> None:
    """Kill a head that never came up, and everything in its session: the session is ours
    (``start_new_session``) and its leader our own child, not yet reaped, so its id cannot
    have been reused."""
    import psutil

    members = _session_members(process.pid, exclude=None)
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    for member in members:  # those that left the process group but not the session
        try:
            member.kill()
        except psutil.NoSuchProcess:
            pass
    process.wait()
    psutil.wait_procs(members, timeout=3)


# ---------------------------------------------------------------------- stop
@dataclass(frozen=True, slots=True)
class StopReport:
    stopped: bool
    processes: int = 0
    killed: int = 0
    reason: str = ""


def gcs_answers(address: str, timeout: float = 0.5) -> bool:
    """The head's GCS accepts a connection at ``address`` (``host:port``). A head being
    stopped (``ray start --block`` ends its processes one by one) closes its GCS long before
    its own process exits; a driver left talking to a dead GCS is aborted by Ray a minute
    later, so whoever watches the head must notice this first."""
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            return True
    except (OSError, ValueError):
        return False


def head_processes(record: HeadRecord, session: bool = True) -> list[Any]:
    """The head and every process it started (its descendants, and with ``session`` what is
    left in its session: a scan of every process on the machine), as :class:`psutil.Process`
    objects; empty unless the head provably runs.

    The objects remember each process's start time, so signalling them later never reaches
    a process that has since taken over one of their pids.
    """
    import psutil

    if not record.alive():
        return []
    try:
        head = psutil.Process(record.pid)
        tree = [head, *head.children(recursive=True)]
        if session:
            tree += _session_members(record.pid, exclude=head)
    except psutil.NoSuchProcess:
        return []
    return list({process.pid: process for process in tree}.values())


def stop_head(record: HeadRecord, child: subprocess.Popen[bytes] | None = None,
              grace_seconds: float = STOP_GRACE_SECONDS, known: list[Any] | None = None) -> StopReport:
    """Stop the recorded head and every process it started, if it is provably the same one.

    Every one of them gets SIGTERM at once (as ``ray stop`` does; one after the other, as
    ``ray start --block`` itself does on SIGTERM, takes many seconds on a busy machine);
    whatever is left after ``grace_seconds`` is killed. ``child``: the head's
    :class:`subprocess.Popen` when this process started it (it is reaped here, never left a
    zombie). ``known``: :func:`head_processes` from while the head ran: if the head has
    exited since, those of them still running are stopped, with the processes still in its
    session when no process holds its pid (then that session is provably still its own).
    """
    members = head_processes(record)
    if not members:
        observed = describe_process(record.pid)
        if observed is not None and not record.alive():
            if child is not None:
                child.wait()
            return StopReport(False, reason=f"pid {record.pid} is now another process "
                                            f"({' '.join(observed['cmdline'])[:80]}), left alone")
        leftover = list(known or [])
        if observed is None:
            # Nothing holds the head's pid, so the processes in its session are still its own:
            # with them, one it started after the last look (a dashboard agent) is stopped too.
            leftover += _session_members(record.pid, exclude=None)
        left = _end(list({process.pid: process for process in leftover}.values()), grace_seconds)
        if child is not None:
            child.wait()
        if left.processes:
            return StopReport(True, processes=left.processes, killed=left.killed, reason="it had exited")
        return StopReport(False, reason="it is not running")
    report = _end(members, grace_seconds)
    if child is not None:
        child.wait()
    return report


def _end(processes: list[Any], grace_seconds: float) -> StopReport:
    """SIGTERM to every one still running, SIGKILL to those left after ``grace_seconds``."""
    import psutil

    running = _wait_gone(processes, 0)
    for process in running:
        try:
            process.terminate()  # psutil checks the start time first: never a recycled pid
        except psutil.NoSuchProcess:
            pass
    alive = _wait_gone(running, grace_seconds)
    for process in alive:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            pass
    _wait_gone(alive, 3.0)
    return StopReport(bool(running), processes=len(running), killed=len(alive))


def _wait_gone(processes: list[Any], timeout: float) -> list[Any]:
    """Wait until every process has exited; the ones still running after ``timeout``.

    A zombie has exited: it only waits for its parent (often another of these, itself
    exiting) to reap it. ``psutil.wait_procs`` would count it as running until then.
    """
    import psutil

    deadline = time.monotonic() + timeout
    while True:
        running = []
        for process in processes:
            try:
                if process.is_running() and process.status() != psutil.STATUS_ZOMBIE:
                    running.append(process)
            except psutil.NoSuchProcess:
                continue
        if not running or time.monotonic() >= deadline:
            return running
        time.sleep(0.05)


def _session_members(session_id: int, exclude: Any) -> list[Any]:
    """Processes still in the head's session but no longer its descendants (reparented)."""
    import psutil

    members = []
    for process in psutil.process_iter():
        if exclude is not None and process.pid == exclude.pid:
            continue
        try:
            if os.getsid(process.pid) == session_id:
                members.append(process)
        except (ProcessLookupError, PermissionError):
            continue
    return members


def listening_ports(record: HeadRecord) -> dict[str, int]:
    """The recorded ports that something still listens on (loopback or any address)."""
    import psutil

    wanted = dict(record.ports)
    busy: dict[str, int] = {}
    try:
        connections = psutil.net_connections("inet")
    except psutil.AccessDenied:
        return busy
    listening = {c.laddr.port for c in connections if c.status == psutil.CONN_LISTEN}
    for name, port in wanted.items():
        if port in listening:
            busy[name] = port
    return busy
