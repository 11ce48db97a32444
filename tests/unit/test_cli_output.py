"""The CLI's output: plurals, the status line's two modes, quiet mode's log, and that every
flag is explained in --help and in the README."""

from __future__ import annotations

import argparse
import io
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from hive_ray._cli import build_parser
from hive_ray._cli_output import StatusLine, is_terminal, plural, rotate

ROOT = Path(__file__).resolve().parents[2]


def test_plural():
    assert plural(0, "agent") == "0 agents"
    assert plural(1, "agent") == "1 agent"
    assert plural(2, "echo agent") == "2 echo agents"
    assert plural(1, "process", "processes") == "1 process"
    assert plural(3, "process", "processes") == "3 processes"


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_without_a_terminal_a_line_is_written_per_change_and_a_summary_at_most_a_minute():
    stream, clock = io.StringIO(), Clock()
    line = StatusLine(stream, live=False, clock=clock, summary_seconds=60)
    line.show("echo: 2/2 ok=0", "echo:2/2")
    for second in range(1, 59):  # counters change every second; the pools do not
        clock.now = second
        line.show(f"echo: 2/2 ok={second}", "echo:2/2")
    clock.now = 59
    line.show("echo: 1/2 ok=59", "echo:1/2")  # an agent died: a change, at once
    clock.now = 60
    line.show("echo: 1/2 ok=60", "echo:1/2")
    clock.now = 119
    line.show("echo: 1/2 ok=119", "echo:1/2")  # a minute since the last line
    clock.now = 500
    line.show("echo: 1/2 ok=119", "echo:1/2")  # nothing changed at all: nothing written
    line.end()
    written = stream.getvalue()
    assert "\r" not in written
    assert [entry.split(" ", 1)[1] for entry in written.splitlines()] == [
        "echo: 2/2 ok=0", "echo: 1/2 ok=59", "echo: 1/2 ok=119"]


def test_on_a_terminal_the_line_is_rewritten_in_place():
    stream = io.StringIO()
    line = StatusLine(stream, live=True)
    line.show("echo: 2/2 ok=100", "x")
    line.show("echo: 2/2 ok=1", "x")
    line.end()
    written = stream.getvalue()
    assert written.count("\r") == 2 and written.count("\n") == 1 and written.endswith("\n")
    last = written.rsplit("\r", 1)[1]
    assert last.rstrip().endswith("ok=1") and len(last.rstrip("\n")) == len(written.split("\r")[1])


def test_only_a_terminal_counts_as_one(tmp_path):
    assert not is_terminal(io.StringIO())
    with open(tmp_path / "out", "w") as file:
        assert not is_terminal(file)


def test_the_log_is_rotated_past_its_limit(tmp_path):
    log = tmp_path / "hive.log"
    rotate(log, limit=10)  # none yet: nothing happens
    log.write_text("x" * 11)
    rotate(log, limit=10)
    assert not log.exists() and (tmp_path / "hive.log.1").read_text() == "x" * 11


def test_quiet_mode_keeps_hive_lines_on_the_terminal_and_the_rest_in_the_log(tmp_path):
    code = textwrap.dedent(f"""
        import logging, os, sys
        from pathlib import Path
        from hive_ray._cli_output import open_console
        console = open_console(Path({str(tmp_path)!r}), verbose=False, command="test")
        print("hive's own line")
        console.error("a hive error")
        logging.getLogger("ray.serve").warning("Started Serve in namespace serve")
        os.write(2, b"[C++] Failed to connect to GCS\\n")
        os.write(1, b"raw stdout from a library\\n")
        print("to stderr", file=sys.stderr)
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "hive's own line\n"
    assert done.stderr == "hive: a hive error\n"
    log = (tmp_path / "hive.log").read_text()
    for line in ("Started Serve", "Failed to connect to GCS", "raw stdout from a library", "to stderr",
                 "hive test (pid"):
        assert line in log
    assert oct((tmp_path / "hive.log").stat().st_mode & 0o777) == "0o600"


# ---------------------------------------------------------------------- flags, help and README
def _commands(parser: argparse.ArgumentParser, prefix: str = "") -> dict[str, argparse.ArgumentParser]:
    found = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found[f"{prefix}{name}"] = sub
                found.update(_commands(sub, f"{prefix}{name} "))
    return found


def test_every_flag_of_every_command_is_explained_in_help():
    commands = _commands(build_parser())
    assert {"up", "down", "status", "spawn", "scale", "submit", "tasks", "types", "demo", "perf report"} <= set(commands)
    for name, sub in commands.items():
        for action in sub._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            assert action.help, f"`hive {name}` {action.option_strings or action.dest} has no help text"


def _readme_cli_section() -> str:
    readme = (ROOT / "README.md").read_text()
    return readme.split("## The CLI", 1)[1].split("\n## ", 1)[0]


def test_every_command_and_flag_is_in_the_readme():
    section = _readme_cli_section()
    missing = []
    for name, sub in _commands(build_parser()).items():
        if not re.search(rf"hive {re.escape(name)}\b", section):
            missing.append(f"hive {name}")
        for action in sub._actions:
            for option in action.option_strings:
                if option.startswith("--") and option != "--help" and option not in section:
                    missing.append(f"hive {name} {option}")
    assert not missing, f"README's CLI section does not mention: {', '.join(sorted(set(missing)))}"


def test_spawn_says_it_adds_and_scale_sets():
    commands = _commands(build_parser())
    assert "added" in commands["spawn"].description and "hive scale" in commands["spawn"].description
    assert "set" in commands["scale"].description
    section = _readme_cli_section()
    assert "adds" in section and "hive scale" in section


@pytest.mark.parametrize("argv", [["up", "--verbose"], ["--verbose", "up"], ["up", "-v"]])
def test_verbose_is_accepted_before_and_after_the_command(argv):
    assert build_parser().parse_args(argv).verbose is True
    assert build_parser().parse_args(["up"]).verbose is False


def test_the_hints_quote_the_key_path_and_use_the_versioned_route(tmp_path):
    import shlex

    from hive_ray._cli_up import hints
    from hive_ray._config import load_config
    from hive_ray._settings import Settings

    state = tmp_path / "my state"
    settings = Settings(state_dir=state)
    lines = hints(settings, load_config(None), api_url="http://127.0.0.1:8123")
    curl = next(line for line in lines if line.startswith("curl"))
    assert curl.endswith(" http://127.0.0.1:8123/v1/pools")
    assert f"$(cat {shlex.quote(str(state / 'api_key'))})" in curl
    assert shlex.split(curl)[2] == f"Authorization: Bearer $(cat {shlex.quote(str(state / 'api_key'))})"
    assert "hive submit echo '{\"hello\": \"world\"}'" in lines and "hive status" in lines
    assert not [line for line in hints(settings, load_config(None), api_url=None) if "curl" in line]
