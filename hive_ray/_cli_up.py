"""``hive up`` and ``hive down``: start a cluster, watch it, and stop exactly what was started.

``hive up`` attaches to ``RAY_ADDRESS`` or the local head an earlier ``hive up`` started;
otherwise it starts one (:mod:`hive_ray._local_head`). It then creates the configured pools
and the API and, unless ``--no-block``, watches the cluster until one of these ends it, each
followed by the same stop as ``hive down`` and exit code 0:

- Ctrl-C (SIGINT) or SIGTERM (which is how ``hive down`` in another terminal asks it: the
  foreground ``hive up`` is recorded as the head's watcher);
- its cluster stopped from elsewhere: the head exited (what it left is stopped), or the
  orchestrator is gone for good.

``hive down`` stops only what ``hive up`` started: hive's own Serve application (Serve itself
only when no other application is left), the orchestrator, its agents and the analyzer, and
the local head, if the recorded process provably is that head. Every step has a time bound;
altogether they take a few seconds.
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from hive_ray._cli_down import exit_now, named_actor, stop_cluster
from hive_ray._cli_output import Console, StatusLine, is_terminal, plural
from hive_ray._errors import HiveConnectionError
from hive_ray._local_head import (
    HeadRecord,
    describe_process,
    gcs_answers,
    head_processes,
    running_head,
    start_head,
)
from hive_ray._ray_access import ensure_ray_token

#: How often a foreground ``hive up`` refreshes its status and checks the cluster.
WATCH_SECONDS = 1.0


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

    def reinstall(self) -> None:
        """Take SIGTERM back: ``ray.init`` installs its C++ failure handler (abseil's) over
        it, which prints a stack and aborts the process once Python's handler has run."""
        for number in self._previous:
            signal.signal(number, self._handle)

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
        signals.reinstall()
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
                if not gcs_answers(record.address):
                    return "the Ray head is stopping (stopped from elsewhere?)"
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
        lookup = _bounded(named_actor, settings.orchestrator_name, settings.namespace, timeout=WATCH_SECONDS)
        if isinstance(lookup, BaseException):  # the GCS itself: the watch loop checks the head next
            return f"cluster unreachable ({type(lookup).__name__})", "unreachable"
        if lookup is None:
            return None, ""
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


_lookups: list[threading.Thread] = []  # the last bounded lookup, while it may still run


def _bounded(function: Any, *args: Any, timeout: float) -> Any:
    """``function(*args)``, or the exception it raised, or :class:`TimeoutError` once
    ``timeout`` passed (a GCS lookup can otherwise wait a minute on a head that is going).
    While an earlier lookup is still stuck, none is added: at most one thread waits."""
    if _lookups and _lookups[0].is_alive():
        return TimeoutError("an earlier lookup has not returned yet")
    outcome: list[Any] = [TimeoutError(f"no answer within {timeout:.0f} s")]

    def call() -> None:
        try:
            outcome[0] = function(*args)
        except Exception as error:  # noqa: BLE001 - handed to the caller
            outcome[0] = error

    worker = threading.Thread(target=call, name="hive-up-lookup", daemon=True)
    _lookups[:] = [worker]
    worker.start()
    worker.join(timeout)
    return outcome[0]
