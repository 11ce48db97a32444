"""``hive topic publish|subscribe|unsubscribe|subscriptions|follow`` over a fake client (no Ray).

The commands against a real cluster, as a user types them, are in
``tests/e2e/test_cli.py`` (``test_topic_commands_publish_subscribe_and_follow``).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest


class FakeHive:
    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.messages = [{"topic": "promotions", "sequence": 7 + n, "time": 1.5, "source": None,
                          "message_id": None, "message": {"n": n}, "deliveries": 1} for n in range(3)]

    def publish(self, topic: str, message: Any = None, *, source: str | None = None,
                message_id: str | None = None) -> dict[str, Any]:
        self.calls.append(("publish", topic, message, source, message_id))
        return {"topic": topic, "sequence": 7, "deliveries": 1, "task_ids": ["t-1"], "undeliverable": [],
                "duplicate": False}

    def subscribe(self, topic: str, agent_type: str, key: str) -> dict[str, Any]:
        self.calls.append(("subscribe", topic, agent_type, key))
        return {"topic": topic, "agent_type": agent_type, "key": key, "added": True}

    def unsubscribe(self, topic: str, agent_type: str, key: str) -> dict[str, Any]:
        self.calls.append(("unsubscribe", topic, agent_type, key))
        return {"topic": topic, "agent_type": agent_type, "key": key, "removed": False}

    def subscriptions(self, topic: str | None = None) -> list[dict[str, Any]]:
        self.calls.append(("subscriptions", topic))
        return [{"topic": topic or "promotions", "agent_types": [], "agents": [{"agent_type": "cart", "key": "k"}]}]

    def follow(self, topic: str, *, after: int = 0, idle_timeout: float | None = None) -> Iterator[dict[str, Any]]:
        self.calls.append(("follow", topic, after, idle_timeout))
        yield from (message for message in self.messages if message["sequence"] > after)


@pytest.fixture
def hive(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> FakeHive:
    import hive_ray._cli as cli

    fake = FakeHive()
    monkeypatch.setenv("HIVE_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setattr(cli, "_attach", lambda: fake)
    return fake


def run(*argv: str) -> int:
    from hive_ray._cli import main

    return main(["--verbose", *argv])  # verbose: the terminal keeps file descriptors 1 and 2


def test_publish_sends_the_message_and_prints_the_answer(hive: FakeHive, capsys: Any) -> None:
    assert run("topic", "publish", "promotions", '{"op": "add", "item": "coupon"}', "--source", "user-42",
               "--message-id", "spring-1") == 0
    assert json.loads(capsys.readouterr().out)["task_ids"] == ["t-1"]
    assert hive.calls == [("publish", "promotions", {"op": "add", "item": "coupon"}, "user-42", "spring-1")]
    assert run("topic", "publish", "news", '"hello"') == 0
    assert hive.calls[-1] == ("publish", "news", "hello", None, None)


def test_subscribe_unsubscribe_and_subscriptions_print_json(hive: FakeHive, capsys: Any) -> None:
    assert run("topic", "subscribe", "promotions", "cart", "user-42") == 0
    assert json.loads(capsys.readouterr().out) == {"topic": "promotions", "agent_type": "cart", "key": "user-42",
                                                   "added": True}
    assert run("topic", "unsubscribe", "promotions", "cart", "user-42") == 0
    assert json.loads(capsys.readouterr().out)["removed"] is False
    assert run("topic", "subscriptions") == 0
    assert json.loads(capsys.readouterr().out)[0]["agents"] == [{"agent_type": "cart", "key": "k"}]
    assert run("topic", "subscriptions", "news") == 0
    capsys.readouterr()
    assert [call for call in hive.calls if call[0] == "subscriptions"] == [("subscriptions", None),
                                                                          ("subscriptions", "news")]


def test_follow_prints_one_json_line_per_message(hive: FakeHive, capsys: Any) -> None:
    assert run("topic", "follow", "promotions", "--after", "7", "--idle-timeout", "2.5") == 0
    lines = capsys.readouterr().out.splitlines()
    assert [json.loads(line)["message"] for line in lines] == [{"n": 1}, {"n": 2}]
    assert json.loads(lines[0])["sequence"] == 8
    assert hive.calls == [("follow", "promotions", 7, 2.5)]
    assert run("topic", "follow", "promotions") == 0  # no idle timeout: until Ctrl-C
    assert hive.calls[-1] == ("follow", "promotions", 0, None)


def test_a_type_known_not_to_be_virtual_is_refused_before_attaching(hive: FakeHive, capsys: Any) -> None:
    assert run("topic", "subscribe", "promotions", "echo", "k") == 1
    assert "agent type 'echo' is not virtual" in capsys.readouterr().err
    assert hive.calls == []


@pytest.mark.parametrize(("argv", "words"), [
    (["publish", "no spaces", "1"], "hive: a topic is 1 to 200 letters, digits or _ . : - (no spaces or slashes)"),
    (["publish", "promotions", "{not json"], "hive: the message must be JSON"),
    (["publish", "promotions", "hello"], "quote it for the shell, e.g. '{\"op\": \"view\"}'"),
    (["publish", "promotions", "1", "--source", "k" * 257], "a virtual agent's key is at most 256 characters"),
    (["subscribe", "a/b", "cart", "k"], "got 'a/b'"),
    (["unsubscribe", "promotions", "cart", ""], "a virtual agent's key must be a non-empty string"),
    (["subscriptions", "x" * 201], "a topic is 1 to 200 letters"),
    (["follow", "bad topic"], "a topic is 1 to 200"),
])
def test_a_bad_topic_key_or_message_is_refused_before_attaching(
        hive: FakeHive, capsys: Any, argv: list[str], words: str) -> None:
    assert run("topic", *argv) == 1
    assert words in capsys.readouterr().err
    assert hive.calls == []


@pytest.mark.parametrize(("argv", "words"), [
    (["follow", "t", "--after", "-1"], "a sequence number is 0 or more"),
    (["follow", "t", "--after", "x"], "a sequence number is a whole number"),
    (["follow", "t", "--idle-timeout", "soon"], "seconds, e.g. 5 or 0.5"),
    (["follow", "t", "--idle-timeout", "nan"], "seconds are 0 or more"),
])
def test_bad_follow_options_are_usage_errors(hive: FakeHive, capsys: Any, argv: list[str], words: str) -> None:
    with pytest.raises(SystemExit) as exited:
        run("topic", *argv)
    assert exited.value.code == 2 and words in capsys.readouterr().err


def test_the_group_alone_prints_its_usage(hive: FakeHive, capsys: Any) -> None:
    assert run("topic") == 2
    out = capsys.readouterr().out
    assert all(verb in out for verb in ("publish", "subscribe", "unsubscribe", "subscriptions", "follow"))
