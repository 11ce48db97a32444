"""``hive down``: stop exactly what ``hive up`` started, and nothing else.

On a cluster ``hive up`` did not start (``RAY_ADDRESS``): hive's own Serve application (Serve
itself only when no other application is left), the orchestrator, its agents and the
analyzer. On a head ``hive up`` started (``cluster.json``): if a foreground ``hive up``
watches it, that one is asked to stop everything (SIGTERM) and waited for; otherwise the
orchestrator and agents (their teardown hooks run, bounded), then the head and every
process it started, once the recorded process is proven to be that head, and Ray's
current-cluster pointer if it still names that head. Every step has a time bound.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hive_ray._cli_output import Console, plural
from hive_ray._local_head import (
    CLUSTER_FILE,
    STOP_GRACE_SECONDS,
    HeadRecord,
    forget_head,
    gcs_answers,
    listening_ports,
    read_pointer,
    remove_pointer,
    stop_head,
)
from hive_ray._ray_access import prepare_driver

#: Seconds each stop step may take: the orchestrator's own shutdown (agents' teardown
#: hooks), and disconnecting from Ray.
SHUTDOWN_SECONDS = 3.0
DISCONNECT_SECONDS = 2.0
#: How long ``hive down`` waits for a foreground ``hive up`` to stop everything.
WATCHER_SECONDS = 20.0


def down(args: argparse.Namespace, console: Console) -> int:
    from hive_ray._settings import Settings

    settings = Settings.load()
    directory = Path(settings.state_dir)
    record = HeadRecord.load(directory)
    if record is None and (directory / CLUSTER_FILE).exists() and not os.environ.get("RAY_ADDRESS"):
        print(_unprovable(directory / CLUSTER_FILE))
        return 1
    if record is not None and not record.alive():
        print(f"hive down: the Ray head hive up recorded (pid {record.pid}) is not running; "
              "forgetting it")
        remove_pointer(record)
        _forget(directory, record)
        record = None
    address = os.environ.get("RAY_ADDRESS") or None
    if record is not None and address not in (None, record.address):
        record = None  # RAY_ADDRESS names another cluster: that one is meant
    address = address or (record.address if record else None)
    if address is None:
        print("hive down: no hive cluster is running (nothing to stop)")
        return 0
    if record is not None and record.watcher_alive() and _ask_watcher(record):
        return 0
    print(f"hive down: stopping hive on {address} ...", flush=True)
    stopped = stop_cluster(settings, record=record, address=address)
    code = 0 if stopped.reached else 1
    return code if stopped.disconnected else exit_now(code)


def _ask_watcher(record: HeadRecord) -> bool:
    """SIGTERM to the foreground ``hive up`` that watches the head: it stops everything
    through the connection it already has (faster than connecting again, and never two
    stoppers at once). True once the head and the watcher are gone; False if the watcher did
    not finish in time (then ``hive down`` stops what is left itself)."""
    import psutil

    pid = (record.watcher or {}).get("pid")
    print(f"hive down: asking the foreground hive up (pid {pid}) to stop everything ...", flush=True)
    try:
        watcher = psutil.Process(pid)
        watcher.terminate()
    except psutil.NoSuchProcess:
        return False
    deadline = time.monotonic() + WATCHER_SECONDS
    while time.monotonic() < deadline:
        if not record.watcher_alive() and not record.alive():
            break
        time.sleep(0.1)
    else:
        print(f"  it did not finish within {WATCHER_SECONDS:.0f} s; stopping what is left here")
        return False
    left = listening_ports(record)
    print(f"  stopped: the orchestrator, its agents, {'the API, ' if record.api else ''}the local Ray head "
          f"(pid {record.pid}) and its processes"
          + (f"; still listening: {left}" if left else "; their ports are free"))
    if record.pointer and record.pointer_file and read_pointer(Path(record.pointer_file)) != record.pointer:
        print("  Ray's current-cluster pointer removed: a plain ray.init() starts a new local Ray")
    return True


def _unprovable(path: Path) -> str:
    """What to do about a record that names a pid but not which process (an older hive)."""
    pid = None
    try:
        pid = int(json.loads(path.read_text()).get("pid"))
    except (OSError, ValueError, TypeError, AttributeError):
        pass
    check = (f"if `ps -p {pid} -o args=` shows the `ray start --head` it started, `kill {pid}`; then "
             if pid is not None else "")
    return (f"hive down: {path} does not prove which process hive up started (an older hive wrote it), "
            f"so no Ray head is stopped: {check}`rm {shlex.quote(str(path))}`")


def stop_cluster(settings: Any, *, record: HeadRecord | None, child: Any = None, address: str | None = None,
                 orchestrator: Any = None, known: list[Any] | None = None) -> _Stopped:
    """Stop hive on the cluster (its API application, the orchestrator, agents, analyzer),
    then the head if ``record`` names one ``hive up`` started (``known``: its processes as
    last seen, for a head that died meanwhile). Safe to call twice, and from two processes
    at once."""
    import ray

    # A head whose GCS no longer answers is being stopped: nothing on it can be asked.
    head_alive = record is not None and record.alive() and gcs_answers(record.address)
    clean = reached = True
    if (record is None or head_alive) and (ray.is_initialized() or _timed("attach", _attach, address, settings)):
        api_removed = _timed("remove the API", _remove_api) if record is None else False  # a head of ours takes it along
        orchestrator_stopped = _timed("stop the orchestrator", _stop_orchestrator, settings, orchestrator)
        clean = _timed("disconnect", _disconnect)
        if api_removed:
            print("  API stopped")
        if orchestrator_stopped:
            print("  orchestrator, its agents and the analyzer stopped")
    elif ray.is_initialized():
        clean = _disconnect()  # the head is gone: do not wait for it
    else:
        reached = record is not None
    if record is not None:
        report = _timed("stop the head", stop_head, record, child, STOP_GRACE_SECONDS, known)
        forced = (f" ({report.killed} of them killed: still running {STOP_GRACE_SECONDS:.0f} s after SIGTERM)"
                  if report.killed else "")
        if report.stopped and report.reason:  # the head had exited; what it left behind is stopped
            print(f"  local Ray head (pid {record.pid}): {report.reason}; "
                  f"{plural(report.processes, 'process', 'processes')} it had started stopped{forced}")
        elif report.stopped:
            print(f"  local Ray head (pid {record.pid}) and "
                  f"{plural(report.processes - 1, 'process', 'processes')} it started stopped{forced}")
            if record.api:
                print("  API stopped (it ran on that head)")
        else:
            print(f"  local Ray head (pid {record.pid}): {report.reason}")
        if remove_pointer(record):
            print("  Ray's current-cluster pointer removed: a plain ray.init() starts a new local Ray")
        _forget(Path(settings.state_dir), record)
    sys.stdout.flush()
    return _Stopped(disconnected=clean, reached=reached)


@dataclass(frozen=True)
class _Stopped:
    """``disconnected``: Ray let go in time (else the caller leaves with :func:`exit_now`);
    ``reached``: there was something to stop."""

    disconnected: bool
    reached: bool


def _timed(step: str, function: Any, *args: Any) -> Any:
    """Run a stop step; its duration goes to sys.stderr (the log, unless --verbose)."""
    began = time.monotonic()
    try:
        return function(*args)
    finally:
        print(f"hive: {step} took {time.monotonic() - began:.2f} s", file=sys.stderr, flush=True)


def _forget(directory: Path, record: HeadRecord) -> None:
    """Remove ``cluster.json`` only if it still describes ``record`` (a new ``hive up`` may
    have written its own meanwhile)."""
    current = HeadRecord.load(directory)
    if current is not None and current.process == record.process:
        forget_head(directory)


def _attach(address: str | None, settings: Any) -> bool:
    import ray

    if address is None:
        return False
    prepare_driver(address)
    try:
        ray.init(address=address, namespace=settings.namespace, logging_level=logging.WARNING,
                 log_to_driver=False)
    except Exception as error:  # noqa: BLE001 - Ray raises several kinds; all mean "not reachable"
        print(f"  could not reach the cluster at {address}: {error}")
        return False
    return True


def _remove_api() -> bool:
    """Delete hive's Serve application; stop Serve only if no other application is left.
    False if it was not running."""
    import ray

    try:
        from ray.serve._private.constants import SERVE_CONTROLLER_NAME, SERVE_NAMESPACE

        ray.get_actor(SERVE_CONTROLLER_NAME, namespace=SERVE_NAMESPACE)
    except (ImportError, ValueError):
        return False
    from ray import serve

    from hive_ray._api._deployment import APP_NAME

    if APP_NAME not in serve.status().applications:
        return False
    serve.delete(APP_NAME)
    if not set(serve.status().applications) - {APP_NAME}:
        serve.shutdown()  # nobody else's application runs on it; frees the ports
    return True


def _stop_orchestrator(settings: Any, orchestrator: Any = None) -> bool:
    """Let the orchestrator stop its agents (their teardown hooks run), bounded; then remove
    it and the analyzer for good. False if there was no orchestrator."""
    import ray
    from ray.exceptions import RayActorError

    if orchestrator is None:
        orchestrator = named_actor(settings.orchestrator_name, settings.namespace)
        if orchestrator is None:
            return False
    try:
        ray.get(orchestrator.shutdown.remote(), timeout=SHUTDOWN_SECONDS)
    except RayActorError:
        try:
            if named_actor(settings.orchestrator_name, settings.namespace) is None:
                return False  # already stopped (by `hive down` from elsewhere)
        except Exception:  # noqa: BLE001 - the cluster is going away; the head is next
            return False
    except Exception as error:  # noqa: BLE001 - restarting or slow: removed below either way
        print(f"  the orchestrator did not stop its agents within {SHUTDOWN_SECONDS:.0f} s "
              f"({type(error).__name__}); removing it")
    for actor in (orchestrator, named_actor(settings.analyzer_name, settings.namespace)):
        if actor is not None:
            try:
                ray.kill(actor, no_restart=True)
            except Exception:  # noqa: BLE001 - already gone
                pass
    return True


def named_actor(name: str, namespace: str) -> Any:
    import ray

    try:
        return ray.get_actor(name, namespace=namespace)
    except ValueError:
        return None


def _disconnect(timeout: float = DISCONNECT_SECONDS) -> bool:
    """``ray.shutdown()``, bounded (with its head gone it can wait on a dead GCS); True if
    it finished."""
    import ray

    worker = threading.Thread(target=ray.shutdown, name="hive-ray-shutdown", daemon=True)
    worker.start()
    worker.join(timeout)
    return not worker.is_alive()


def exit_now(code: int) -> int:
    """Leave without Ray's exit hooks, which would wait for the disconnect that did not end."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
