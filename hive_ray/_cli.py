"""The ``hive`` command line.

::

    hive demo                       run the demo job on an embedded local Ray, then exit
    hive up [--config F] [--no-block]   start a local cluster (if none), the orchestrator,
                                    the configured pools and the API; Ctrl-C stops it
    hive down                       stop what `hive up` started
    hive status                     nodes, resources, pools and where agents run
    hive types                      installed agent types
    hive spawn TYPE [-n N] [--pool P] [--num-cpus C] [--resources JSON]
    hive submit TARGET [PAYLOAD_JSON] [--capability] [--timeout S] [--no-wait]
    hive tasks [--state S] [--pool P] [--limit N]
    hive perf report [--html F] [--json] | perf baseline save [F] | perf baseline compare [F]

Every command but ``demo`` and ``up`` attaches to a running cluster (``RAY_ADDRESS``
or the one ``hive up`` started) and fails clearly if there is none.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from hive_ray._errors import HiveError


def main(argv: list[str] | None = None) -> int:
    # Before anything imports Ray, which reads it once: token authentication on by default.
    os.environ.setdefault("RAY_AUTH_MODE", "token")
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    try:
        return int(args.handler(args) or 0)
    except HiveError as error:
        print(f"hive: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hive", description="Run and watch hive-ray agents.")
    commands = parser.add_subparsers(title="commands")

    demo = commands.add_parser("demo", help="run the demo job on an embedded local Ray, then exit")
    demo.add_argument("--tasks", type=int, default=2000, help="echo tasks in the throughput step")
    demo.set_defaults(handler=_demo)

    up = commands.add_parser("up", help="start a local cluster, the orchestrator, pools and API")
    up.add_argument("--config", help="YAML config (default: the packaged demo pools)")
    up.add_argument("--no-block", action="store_true", help="return once everything runs")
    up.add_argument("--no-api", action="store_true", help="do not serve the HTTP/gRPC API")
    up.set_defaults(handler=_up)

    down = commands.add_parser("down", help="stop what `hive up` started")
    down.set_defaults(handler=_down)

    status = commands.add_parser("status", help="nodes, pools and agents")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.set_defaults(handler=_status)

    types = commands.add_parser("types", help="installed agent types")
    types.set_defaults(handler=_types)

    spawn = commands.add_parser("spawn", help="start agents of a type")
    spawn.add_argument("agent_type")
    spawn.add_argument("-n", "--count", type=int, default=1)
    spawn.add_argument("--pool")
    spawn.add_argument("--num-cpus", type=float)
    spawn.add_argument("--num-gpus", type=float)
    spawn.add_argument("--memory", type=int, help="bytes per agent host")
    spawn.add_argument("--resources", type=json.loads, help='custom resources, e.g. \'{"agent_slot": 1}\'')
    spawn.add_argument("--policy", choices=["least_loaded", "power_of_two", "round_robin", "affinity"])
    spawn.add_argument("--placement", choices=["dedicated", "packed"])
    spawn.add_argument("--agents-per-host", type=int)
    spawn.set_defaults(handler=_spawn)

    submit = commands.add_parser("submit", help="submit a task and print its result")
    submit.add_argument("target", help="agent type (or capability with --capability, pool with --pool)")
    submit.add_argument("payload", nargs="?", default="null", help="JSON payload (default: null)")
    route = submit.add_mutually_exclusive_group()
    route.add_argument("--capability", action="store_true", help="TARGET is a capability")
    route.add_argument("--pool", action="store_true", help="TARGET is a pool name")
    submit.add_argument("--timeout", type=float, help="seconds until the task times out")
    submit.add_argument("--priority", type=int, default=0)
    submit.add_argument("--no-wait", action="store_true", help="print the task id and return")
    submit.set_defaults(handler=_submit)

    tasks = commands.add_parser("tasks", help="recent tasks, newest first")
    tasks.add_argument("--state", choices=["queued", "running", "succeeded", "failed", "cancelled", "timed_out"])
    tasks.add_argument("--pool")
    tasks.add_argument("--limit", type=int, default=20)
    tasks.add_argument("--json", action="store_true")
    tasks.set_defaults(handler=_tasks)

    from hive_ray._perf_cli import register as register_perf

    register_perf(commands)  # hive perf report | baseline save | baseline compare
    return parser


# ---------------------------------------------------------------------- helpers
def _settings(overrides: dict[str, Any] | None = None) -> Any:
    from hive_ray._settings import Settings

    return Settings.load(overrides)


def _attach() -> Any:
    from hive_ray._client import Hive

    return Hive.connect(settings=_settings(), embedded=False)


def _payload(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        from hive_ray._errors import ConfigurationError

        raise ConfigurationError(
            f"the payload must be JSON ({error.msg} at column {error.colno}); "
            "quote strings, e.g. '\"hello\"' or '{\"rounds\": 1000}'"
        ) from None


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, default=str))


# ---------------------------------------------------------------------- demo
def _demo(args: argparse.Namespace) -> int:
    """Put agents visibly to work on an embedded Ray: the README's first command."""
    from hive_ray._client import Hive

    started = time.perf_counter()
    print("hive demo: starting an embedded local Ray (about 5 s) ...", flush=True)
    with Hive.connect() as hive:
        print(f"  connected in {time.perf_counter() - started:.1f} s")
        for agent_type, count in (("echo", 4), ("compute", 2), ("sleep", 1), ("coordinator", 1)):
            pool = hive.spawn(agent_type, count=count)
            print(f"  pool {pool.name!r}: {pool.size} agent(s) ready")
        print(f"\n1. echo: {args.tasks} tasks through 4 agents")
        began = time.perf_counter()
        results = hive.map("echo", list(range(args.tasks)), progress=True)
        elapsed = time.perf_counter() - began
        assert results == list(range(args.tasks)), "echo results out of order"
        print(f"   {args.tasks} results in input order, {args.tasks / elapsed:,.0f} tasks/s")
        print("\n2. compute: 8 hashing jobs (SHA-256 rounds), checked against a local run")
        from hive_ray.actors.compute import expected_digest

        jobs = [{"rounds": 20_000 + i, "seed": f"job-{i}"} for i in range(8)]
        digests = hive.map("compute", jobs, progress=False)
        ok = all(d["digest"] == expected_digest(j["rounds"], j["seed"]) for d, j in zip(digests, jobs, strict=True))
        print(f"   {len(digests)} digests, all correct: {ok}")
        print("\n3. coordinator: a map-reduce that delegates 16 compute sub-tasks")
        job = {"items": [{"rounds": 1000 * (i + 1)} for i in range(16)], "agent_type": "compute", "reduce": "sum"}
        summary = hive.submit("coordinator", job).result(timeout=120)
        print(f"   {summary['sub_tasks']} sub-tasks, total rounds {summary['result']:,}")
        print("\n4. sleep with a timeout, and a cancellation")
        slow = hive.submit("sleep", {"seconds": 30}, timeout=0.5)
        other = hive.submit("sleep", {"seconds": 30})
        other.cancel()
        for handle in (slow, other):
            record = _wait_done(hive, handle.task_id)
            print(f"   task {handle.task_id[:8]}: {record.state.value}")
        print("\nPools:")
        for pool in hive.pools():
            print(f"  {pool.name:<12} {pool.size} agents  succeeded={pool.succeeded} failed={pool.failed}")
        print(f"\nhive demo: done in {time.perf_counter() - started:.1f} s")
    return 0


def _wait_done(hive: Any, task_id: str, timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        record = hive.task(task_id)
        if record.done or time.monotonic() > deadline:
            return record
        time.sleep(0.05)


# ---------------------------------------------------------------------- up / down
def _state_dir(settings: Any) -> Path:
    path = Path(settings.state_dir)
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    return path


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _start_head(settings: Any) -> dict[str, Any]:
    """Start `ray start --head --block` as a child in its own session; record it."""
    from hive_ray._client import CLUSTER_FILE

    port = _free_port()
    ray_binary = Path(sys.executable).with_name("ray")
    command = [str(ray_binary) if ray_binary.exists() else "ray", "start", "--head", "--block",
               f"--port={port}", "--include-dashboard=false", "--node-ip-address=127.0.0.1"]
    log_path = _state_dir(settings) / "ray-head.log"
    log = open(log_path, "ab")  # noqa: SIM115 - handed to the child
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                               env=dict(os.environ))
    address = f"127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    import ray

    while True:
        if process.poll() is not None:
            raise _cluster_error(f"`ray start` exited with code {process.returncode}; see {log_path}")
        try:
            ray.init(address=address, namespace=settings.namespace, logging_level="WARNING",
                     log_to_driver=False)
            break
        except Exception:  # noqa: BLE001 - not up yet
            if time.monotonic() > deadline:
                os.killpg(process.pid, signal.SIGTERM)  # the head and everything it started
                raise _cluster_error(f"the local Ray head did not come up in 90 s; see {log_path}") from None
            time.sleep(1)
    recorded = {"address": address, "pid": process.pid, "started_at": time.time(), "log": str(log_path)}
    path = _state_dir(settings) / CLUSTER_FILE
    path.write_text(json.dumps(recorded))
    os.chmod(path, 0o600)
    return recorded


def _cluster_error(message: str) -> HiveError:
    from hive_ray._errors import HiveConnectionError

    return HiveConnectionError(message)


def _up(args: argparse.Namespace) -> int:
    from hive_ray._client import Hive, local_cluster_address
    from hive_ray._config import load_config

    config = load_config(args.config)
    settings = _settings(config.settings)
    address = os.environ.get("RAY_ADDRESS") or local_cluster_address(settings)
    if address:
        print(f"hive up: using the running cluster at {address}")
        hive = Hive.connect(address, settings=settings)
    else:
        print("hive up: starting a local Ray head ...", flush=True)
        head = _start_head(settings)
        print(f"  Ray head {head['address']} (pid {head['pid']}, log {head['log']})")
        hive = Hive.connect(settings=settings)
    existing = {pool.name for pool in hive.pools()}
    for spec in config.pools:
        if spec.name in existing:
            print(f"  pool {spec.name!r}: already running")
            continue
        pool = hive.spawn(spec.agent_type, pool=spec.name, **spec.model_dump(exclude={"agent_type", "name"}))
        print(f"  pool {pool.name!r}: {pool.size} {pool.agent_type} agent(s)")
    if config.api.enabled and not args.no_api:
        _start_api(settings)
    print("\nConnect from Python:  from hive_ray import Hive; hive = Hive.connect()")
    print("Stop everything:      hive down")
    if args.no_block:
        return 0
    print("\nRunning; Ctrl-C stops it.\n")
    stop = {"now": False}
    signal.signal(signal.SIGTERM, lambda *_: stop.update(now=True))
    try:
        while not stop["now"]:
            print("\r" + _status_line(hive) + " " * 4, end="", flush=True)
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    print("\nhive up: stopping ...")
    hive.close()
    return _down(args)


def _start_api(settings: Any) -> None:
    from hive_ray._api import ensure_api_key, start_api
    from hive_ray._api import key_file as api_key_file

    _, created = ensure_api_key(Path(settings.state_dir))
    urls = start_api(settings)
    for name, url in urls.items():
        print(f"  {name}: {url}")
    key_file = api_key_file(Path(settings.state_dir))
    if created:
        print(f"  API key created in {key_file} (readable by you only); use it as")
    else:
        print(f"  API key in {key_file}; use it as")
    print(f'    curl -H "Authorization: Bearer $(cat {key_file})" {urls.get("http", "")}/pools')


def _status_line(hive: Any) -> str:
    try:
        pools = hive.pools()
    except HiveError as error:
        return f"orchestrator unreachable: {error}"
    parts = [f"{p.name}: {p.size}/{p.desired} agents q={p.queued} run={p.running} ok={p.succeeded}"
             f" fail={p.failed}" + ("" if p.state == "ok" else f" [{p.state}]") for p in pools]
    return time.strftime("%H:%M:%S ") + " | ".join(parts)


def _down(args: argparse.Namespace) -> int:
    from hive_ray._client import CLUSTER_FILE, Hive

    settings = _settings()
    path = Path(settings.state_dir) / CLUSTER_FILE
    recorded: dict[str, Any] = {}
    try:
        recorded = json.loads(path.read_text())
    except (OSError, ValueError):
        pass
    try:
        hive = Hive.connect(settings=settings, embedded=False)
    except HiveError as error:
        hive = None
        print(f"hive down: {error}")
    if hive is not None:
        from hive_ray._api import stop_api

        try:
            stop_api()
            print("  API stopped")
        except Exception as error:  # noqa: BLE001 - keep stopping the rest
            print(f"  could not stop the API cleanly: {error}")
        import ray

        try:
            hive._call("shutdown", timeout=60)
            ray.kill(hive._orchestrator, no_restart=True)
            print("  orchestrator and agents stopped")
        except Exception as error:  # noqa: BLE001
            print(f"  could not stop the orchestrator cleanly: {error}")
        hive._closed = True
    pid = recorded.get("pid")
    if isinstance(pid, int):
        _stop_head(pid)
        path.unlink(missing_ok=True)
    return 0


def _stop_head(pid: int, grace_seconds: float = 45.0) -> None:
    """Stop the `ray start --block` we started: SIGTERM lets it stop its own processes;
    whatever of its process group is left after the grace period is killed."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace_seconds
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.2)
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    print(f"  local Ray head (pid {pid}) stopped")


# ---------------------------------------------------------------------- queries
def _status(args: argparse.Namespace) -> int:
    import ray

    hive = _attach()
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    pools = hive.pools()
    if args.json:
        _print_json({"nodes": nodes, "pools": [p.model_dump() for p in pools]})
        return 0
    by_node: dict[str, list[str]] = {}
    for pool in pools:
        for agent in pool.agents:
            by_node.setdefault(agent.node_id or "?", []).append(agent.agent_id)
    print(f"{len(nodes)} node(s):")
    for node in nodes:
        resources = ", ".join(_resource(k, v) for k, v in sorted(node["Resources"].items())
                              if not k.startswith("node:") and k != "object_store_memory")
        agents = by_node.get(node["NodeID"], [])
        print(f"  {node['NodeID'][:12]} {node['NodeManagerAddress']}  {resources}")
        print(f"      {len(agents)} agent(s){': ' + ', '.join(sorted(agents)[:12]) if agents else ''}"
              f"{' ...' if len(agents) > 12 else ''}")
    print(f"{len(pools)} pool(s):")
    for pool in pools:
        restarts = sum(a.restarts for a in pool.agents)
        print(f"  {pool.name:<14} {pool.agent_type:<12} {pool.size}/{pool.desired} agents  {pool.state:<9}"
              f" queued={pool.queued} running={pool.running} succeeded={pool.succeeded}"
              f" failed={pool.failed} restarts={restarts}")
    return 0


def _resource(name: str, amount: float) -> str:
    if name == "memory":
        return f"memory={amount / 2**30:.1f}GiB"
    return f"{name}={amount:g}"


def _types(args: argparse.Namespace) -> int:
    from hive_ray._registry import known_agent_types, load_agent_class

    for name in known_agent_types():
        cls = load_agent_class(name)
        capabilities = ", ".join(sorted(cls.capabilities))
        print(f"{name:<14} {cls.__module__}.{cls.__qualname__}  capabilities: {capabilities}")
    return 0


def _spawn(args: argparse.Namespace) -> int:
    hive = _attach()
    options = {key: value for key, value in {
        "num_cpus": args.num_cpus, "num_gpus": args.num_gpus, "memory": args.memory,
        "resources": args.resources, "policy": args.policy, "placement": args.placement,
        "agents_per_host": args.agents_per_host}.items() if value is not None}
    pool = hive.spawn(args.agent_type, count=args.count, pool=args.pool, **options)
    print(f"pool {pool.name!r}: {pool.size} agent(s) of type {pool.agent_type}")
    return 0


def _submit(args: argparse.Namespace) -> int:
    hive = _attach()
    payload = _payload(args.payload)
    route: dict[str, Any] = {}
    if args.capability:
        route["capability"] = args.target
    elif args.pool:
        route["pool"] = args.target
    agent = None if route else args.target
    handle = hive.submit(agent, payload, timeout=args.timeout, priority=args.priority, **route)
    if args.no_wait:
        print(handle.task_id)
        return 0
    try:
        _print_json(handle.result())
    except HiveError as error:
        print(f"hive: {error}", file=sys.stderr)
        return 1
    return 0


def _tasks(args: argparse.Namespace) -> int:
    hive = _attach()
    records = hive.tasks(state=args.state, pool=args.pool, limit=args.limit)
    if args.json:
        _print_json([r.model_dump(mode="json") for r in records])
        return 0
    for record in records:
        took = f"{record.duration * 1000:.1f} ms" if record.duration is not None else ""
        error = (record.error or {}).get("message", "")
        print(f"{record.task_id}  {record.state.value:<9} {record.pool:<12} {record.agent_id or '':<14}"
              f" attempts={record.attempts} {took} {error[:60]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
