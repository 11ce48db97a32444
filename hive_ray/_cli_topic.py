"""``hive topic``: publish to topics, subscribe virtual agents to them, follow their messages.

::

    hive topic publish TOPIC MESSAGE_JSON [--source KEY] [--message-id ID]
                                   deliver a message to every subscribed agent; print the answer
    hive topic subscribe TOPIC TYPE KEY
                                   subscribe one virtual agent to every message of TOPIC
    hive topic unsubscribe TOPIC TYPE KEY
                                   remove that subscription
    hive topic subscriptions [TOPIC]
                                   who receives each topic's messages, as JSON
    hive topic follow TOPIC [--after N] [--idle-timeout S]
                                   print its messages as they come, one JSON line each

The same calls as ``hive.publish``, ``hive.subscribe``, ``hive.unsubscribe``,
``hive.subscriptions`` and ``hive.follow`` (see :mod:`hive_ray._topics`). A
bad topic, key or message is refused before attaching to the cluster.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from hive_ray._cli_agent import MESSAGE_EXAMPLES

TOPIC_HELP = "the topic: 1 to 200 letters, digits or _ . : - (e.g. promotions)"


def register(commands: Any, parents: list[argparse.ArgumentParser] | None = None) -> None:
    """Add the ``topic`` command to the ``hive`` parser's subcommands (``parents``: the options
    every command takes)."""
    parents = parents or []
    description = ("publish messages to topics, subscribe virtual agents to them and follow them (e.g. "
                   "`hive topic subscribe promotions cart user-42`, then `hive topic publish promotions "
                   "'{\"op\": \"add\", \"item\": \"coupon\"}'`)")
    topic = commands.add_parser("topic", help=description, description=description, parents=parents)
    topic.set_defaults(handler=lambda args: _usage(topic), command_name="topic")
    verbs = topic.add_subparsers(title="topic commands")

    def verb(name: str, handler: Any, help_text: str, *, topic_optional: bool = False) -> argparse.ArgumentParser:
        sub = verbs.add_parser(name, help=help_text, description=help_text, parents=parents)
        sub.set_defaults(handler=handler, command_name=f"topic {name}")
        if topic_optional:
            sub.add_argument("topic", metavar="TOPIC", nargs="?", help=TOPIC_HELP + "; default: every topic")
        else:
            sub.add_argument("topic", metavar="TOPIC", help=TOPIC_HELP)
        return sub

    def agent(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("agent_type", metavar="TYPE", help="a virtual agent type (e.g. cart)")
        sub.add_argument("key", metavar="KEY", help="the agent's key (e.g. user-42)")

    publish = verb("publish", _publish, "deliver a message to every virtual agent subscribed to TOPIC, "
                   "once each is accepted; print the answer (sequence, deliveries, task_ids, "
                   "undeliverable, duplicate) as JSON")
    publish.add_argument("message", metavar="MESSAGE_JSON", help="the message as JSON, e.g. '{\"op\": \"view\"}'")
    publish.add_argument("--source", metavar="KEY", help="where it comes from: agent types subscribed to "
                         "TOPIC by type receive it at the agent whose key is KEY (default: none, so only "
                         "agents subscribed one by one receive it)")
    publish.add_argument("--message-id", metavar="ID", help="a message published to TOPIC again with this id "
                         "is not delivered again: the first publish's answer is printed, duplicate true")
    subscribe = verb("subscribe", _subscribe, "subscribe one virtual agent to every message of TOPIC "
                     "(journaled: it outlives restarts); print the answer as JSON")
    agent(subscribe)
    unsubscribe = verb("unsubscribe", _unsubscribe, "remove one agent's subscription to TOPIC; print the "
                       "answer as JSON (removed false: there was none)")
    agent(unsubscribe)
    verb("subscriptions", _subscriptions, "print who receives each topic's messages (or TOPIC's) as JSON: "
         "agent types subscribed by type, and agents subscribed one by one", topic_optional=True)
    follow = verb("follow", _follow, "print TOPIC's messages as they are published, one JSON line each "
                  "(sequence, time, source, message_id, message, deliveries), starting with those kept "
                  "(the last 1,000), and a {\"missed\": true} line when some after --after are no "
                  "longer kept; Ctrl-C stops")
    follow.add_argument("--after", type=_sequence, default=0, metavar="N",
                        help="only messages numbered above N (a sequence printed before: resumes there)")
    follow.add_argument("--idle-timeout", type=_seconds, metavar="S",
                        help="stop after S seconds without a message (default: follow until Ctrl-C)")


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def _sequence(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a sequence number is a whole number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"a sequence number is 0 or more, got {value}")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"seconds, e.g. 5 or 0.5, not {text!r}") from None
    if not value >= 0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"seconds are 0 or more, got {text}")
    return value


def _checked(args: argparse.Namespace) -> None:
    """Refuse a bad topic, key, source or message before attaching to the cluster."""
    from hive_ray._cli import _payload
    from hive_ray._errors import ConfigurationError
    from hive_ray._topics import check_topic
    from hive_ray._virtual import check_key

    try:
        if args.topic is not None:
            check_topic(args.topic)
        for name in ("key", "source"):
            if getattr(args, name, None) is not None:
                check_key(getattr(args, name))
    except ValueError as error:
        raise ConfigurationError(str(error)) from None
    if getattr(args, "message", None) is not None:
        args.message = _payload(args.message, "the message", MESSAGE_EXAMPLES)


def _attach(args: argparse.Namespace) -> Any:
    from hive_ray._cli import _attach

    _checked(args)
    return _attach()


def _publish(args: argparse.Namespace) -> int:
    from hive_ray._cli import _print_json

    hive = _attach(args)
    _print_json(hive.publish(args.topic, args.message, source=args.source, message_id=args.message_id))
    return 0


def _subscribe(args: argparse.Namespace) -> int:
    from hive_ray._api._service import subscriber_refusal
    from hive_ray._cli import _print_json
    from hive_ray._errors import ConfigurationError

    refusal = subscriber_refusal(args.agent_type)
    if refusal is not None:
        raise ConfigurationError(f"{refusal}; subscribe an agent of a virtual type")
    hive = _attach(args)
    _print_json(hive.subscribe(args.topic, args.agent_type, args.key))
    return 0


def _unsubscribe(args: argparse.Namespace) -> int:
    from hive_ray._cli import _print_json

    _print_json(_attach(args).unsubscribe(args.topic, args.agent_type, args.key))
    return 0


def _subscriptions(args: argparse.Namespace) -> int:
    from hive_ray._cli import _print_json

    _print_json(_attach(args).subscriptions(args.topic))
    return 0


def _follow(args: argparse.Namespace) -> int:
    hive = _attach(args)
    for message in hive.follow(args.topic, after=args.after, idle_timeout=args.idle_timeout):
        print(json.dumps(message, separators=(",", ":"), default=str), flush=True)
    return 0
