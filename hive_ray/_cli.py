"""The ``hive`` command line.

::

    hive demo [--tasks N]           run the demo job on an embedded local Ray, then exit
    hive up [--config F] [--no-block] [--no-api] [--node-ip-address IP]
                                    start a local Ray head (if none), the orchestrator, the
                                    configured pools and the API; Ctrl-C stops it all
    hive down                       stop what `hive up` started
    hive status [--json]            nodes, resources, pools and where agents run
    hive types                      installed agent types
    hive spawn TYPE [-n N] [--pool P] [--num-cpus C] ...   start N agents (adds to a pool)
    hive scale POOL N               set a pool's size to N agents
    hive submit TARGET [PAYLOAD_JSON] [--capability | --pool] [--timeout S] [--no-wait | --stream]
    hive tasks [--state S] [--pool P] [--limit N] [--json]
    hive agent ask TYPE KEY MESSAGE_JSON [--timeout S] [--message-id ID]
                                    send a virtual agent a message and print its answer
    hive agent tell TYPE KEY MESSAGE_JSON [--message-id ID]
                                    send it without waiting; print the message's task id
    hive agent state TYPE KEY       its saved state, version, owner and activation (JSON)
    hive topic publish TOPIC MESSAGE_JSON [--source KEY] [--message-id ID]
                                    deliver a message to every agent subscribed to TOPIC
    hive topic subscribe|unsubscribe TOPIC TYPE KEY
                                    (un)subscribe one virtual agent to every message of TOPIC
    hive topic subscriptions [TOPIC]
                                    who receives each topic's messages (JSON)
    hive topic follow TOPIC [--after N] [--idle-timeout S]
                                    print its messages as they come, one JSON line each
    hive perf report [--html F] [--json] | perf baseline save [F] | perf baseline compare [F]

Every command takes ``--verbose`` (``-v``): without it, Ray's own log lines go to
``<state_dir>/logs/hive.log`` and only hive's lines are shown. Every command but ``demo``
and ``up`` attaches to a running cluster (``RAY_ADDRESS`` or the one ``hive up`` started)
and fails clearly if there is none.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from hive_ray._cli_output import Console, open_console, plural
from hive_ray._errors import HiveError


def main(argv: list[str] | None = None) -> int:
    # Before anything imports Ray, which reads it once: token authentication on by default.
    os.environ.setdefault("RAY_AUTH_MODE", "token")
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    console = args.console = _console(args)
    try:
        return int(args.handler(args) or 0)
    except HiveError as error:
        console.error(str(error))
        return 1
    except KeyboardInterrupt:
        return 130
    except Exception as error:  # noqa: BLE001 - one line here, the traceback in the log
        traceback.print_exc()  # to sys.stderr: the log when quiet
        console.error(f"unexpected {type(error).__name__}: {error}{_see_log(console)}")
        return 1
    finally:
        console.close()


def _console(args: argparse.Namespace) -> Console:
    """Quiet unless --verbose: Ray's own lines go to the log in the state directory."""
    from hive_ray._cli_up import settings_for

    overrides = None
    if getattr(args, "config", None) is not None:
        from hive_ray._config import load_config

        try:
            overrides = load_config(args.config).settings
        except HiveError:
            overrides = None  # `hive up` reports it
    try:
        log_dir = Path(settings_for(overrides).state_dir) / "logs"
    except Exception:  # noqa: BLE001 - bad HIVE_* settings: the command reports them
        log_dir = Path.home() / ".hive" / "logs"
    return open_console(log_dir, verbose=getattr(args, "verbose", False), command=args.command_name)


def _see_log(console: Console) -> str:
    return f" (Ray's own output: {console.log})" if console.log is not None else ""


def build_parser() -> argparse.ArgumentParser:
    verbose_help = "show Ray's own log lines too (default: they go to <state_dir>/logs/hive.log)"
    parser = argparse.ArgumentParser(prog="hive", description="Run and watch hive-ray agents.")
    parser.add_argument("-v", "--verbose", action="store_true", help=verbose_help)
    # Each command takes it too; SUPPRESS keeps a command's default from undoing `hive -v CMD`.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help=verbose_help)
    commands = parser.add_subparsers(title="commands")

    def command(name: str, handler: Any, help_text: str, **options: Any) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text, parents=[common], **options)
        sub.set_defaults(handler=handler, command_name=name)
        return sub

    demo = command("demo", _demo, "run the demo job on an embedded local Ray, then exit")
    demo.add_argument("--tasks", type=int, default=2000, help="echo tasks in the throughput step (default: 2000)")

    up = command("up", _up, "start a local Ray head (unless one runs), the orchestrator, the configured "
                 "pools and the API; Ctrl-C or `hive down` stops them. Keeps its API key, cluster "
                 "record and logs in the state directory (~/.hive, or HIVE_STATE_DIR).")
    up.add_argument("--config", metavar="FILE", help="YAML config (default: the packaged demo pools, "
                    "hive_ray/default_config.yaml)")
    up.add_argument("--no-block", action="store_true", help="return once everything runs (default: "
                    "stay in the foreground, showing the pools, until Ctrl-C)")
    up.add_argument("--no-api", action="store_true", help="do not serve the HTTP/gRPC API")
    up.add_argument("--node-ip-address", metavar="IP", default="127.0.0.1",
                    help="address of the Ray head it starts (default: 127.0.0.1, so nothing listens "
                    "beyond loopback; name this machine's address to let other nodes join)")

    command("down", _down, "stop what `hive up` started: hive's API application, the orchestrator, its "
            "agents, and the local Ray head if hive up started it")

    status = command("status", _status, "nodes, resources, pools and where agents run")
    status.add_argument("--json", action="store_true", help="machine-readable output")

    command("types", _types, "installed agent types")

    spawn = command("spawn", _spawn, "start N agents of a type; into an existing pool they are added "
                    "(`hive scale POOL N` sets the size instead)")
    spawn.add_argument("agent_type", help="agent type by name (see `hive types`)")
    spawn.add_argument("-n", "--count", type=int, default=1, help="agents to start (default: 1)")
    spawn.add_argument("--pool", help="pool name (default: the agent type)")
    spawn.add_argument("--num-cpus", type=float, help="CPUs per agent host (default: 0)")
    spawn.add_argument("--num-gpus", type=float, help="GPUs per agent host")
    spawn.add_argument("--memory", type=int, help="bytes of memory per agent host")
    spawn.add_argument("--resources", type=json.loads, help='custom resources as JSON, e.g. \'{"agent_slot": 1}\'')
    spawn.add_argument("--policy", choices=["least_loaded", "power_of_two", "round_robin", "affinity"],
                       help="how tasks are spread over the pool's agents")
    spawn.add_argument("--placement", choices=["dedicated", "packed"],
                       help="one agent per Ray actor, or several per host")
    spawn.add_argument("--agents-per-host", type=int, help="agents per host with --placement packed")
    spawn.add_argument("--config", type=_json_object, metavar="JSON",
                       help='settings for the pool\'s agents as a JSON object, e.g. for llm: '
                       '\'{"base_url": "http://127.0.0.1:8000/v1", "model": "qwen"}\' (no secrets)')

    scale = command("scale", _scale, "set a pool's size: start or stop agents until it has N")
    scale.add_argument("pool", help="pool name (see `hive status`)")
    scale.add_argument("count", type=int, help="agents the pool should have")

    submit = command("submit", _submit, "submit a task and print its result")
    submit.add_argument("target", help="agent type (or capability with --capability, pool with --pool)")
    submit.add_argument("payload", nargs="?", default="null", help="JSON payload (default: null)")
    route = submit.add_mutually_exclusive_group()
    route.add_argument("--capability", action="store_true", help="TARGET is a capability")
    route.add_argument("--pool", action="store_true", help="TARGET is a pool name")
    submit.add_argument("--timeout", type=float, help="seconds until the task times out")
    submit.add_argument("--priority", type=int, default=0, help="higher runs first (default: 0)")
    waiting = submit.add_mutually_exclusive_group()
    waiting.add_argument("--no-wait", action="store_true", help="print the task id and return")
    waiting.add_argument("--stream", action="store_true",
                         help="print the task's parts as its agent yields them (text as it comes, "
                         "other parts a JSON line each); Ctrl-C cancels the task")

    tasks = command("tasks", _tasks, "recent tasks, newest first")
    tasks.add_argument("--state", choices=["queued", "running", "succeeded", "failed", "cancelled", "timed_out"],
                       help="only tasks in this state")
    tasks.add_argument("--pool", help="only tasks of this pool")
    tasks.add_argument("--limit", type=int, default=20, help="at most this many (default: 20)")
    tasks.add_argument("--json", action="store_true", help="machine-readable output")

    from hive_ray._cli_agent import register as register_agent

    register_agent(commands, parents=[common])  # hive agent ask | tell | state

    from hive_ray._cli_topic import register as register_topic

    register_topic(commands, parents=[common])  # hive topic publish | subscribe | unsubscribe | ...

    from hive_ray._perf_cli import register as register_perf

    register_perf(commands, parents=[common])  # hive perf report | baseline save | baseline compare
    return parser


# ---------------------------------------------------------------------- helpers
def _attach() -> Any:
    from hive_ray._cli_up import settings_for
    from hive_ray._client import Hive

    return Hive.connect(settings=settings_for(), embedded=False)


def _payload(text: str, what: str = "the payload",
             examples: str = "quote strings, e.g. '\"hello\"' or '{\"rounds\": 1000}'") -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        from hive_ray._errors import ConfigurationError

        raise ConfigurationError(f"{what} must be JSON ({error.msg} at column {error.colno}); {examples}") from None


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
        for agent_type, count in (("echo", 4), ("compute", 2), ("sleep", 1), ("coordinator", 1), ("cart", 2)):
            pool = hive.spawn(agent_type, count=count)
            print(f"  pool {pool.name!r}: {plural(pool.size, 'agent')} ready")
        print(f"\n1. echo: {args.tasks} tasks through 4 agents")
        began = time.perf_counter()
        results = hive.map("echo", list(range(args.tasks)), progress=args.verbose)
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
            print(f"   task {handle.task_id[-8:]}: {record.state.value}")  # ids start with their time
        print("\n5. cart: a virtual agent per user, its state saved with every message")
        carts = hive.ask_many("cart", [(f"user-{n % 3}", {"op": "add", "item": item})
                                       for n, item in enumerate(["apple", "pear", "fig", "apple", "kiwi", "plum"])],
                              progress=False, timeout=60)
        alice = hive.agent("cart", "user-0").state()
        print(f"   3 carts; user-0 holds {carts[3]['items']} (version {alice.version}, on {alice.owner})")
        print("\nPools:")
        for pool in hive.pools():
            print(f"  {pool.name:<12} {plural(pool.size, 'agent'):<9} succeeded={pool.succeeded} failed={pool.failed}")
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
def _up(args: argparse.Namespace) -> int:
    from hive_ray._cli_up import up

    return up(args, args.console)


def _down(args: argparse.Namespace) -> int:
    from hive_ray._cli_down import down

    return down(args, args.console)


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
    print(f"{plural(len(nodes), 'node')}:")
    for node in nodes:
        resources = ", ".join(_resource(k, v) for k, v in sorted(node["Resources"].items())
                              if not k.startswith("node:") and k != "object_store_memory")
        agents = by_node.get(node["NodeID"], [])
        print(f"  {node['NodeID'][:12]} {node['NodeManagerAddress']}  {resources}")
        print(f"      {plural(len(agents), 'agent')}{': ' + ', '.join(sorted(agents)[:12]) if agents else ''}"
              f"{' ...' if len(agents) > 12 else ''}")
    print(f"{plural(len(pools), 'pool')}:")
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


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise argparse.ArgumentTypeError(f"not JSON ({error}); quote it, e.g. '{{\"model\": \"qwen\"}}'") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"a JSON object ({{...}}) is needed, not {type(value).__name__}")
    return value


def _spawn(args: argparse.Namespace) -> int:
    hive = _attach()
    options = {key: value for key, value in {
        "num_cpus": args.num_cpus, "num_gpus": args.num_gpus, "memory": args.memory,
        "resources": args.resources, "policy": args.policy, "placement": args.placement,
        "agents_per_host": args.agents_per_host, "config": args.config}.items() if value is not None}
    before = {pool.name: pool.size for pool in hive.pools()}
    pool = hive.spawn(args.agent_type, count=args.count, pool=args.pool, **options)
    print(_pool_line(pool, added=args.count if pool.name in before else None))
    return 0


def _scale(args: argparse.Namespace) -> int:
    hive = _attach()
    print(_pool_line(hive.scale(args.pool, args.count)))
    return 0


def _pool_line(pool: Any, added: int | None = None) -> str:
    """``pool 'echo': added 1 agent; 3 echo agents``, saying if some are still on their way."""
    line = f"pool {pool.name!r}: "
    if added:
        line += f"added {plural(added, 'agent')}; "
    line += plural(pool.size, f"{pool.agent_type} agent")
    if pool.size < pool.desired:
        line += f" of {pool.desired} (the rest are starting)"
    elif pool.size > pool.desired:
        line += f" ({pool.size - pool.desired} stopping)"
    return line


def _submit(args: argparse.Namespace) -> int:
    hive = _attach()
    payload = _payload(args.payload)
    route: dict[str, Any] = {}
    if args.capability:
        route["capability"] = args.target
    elif args.pool:
        route["pool"] = args.target
    agent = None if route else args.target
    if args.stream:
        return _stream(args, hive.stream(agent, payload, timeout=args.timeout, priority=args.priority, **route))
    handle = hive.submit(agent, payload, timeout=args.timeout, priority=args.priority, **route)
    if args.no_wait:
        print(handle.task_id)
        return 0
    try:
        _print_json(handle.result())
    except HiveError as error:
        args.console.error(str(error))
        return 1
    return 0


def _stream(args: argparse.Namespace, stream: Any) -> int:
    from hive_ray._streaming import StreamRestart

    text = False  # the last part printed was text: end its line before anything else
    try:
        for part in stream:
            if isinstance(part, StreamRestart):
                args.console.error(f"the task starts over (attempt {part.attempt}): its agent's host was lost")
            elif isinstance(part, str):
                print(part, end="", flush=True)
                text = True
                continue
            else:
                if text:
                    print()
                _print_json(part)
            text = False
    except HiveError as error:
        if text:
            print()
        args.console.error(str(error))
        return 1
    if text:
        print()
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
