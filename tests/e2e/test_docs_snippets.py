"""Every code block of README.md and docs/*.md, run as a reader would run it (slow tier).

One test per block, in document order (see ``tests/docs_snippets.py`` for how a
block's kind is decided, and the ``<!-- not-run: why -->`` marker):

* Python blocks run in ONE real Jupyter kernel per document, in order, with
  nothing started beforehand: ``Hive.connect()`` starts an embedded local Ray,
  as on a fresh machine. The kernel is shut down (and its Ray with it) before
  the document's shell blocks need a cluster.
* Shell blocks run in ``bash -e -o pipefail``. README.md's run inside a
  ``hive up --no-block`` started here (and ``hive down`` at the end); docs/
  blocks run without one (the sizing measurement starts its own embedded Ray).
  ``curl`` fails on an HTTP error status (``--fail-with-body``), so a command
  that answers 404 fails the test instead of printing the error.
* Everything runs with a fresh ``HOME`` (so ``~/.hive`` is this test's), a
  private ``RAY_TMPDIR`` (no Ray "current cluster" pointer is left for anyone
  else), no ``RAY_ADDRESS``, and this checkout first on ``PYTHONPATH``.
  ``hive up`` serves the API on 8000/9000 as the README says; when another
  process holds those ports, free ones are used and the blocks' ``:8000`` is
  rewritten to match (the test output says so).

A failure names the block (``README.md block 6 (line 98, bash)``), the exit
code or Python traceback, and the output, so that whoever changes a block, or
merges a change that breaks one, can see which and why.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.docs_snippets import REPOSITORY, Block, all_blocks, fresh_environment, synopsis_commands

# Each block has its own bound (CELL_TIMEOUT, SHELL_TIMEOUT); the test's is above them.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]

BLOCKS = all_blocks()
#: Documents whose shell blocks need a running `hive up` cluster.
CLUSTER_DOCUMENTS = {"README.md"}
CELL_TIMEOUT = 600
SHELL_TIMEOUT = 900
#: Prepended to every shell block: an HTTP error answer is a failure, as it is for a reader.
CURL = 'curl() { command curl --silent --show-error --fail-with-body "$@"; echo; }\n'


def _port_free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _tail(text: str, characters: int = 6000) -> str:
    return text if len(text) <= characters else "…" + text[-characters:]


@dataclass
class Sandbox:
    """The environment every block of this module runs in, and what runs in it."""

    home: Path
    env: dict[str, str]
    ports: dict[int, int]  # documented port -> port used
    kernels: dict[str, Any] = field(default_factory=dict)  # document -> (manager, client)
    cluster_up: bool = False
    notes: list[str] = field(default_factory=list)

    def run(self, command: list[str] | str, timeout: float, *, shell: bool = False) -> subprocess.CompletedProcess[str]:
        return subprocess.run(command, shell=shell, executable="/bin/bash" if shell else None,
                              capture_output=True, text=True, env=self.env, cwd=REPOSITORY,
                              timeout=timeout, stdin=subprocess.DEVNULL)

    def hive(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return self.run([str(Path(sys.executable).with_name("hive")), *args], timeout)

    def rewrite(self, code: str) -> str:
        for documented, used in self.ports.items():
            if documented != used:
                code = code.replace(f"127.0.0.1:{documented}", f"127.0.0.1:{used}")
        return code


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Sandbox]:
    # Short: Ray's socket paths live under RAY_TMPDIR and must stay below ~107 characters.
    home = Path(tempfile.mkdtemp(prefix="hd-", dir="/tmp"))
    env = fresh_environment(home)
    ports = {}
    for documented, setting in ((8000, "HIVE_HTTP_PORT"), (9000, "HIVE_GRPC_PORT")):
        used = documented if _port_free(documented) else _free_port()
        ports[documented] = used
        if used != documented:
            env[setting] = str(used)
    box = Sandbox(home, env, ports)
    if ports != {8000: 8000, 9000: 9000}:
        box.notes.append(f"ports in use here; the blocks ran with {ports} (documented -> used)")
    try:
        yield box
    finally:
        for document in list(box.kernels):
            _stop_kernel(box, document)
        if box.cluster_up:
            down = box.hive("down")
            assert down.returncode == 0, f"`hive down` failed after the README blocks:\n{down.stdout}{down.stderr}"
        shutil.rmtree(home, ignore_errors=True)
        for note in box.notes:
            print(f"docs snippets: {note}")


# ---------------------------------------------------------------------- kernels
def _kernel(box: Sandbox, document: str) -> Any:
    if document not in box.kernels:
        from jupyter_client.manager import KernelManager

        manager = KernelManager(kernel_name="python3")
        manager.start_kernel(env=box.env, cwd=str(REPOSITORY))
        client = manager.client()
        client.start_channels()
        client.wait_for_ready(timeout=120)
        box.kernels[document] = (manager, client)
    return box.kernels[document][1]


def _stop_kernel(box: Sandbox, document: str) -> None:
    manager, client = box.kernels.pop(document)
    try:
        # Not part of any block: stop an embedded Ray the blocks started, before the kernel goes.
        client.execute_interactive("import ray as _ray\n_ray.shutdown()", timeout=120)
        client.stop_channels()
    finally:
        manager.shutdown_wait_time = 30.0
        manager.shutdown_kernel(now=False)


def _run_python(box: Sandbox, block: Block) -> None:
    if block.document not in CLUSTER_DOCUMENTS:
        _ensure_no_cluster(box)
    client = _kernel(box, block.document)
    outputs: list[str] = []

    def keep(message: dict[str, Any]) -> None:
        content = message.get("content", {})
        if message["msg_type"] == "stream":
            outputs.append(content.get("text", ""))
        elif message["msg_type"] in ("execute_result", "display_data"):
            outputs.append(content.get("data", {}).get("text/plain", ""))

    reply = client.execute_interactive(block.code, timeout=CELL_TIMEOUT, output_hook=keep)
    content = reply["content"]
    if content["status"] != "ok":
        import re

        traceback = re.sub(r"\x1b\[[0-9;]*m", "", "\n".join(content.get("traceback", [])))
        pytest.fail(f"{block.label} raised {content.get('ename')}: {content.get('evalue')}\n"
                    f"{_tail(traceback)}\n--- output ---\n{_tail(''.join(outputs))}", pytrace=False)
    if block is _last_python_block(block.document):
        _stop_kernel(box, block.document)


def _last_python_block(document: str) -> Block | None:
    python = [block for block in BLOCKS if block.document == document and block.kind == "python"]
    return python[-1] if python else None


# ---------------------------------------------------------------------- shell
def _ensure_no_cluster(box: Sandbox) -> None:
    """Blocks of other documents run as on a machine without a cluster (the sizing one says so)."""
    if not box.cluster_up:
        return
    down = box.hive("down")
    box.cluster_up = False
    if down.returncode != 0:
        pytest.fail(f"`hive down` after the README's blocks failed:\n{_tail(down.stdout + down.stderr)}",
                    pytrace=False)


def _ensure_cluster(box: Sandbox) -> None:
    if box.cluster_up:
        return
    for document in list(box.kernels):
        _stop_kernel(box, document)
    up = box.hive("up", "--no-block", timeout=600)
    if up.returncode != 0:
        log = box.home / ".hive" / "ray-head.log"
        head = _tail(log.read_text(errors="replace"), 3000) if log.exists() else "(no ray-head.log)"
        pytest.fail(f"`hive up --no-block` (needed by the README's shell blocks) failed with exit "
                    f"{up.returncode}:\n{_tail(up.stdout + up.stderr)}\n--- ~/.hive/ray-head.log ---\n{head}",
                    pytrace=False)
    box.cluster_up = True


def _run_shell(box: Sandbox, block: Block) -> None:
    if block.document in CLUSTER_DOCUMENTS:
        _ensure_cluster(box)
    else:
        _ensure_no_cluster(box)
    code = box.rewrite(block.code)
    ran = box.run(["bash", "-e", "-o", "pipefail", "-c", CURL + code], SHELL_TIMEOUT)
    print(f"{block.label}:\n{_tail(ran.stdout, 4000)}")  # shown with -rP, and in CI logs on failure
    if ran.returncode != 0:
        pytest.fail(f"{block.label} failed with exit {ran.returncode}\n--- stdout ---\n{_tail(ran.stdout)}\n"
                    f"--- stderr ---\n{_tail(ran.stderr)}\n--- the block as run ---\n{code}", pytrace=False)


def _check_synopsis(box: Sandbox, block: Block) -> None:
    for command, flags in synopsis_commands(block):
        helped = box.hive(*command, "--help", timeout=120)
        shown = " ".join(["hive", *command])
        assert helped.returncode == 0, f"{block.label}: `{shown} --help` failed:\n{helped.stderr}"
        missing = [flag for flag in flags if flag not in helped.stdout]
        assert not missing, f"{block.label}: `{shown}` does not know {missing}; its --help says:\n{helped.stdout}"


def _check_toml(block: Block) -> None:
    from hive_ray._registry import ENTRY_POINT_GROUP

    tomllib = pytest.importorskip("tomllib", reason="reading TOML needs Python 3.11 or later")
    try:
        data = tomllib.loads(block.code)
    except tomllib.TOMLDecodeError as error:
        pytest.fail(f"{block.label} is not valid TOML: {error}", pytrace=False)
    groups = data.get("project", {}).get("entry-points", {})
    assert groups, f"{block.label}: no [project.entry-points] table"
    assert set(groups) == {ENTRY_POINT_GROUP}, (
        f"{block.label}: the agent registry reads the entry-point group {ENTRY_POINT_GROUP!r}, "
        f"the block declares {sorted(groups)}")
    for name, target in groups[ENTRY_POINT_GROUP].items():
        module, _, attribute = target.partition(":")
        assert module and attribute and all(part.isidentifier() for part in [*module.split("."), attribute]), (
            f"{block.label}: {name} = {target!r} is not 'package.module:Class'")


# ---------------------------------------------------------------------- the tests
@pytest.mark.parametrize("block", BLOCKS, ids=[block.test_id for block in BLOCKS])
def test_block(block: Block, sandbox: Sandbox) -> None:
    if block.kind == "not-run":
        pytest.skip(f"{block.label}: not run: {block.not_run}")
    if block.kind == "unrunnable":
        pytest.fail(f"{block.label} cannot be run by this test and has no marker: make it a "
                    "python, bash or toml block, or put `<!-- not-run: why -->` on the line above it",
                    pytrace=False)
    if block.kind == "python":
        _run_python(sandbox, block)
    elif block.kind == "shell":
        _run_shell(sandbox, block)
    elif block.kind == "synopsis":
        _check_synopsis(sandbox, block)
    elif block.kind == "toml":
        _check_toml(block)
