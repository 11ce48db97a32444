"""``hive agent ask|tell|state`` over a fake client: what each sends and prints (no Ray).

The commands against a real cluster, as a user types them, are in
``tests/e2e/test_cli.py`` (``test_agent_commands_ask_tell_and_read_a_virtual_cart``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from hive_ray._errors import UnknownAgentTypeError


@dataclass(frozen=True)
class FakeState:
    agent_type: str
    key: str
    pool: str
    owner: str | None
    version: int
    state: Any
    activation: dict[str, Any] | None


class FakeRef:
    def __init__(self, hive: FakeHive, agent_type: str, key: str) -> None:
        self.hive, self.agent_type, self.key = hive, agent_type, key

    def state(self) -> FakeState:
        self.hive.calls.append(("state", self.agent_type, self.key))
        if self.agent_type != "cart":
            raise UnknownAgentTypeError(f"no pool runs virtual agent type {self.agent_type!r}; running "
                                        "virtual types: cart. Spawn one first: hive.spawn(YourVirtualAgent)")
        return FakeState("cart", self.key, "cart", "cart-0", 1, self.hive.saved, None)

    def ask_sync(self, message: Any, *, timeout: float | None = None, message_id: str | None = None) -> Any:
        self.hive.calls.append(("ask", message, timeout, message_id))
        return {"key": self.key, "items": {"apple": 2}, "count": 2}

    def tell(self, message: Any, *, message_id: str | None = None) -> Any:
        self.hive.calls.append(("tell", message, message_id))
        return type("Handle", (), {"task_id": "t-1"})()


class FakeHive:
    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.saved: Any = {"items": {"apple": 2}}

    def agent(self, agent_type: str, key: str) -> FakeRef:
        return FakeRef(self, agent_type, key)


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


def test_ask_sends_the_message_and_prints_the_answer_as_json(hive: FakeHive, capsys: Any) -> None:
    assert run("agent", "ask", "cart", "user-42", '{"op": "add", "item": "apple", "quantity": 2}',
               "--timeout", "5", "--message-id", "m-1") == 0
    assert json.loads(capsys.readouterr().out) == {"key": "user-42", "items": {"apple": 2}, "count": 2}
    assert hive.calls == [("state", "cart", "user-42"),
                          ("ask", {"op": "add", "item": "apple", "quantity": 2}, 5.0, "m-1")]


def test_tell_prints_the_task_id(hive: FakeHive, capsys: Any) -> None:
    assert run("agent", "tell", "cart", "user-42", '"hello"') == 0
    assert capsys.readouterr().out == "t-1\n"
    assert hive.calls[-1] == ("tell", "hello", None)


def test_state_prints_json_and_text_for_a_state_json_cannot_hold(hive: FakeHive, capsys: Any) -> None:
    assert run("agent", "state", "cart", "user-42") == 0
    assert json.loads(capsys.readouterr().out) == {
        "agent_type": "cart", "key": "user-42", "pool": "cart", "owner": "cart-0", "version": 1,
        "state": {"items": {"apple": 2}}, "activation": None}
    hive.saved = {("a", 1): {3}}
    assert run("agent", "state", "cart", "user-42") == 0
    assert json.loads(capsys.readouterr().out)["state"] == "{('a', 1): {3}}"


def test_a_type_that_is_not_virtual_is_refused_before_a_message_is_sent(hive: FakeHive, capsys: Any) -> None:
    assert run("agent", "ask", "echo", "k", "1") == 1
    assert "no pool runs virtual agent type 'echo'" in capsys.readouterr().err
    assert [call[0] for call in hive.calls] == ["state"]


@pytest.mark.parametrize(("argv", "words"), [
    (["ask", "cart", "k", "{not json"], "hive: the message must be JSON"),
    (["tell", "cart", "k", "hello"], "quote it for the shell, e.g. '{\"op\": \"view\"}'"),
    (["state", "cart", "k" * 257], "a virtual agent's key is at most 256 characters, got 257"),
    (["ask", "cart", "", "1"], "a virtual agent's key must be a non-empty string"),
])
def test_a_bad_message_or_key_is_refused_before_anything_is_asked(
        hive: FakeHive, capsys: Any, argv: list[str], words: str) -> None:
    assert run("agent", *argv) == 1
    assert words in capsys.readouterr().err
    assert hive.calls == []


def test_the_group_alone_prints_its_usage(hive: FakeHive, capsys: Any) -> None:
    assert run("agent") == 2
    out = capsys.readouterr().out
    assert all(verb in out for verb in ("ask", "tell", "state"))
