"""``hive up`` and ``hive down``: start a cluster, watch it, and stop exactly what was started.

``hive up`` attaches to ``RAY_ADDRESS`` or the local head an earlier ``hive up`` started;
otherwise it starts one (:mod:`hive_ray._local_head`). It then creates the configured pools
and the API and, unless ``--no-block``, watches the cluster until one of these ends it, each
followed by the same stop as ``hive down`` and exit code 0:

- Ctrl-C (SIGINT) or SIGTERM;
- the cluster stopped from elsewhere (``hive down`` in another terminal): the head it started
  exited, or the orchestrator is gone for good.

``hive down`` stops only what ``hive up`` started: hive's own Serve application (Serve itself
only when no other application is left), the orchestrator, its agents and the analyzer, and
the local head, if the recorded process provably is that head. Every step has a time bound;
altogether they take a few seconds.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from hive_ray._cli_output import Console, StatusLine, is_terminal, plural
from hive_ray._errors import HiveConnectionError
from hive_ray._local_head import (
    CLUSTER_FILE,
    STOP_GRACE_SECONDS,
    HeadRecord,
    describe_process,
    ensure_ray_token,
    forget_head,
    head_processes,
    listening_ports,
    prepare_driver,
    read_pointer,
    remove_pointer,
    running_head,
    start_head,
    stop_head,
)

#: Seconds each stop step may take: the orchestrator's own shutdown (agents' teardown
#: hooks), deleting the API application, and disconnecting from Ray.
SHUTDOWN_SECONDS = 3.0
DISCONNECT_SECONDS = 2.0
#: How often a foreground ``hive up`` refreshes its status and checks the cluster.
WATCH_SECONDS = 1.0
#: How long ``hive down`` waits for a foreground ``hive up`` to stop everything.
WATCHER_SECONDS = 20.0


def settings_for(config_settings: dict[str, Any] | None = None) -> Any:
    from hive_ray._settings import Settings

    return Settings.load(config_settings)


def state_dir(settings: Any) -> Path:
    path = Path(settings.state_dir)
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    return path


class _Signals:
    """SIGINT and SIGTERM: while starting they interrupt (KeyboardInterrupt); while running
    they ask the watch loop to stop; while stopping they are noted, not obeyed, so that a
    second Ctrl-C cannot leave half a cluster behind (every stop step is bounded)."""

    def __init__(self) -> None:
        self.requested = threading.Event()
        self.received: int | None = None
        self.phase = "starting"
        self._previous = {number: signal.getsignal(number) for number in (signal.SIGINT, signal.SIGTERM)}
        for number in self._previous:
            signal.signal(number, self._handle)

    def _handle(self, number: int, frame: Any) -> None:
        self.received = number
        self.requested.set()  # no printing here: the main thread may be inside print()
        if self.phase == "starting":
            raise KeyboardInterrupt

    def restore(self) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)


# ---------------------------------------------------------------------- up
def up(args: argparse.Namespace, console: Console) -> int:
    from hive_ray._config import load_config

    config = load_config(args.config)
    settings = settings_for(config.settings)
    directory = state_dir(settings)
    signals = _Signals()
    run = _Run()
    try:
        hive = _connect_or_start(args, settings, directory, run)
        _create_pools(hive, config)
        api_url = None
        if config.api.enabled and not args.no_api:
            api_url = _start_api(settings)
            if run.record is not None:
                api = {"http": int(settings.http_port), "grpc": int(settings.grpc_port)}
                run.record = replace(run.record, api=api)
                run.record.save(directory)
        _print_hints(hints(settings, config, api_url=api_url), no_block=args.no_block, console=console)
        if args.no_block:
            hive.close()
            return 0
        if run.record is not None:  # `hive down` elsewhere asks this process to stop it all
            run.record = replace(run.record, watcher=describe_process(os.getpid()))
            run.record.save(directory)
        print("\nRunning; Ctrl-C stops it.", flush=True)
        signals.phase = "running"
        reason = _watch(hive, settings, run, signals, StatusLine(sys.stdout, live=is_terminal(sys.stdout)))
        signals.phase = "stopping"
        print(f"hive up: {reason}; stopping ...", flush=True)
        orchestrator = hive._orchestrator
        hive.close()
        stopped = stop_cluster(settings, record=run.record, child=run.child, orchestrator=orchestrator,
                               known=run.processes)
        return 0 if stopped.disconnected else exit_now(0)
    except KeyboardInterrupt:
        signals.phase = "stopping"
        print("\nhive up: interrupted while starting; stopping what it started ...", flush=True)
        if run.child is not None and not stop_cluster(settings, record=run.record, child=run.child).disconnected:
            exit_now(130)
        return 130
    except BaseException:
        signals.phase = "stopping"
        if run.child is not None:  # never leave a half-started head behind
            print("hive up: failed; stopping the Ray head it started ...", flush=True)
            stop_cluster(settings, record=run.record, child=run.child)
        raise
    finally:
        signals.restore()


@dataclass
class _Run:
    """The head this ``hive up`` runs on, if ``hive up`` started it (now or earlier), and the
    ``ray start`` child when it was this process that started it."""

    record: HeadRecord | None = None
    child: subprocess.Popen[bytes] | None = None
    #: The head's processes, as last seen by the watch loop.
    processes: list[Any] = field(default_factory=list)


def _connect_or_start(args: argparse.Namespace, settings: Any, directory: Path, run: _Run) -> Any:
    from hive_ray._client import Hive

    head = running_head(directory)
    address = os.environ.get("RAY_ADDRESS") or (head.address if head else None)
    if address:
        print(f"hive up: using the running cluster at {address}", flush=True)
        run.record = head if head is not None and head.address == address else None
        return Hive.connect(address, settings=settings)
    token = ensure_ray_token()
    if token is not None:
        print(f"hive up: {token.describe()}")
    print("hive up: starting a local Ray head ...", flush=True)
    try:
        run.record, run.child = start_head(directory, node_ip=args.node_ip_address)
    except HiveConnectionError as error:
        if not error.details.get("slow"):
            raise
        print("  Ray's own agents started too slowly for it (a busy machine?); trying once more ...",
              flush=True)
        run.record, run.child = start_head(directory, node_ip=args.node_ip_address)
    record = run.record
    print(f"  Ray head {record.address} (pid {record.pid}; its log: {record.log})", flush=True)
    return Hive.connect(record.address, settings=settings)


def _create_pools(hive: Any, config: Any) -> None:
    existing = {pool.name for pool in hive.pools()}
    for spec in config.pools:
        if spec.name in existing:
            print(f"  pool {spec.name!r}: already running")
            continue
        pool = hive.spawn(spec.agent_type, pool=spec.name, **spec.model_dump(exclude={"agent_type", "name"}))
        print(f"  pool {pool.name!r}: {plural(pool.size, pool.agent_type + ' agent')}", flush=True)


def _start_api(settings: Any) -> str:
    """Deploy the API; returns its HTTP base URL."""
    from hive_ray._api import ensure_api_key, start_api
    from hive_ray._api import key_file as api_key_file

    _, created = ensure_api_key(Path(settings.state_dir))
    urls = start_api(settings)
    print(f"  API {urls['http']} (docs {urls['docs']}, dashboard {urls['dashboard']}); gRPC {urls['grpc']}")
    key_file = api_key_file(Path(settings.state_dir))
    print(f"  API key {'created in' if created else 'in'} {key_file} (readable by you only)", flush=True)
    return urls["http"]


def hints(settings: Any, config: Any, *, api_url: str | None) -> list[str]:
    """The commands ``hive up`` suggests; each works when pasted (tests run every one)."""
    lines = ["hive status"]
    if any(spec.agent_type == "echo" for spec in config.pools):
        lines.append("hive submit echo '{\"hello\": \"world\"}'")
    if api_url is not None:
        from hive_ray._api import key_file as api_key_file

        key = shlex.quote(str(api_key_file(Path(settings.state_dir))))
        lines.append(f'curl -H "Authorization: Bearer $(cat {key})" {api_url}/v1/pools')
    lines.append("python -c 'from hive_ray import Hive; print(Hive.connect().pools())'")
    return lines


def _print_hints(lines: list[str], *, no_block: bool, console: Console) -> None:
    print("\nTry:")
    for line in lines:
        print(f"  {line}")
    print("Stop everything:  hive down" + ("" if no_block else "  (or Ctrl-C here)"))
    if console.log is not None:
        print(f"Logs: {console.log.parent} (Ray's own output; --verbose shows it here)", flush=True)


# ---------------------------------------------------------------------- watching
def _watch(hive: Any, settings: Any, run: _Run, signals: _Signals, line: StatusLine) -> str:
    """Refresh the status until something ends ``hive up``; returns what did."""
    record, child = run.record, run.child
    try:
        while not signals.requested.is_set():
            if child is not None and child.poll() is not None:
                return "the Ray head exited (stopped from elsewhere?)"
            if record is not None:
                run.processes = head_processes(record, session=False)  # to clean up if the head dies
                if not run.processes:
                    return "the Ray head is gone (stopped from elsewhere?)"
            text, shape = _status(hive, settings)
            if text is None:
                return "the orchestrator is gone (stopped by `hive down`?)"
            if text:
                line.show(text, shape)
            signals.requested.wait(WATCH_SECONDS)
        return "Ctrl-C" if signals.received == signal.SIGINT else "SIGTERM (from `hive down`?)"
    finally:
        line.end()


def _status(hive: Any, settings: Any) -> tuple[str | None, str]:
    """``(line, shape)`` of the pools; ``(None, "")`` once the orchestrator is gone for good,
    ``("", "")`` if it did not answer within a second."""
    import ray
    from ray.exceptions import GetTimeoutError, RayActorError

    from hive_ray._models import PoolInfo

    try:
        pools = [PoolInfo(**info) for info in ray.get(hive._orchestrator.pools.remote(), timeout=WATCH_SECONDS)]
    except GetTimeoutError:
        return "", ""  # busy: keep the last line rather than flicker
    except RayActorError:
        try:
            if _named(settings.orchestrator_name, settings.namespace) is None:
                return None, ""
        except Exception as error:  # noqa: BLE001 - the GCS itself: the watch loop checks the head next
            return f"cluster unreachable ({type(error).__name__})", "unreachable"
        return "orchestrator restarting", "restarting"
    except Exception as error:  # noqa: BLE001 - the watch loop checks the head next
        return f"cluster unreachable ({type(error).__name__})", "unreachable"
    parts, shape = [], []
    for pool in pools:
        state = "" if pool.state == "ok" else f" [{pool.state}]"
        parts.append(f"{pool.name}: {pool.size}/{pool.desired} agents q={pool.queued} run={pool.running} "
                     f"ok={pool.succeeded} fail={pool.failed}{state}")
        shape.append(f"{pool.name}:{pool.size}/{pool.desired}{state}")
    return " | ".join(parts) or "no pools", " ".join(shape)


# ---------------------------------------------------------------------- down
def down(args: argparse.Namespace, console: Console) -> int:
    settings = settings_for()
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

    head_alive = record is not None and record.alive()
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
        orchestrator = _named(settings.orchestrator_name, settings.namespace)
        if orchestrator is None:
            return False
    try:
        ray.get(orchestrator.shutdown.remote(), timeout=SHUTDOWN_SECONDS)
    except RayActorError:
        try:
            if _named(settings.orchestrator_name, settings.namespace) is None:
                return False  # already stopped (by `hive down` from elsewhere)
        except Exception:  # noqa: BLE001 - the cluster is going away; the head is next
            return False
    except Exception as error:  # noqa: BLE001 - restarting or slow: removed below either way
        print(f"  the orchestrator did not stop its agents within {SHUTDOWN_SECONDS:.0f} s "
              f"({type(error).__name__}); removing it")
    for actor in (orchestrator, _named(settings.analyzer_name, settings.namespace)):
        if actor is not None:
            try:
                ray.kill(actor, no_restart=True)
            except Exception:  # noqa: BLE001 - already gone
                pass
    return True


def _named(name: str, namespace: str) -> Any:
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
