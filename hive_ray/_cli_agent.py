"""``hive agent``: virtual agents from the command line, addressed by type and key.

::

    hive agent ask TYPE KEY MESSAGE_JSON [--timeout S] [--message-id ID]
                                   send a message, wait, print the answer as JSON
    hive agent tell TYPE KEY MESSAGE_JSON [--message-id ID]
                                   send it without waiting; print the message's task id
    hive agent state TYPE KEY      the saved state, version, owner and activation, as JSON

A message is a task of the agent's type whose affinity key is its key
(``hive.agent(TYPE, KEY).ask_sync(message)``); ``hive tasks`` lists it. Its
first message activates the agent. A type that no pool runs as virtual agents
is refused before anything is sent: the orchestrator would run it as an
ordinary task.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from typing import Any

MESSAGE_EXAMPLES = "quote it for the shell, e.g. '{\"op\": \"view\"}' (an object) or '\"hello\"' (a string)"


def register(commands: Any, parents: list[argparse.ArgumentParser] | None = None) -> None:
    """Add the ``agent`` command to the ``hive`` parser's subcommands (``parents``: the options
    every command takes)."""
    parents = parents or []
    description = ("talk to a virtual agent, addressed by its type and key (e.g. `hive agent ask cart "
                   "user-42 '{\"op\": \"view\"}'`); its first message activates it")
    agent = commands.add_parser("agent", help=description, description=description, parents=parents)
    agent.set_defaults(handler=lambda args: _usage(agent), command_name="agent")
    verbs = agent.add_subparsers(title="agent commands")

    def verb(name: str, handler: Any, help_text: str) -> argparse.ArgumentParser:
        sub = verbs.add_parser(name, help=help_text, description=help_text, parents=parents)
        sub.set_defaults(handler=handler, command_name=f"agent {name}")
        sub.add_argument("agent_type", metavar="TYPE", help="a virtual agent type that a pool runs (e.g. cart)")
        sub.add_argument("key", metavar="KEY", help="the agent's key (e.g. user-42)")
        return sub

    ask = verb("ask", _ask, "send a virtual agent a message, wait for its answer and print it as JSON "
               "(exit 1 if its handler raised)")
    ask.add_argument("message", metavar="MESSAGE_JSON", help="the message as JSON, e.g. '{\"op\": \"view\"}'")
    ask.add_argument("--timeout", type=float, metavar="S",
                     help="seconds until the message is cancelled if not answered (default: none)")
    ask.add_argument("--message-id", metavar="ID", help="a message sent again with this id is not run "
                     "again: the first sending's answer is printed")
    tell = verb("tell", _tell, "send a virtual agent a message without waiting; print the message's task "
                "id (`hive tasks` lists it)")
    tell.add_argument("message", metavar="MESSAGE_JSON", help="the message as JSON, e.g. '{\"op\": \"view\"}'")
    tell.add_argument("--message-id", metavar="ID", help="a message sent again with this id is not run "
                      "again: the first sending's task id is printed")
    verb("state", _state, "print a virtual agent's saved state, version, owner and activation as JSON")


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def _agent(args: argparse.Namespace) -> Any:
    """The agent named by ``TYPE KEY``, once the key and the message are checked (no cluster
    is attached for a mistake in them)."""
    from hive_ray._cli import _attach, _payload
    from hive_ray._errors import ConfigurationError
    from hive_ray._virtual import check_key

    try:
        check_key(args.key)
    except ValueError as error:
        raise ConfigurationError(str(error)) from None
    if getattr(args, "message", None) is not None:
        args.message = _payload(args.message, "the message", MESSAGE_EXAMPLES)
    return _attach().agent(args.agent_type, args.key)


def _ask(args: argparse.Namespace) -> int:
    from hive_ray._cli import _print_json

    ref = _agent(args)
    ref.state()  # an unknown or non-virtual type fails here, naming the virtual types that run
    _print_json(ref.ask_sync(args.message, timeout=args.timeout, message_id=args.message_id))
    return 0


def _tell(args: argparse.Namespace) -> int:
    ref = _agent(args)
    ref.state()
    print(ref.tell(args.message, message_id=args.message_id).task_id)
    return 0


def _state(args: argparse.Namespace) -> int:
    from hive_ray._cli import _print_json

    answer = dataclasses.asdict(_agent(args).state())
    try:
        json.dumps(answer["state"], default=str)
    except (TypeError, ValueError):  # keys JSON cannot hold, or a reference cycle: as the API does
        answer["state"] = repr(answer["state"])
    _print_json(answer)
    return 0
