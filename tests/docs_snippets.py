"""The code blocks of README.md and docs/*.md, and how each is run (no Ray here: pure parsing).

Every fenced block is one of:

* ``python``: run in a real Jupyter kernel, one kernel per document, blocks in
  document order (a later block sees the names an earlier one defined);
* ``bash``/``sh``/``shell``: run by ``bash -e -o pipefail`` in the document's
  environment (a fresh HOME; see ``tests/e2e/test_docs_snippets.py``);
* ``toml``: parsed, and an entry-point table checked against the group the
  agent registry reads;
* untagged or ``text`` whose every line starts with ``hive ``: a synopsis of
  the CLI, checked against each command's ``--help`` (the command exists and
  knows every flag shown);
* anything else, or any block that cannot run here (a cloud account, a
  Kubernetes cluster, a benchmark that takes minutes): preceded by an explicit
  marker on its own line, ``<!-- not-run: why -->``, which the test reports as
  a skip with that reason. A block that is neither runnable nor marked fails.
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parent.parent

PYTHON = ("python", "py", "python3")
SHELL = ("bash", "sh", "shell", "console")
_FENCE = re.compile(r"^(?P<indent> {0,3})(?P<fence>`{3,}|~{3,})\s*(?P<info>[^`\s]*)[^`]*$")
_NOT_RUN = re.compile(r"^\s*<!--\s*not-run:\s*(?P<reason>.*?)\s*-->\s*$")


@dataclass(frozen=True)
class Block:
    """One fenced code block of a document."""

    document: str  # path relative to the repository
    number: int  # 1-based, in document order
    line: int  # 1-based line of the opening fence
    language: str  # the info string's first word, lower case ("" if none)
    code: str
    not_run: str | None  # the reason of a not-run marker right before it

    @property
    def kind(self) -> str:
        """``python``, ``shell``, ``toml``, ``synopsis``, ``not-run`` or ``unrunnable``."""
        if self.not_run is not None:
            return "not-run"
        if self.language in PYTHON:
            return "python"
        if self.language in SHELL:
            return "shell"
        if self.language == "toml":
            return "toml"
        lines = [line for line in self.code.splitlines() if line.strip()]
        # A synopsis: every line a `hive` command, or an indented continuation of the one above.
        if self.language in ("", "text") and lines and lines[0].startswith("hive ") and all(
                line.startswith(("hive ", " ")) for line in lines):
            return "synopsis"
        return "unrunnable"

    @property
    def label(self) -> str:
        """How failures name the block: ``README.md block 2 (line 26, python)``."""
        return f"{self.document} block {self.number} (line {self.line}, {self.language or 'untagged'})"

    @property
    def test_id(self) -> str:
        return f"{self.document}:{self.line}:{self.kind}"


def documents() -> list[Path]:
    """README.md and every Markdown file under docs/."""
    return [REPOSITORY / "README.md", *sorted((REPOSITORY / "docs").glob("*.md"))]


def blocks_of(path: Path) -> list[Block]:
    """The fenced code blocks of one Markdown file, in order."""
    relative = str(path.relative_to(REPOSITORY))
    lines = path.read_text(encoding="utf-8").splitlines()
    found: list[Block] = []
    index = 0
    while index < len(lines):
        opening = _FENCE.match(lines[index])
        if opening is None:
            index += 1
            continue
        fence = opening.group("fence")
        body: list[str] = []
        end = index + 1
        while end < len(lines) and not lines[end].lstrip().startswith(fence):
            body.append(lines[end])
            end += 1
        found.append(Block(
            document=relative, number=len(found) + 1, line=index + 1,
            language=opening.group("info").lower(), code="\n".join(body) + "\n",
            not_run=_marker_before(lines, index)))
        index = end + 1
    return found


def all_blocks() -> list[Block]:
    return [block for path in documents() for block in blocks_of(path)]


def _marker_before(lines: list[str], index: int) -> str | None:
    """The reason of a ``<!-- not-run: ... -->`` on the nearest non-blank line above ``index``."""
    above = index - 1
    while above >= 0 and not lines[above].strip():
        above -= 1
    if above < 0:
        return None
    marker = _NOT_RUN.match(lines[above])
    return marker.group("reason") if marker else None


def synopsis_commands(block: Block) -> list[tuple[list[str], list[str]]]:
    """``(command words, flags)`` of each synopsis line: ``hive spawn TYPE -n N [--pool P]``
    gives ``(["spawn"], ["-n", "--pool"])``. The description after two spaces is ignored."""
    commands: list[tuple[list[str], list[str]]] = []
    for line in block.code.splitlines():
        if not line.strip():
            continue
        if line.startswith(" "):  # a continuation: more flags of the command above, or its description
            if line.strip().startswith(("[", "-")) and commands:
                usage = re.split(r"\s{2,}", line.strip(), maxsplit=1)[0]
                command, flags = commands[-1]
                more = re.findall(r"(?<![\w-])(--?[a-zA-Z][\w-]*)", usage)
                commands[-1] = (command, sorted(set(flags) | set(more)))
            continue
        usage = re.split(r"\s{2,}", line.strip(), maxsplit=1)[0]
        words = usage.split()[1:]
        command = []
        for word in words:
            if not re.fullmatch(r"[a-z][a-z-]*", word):
                break
            command.append(word)
        flags = sorted(set(re.findall(r"(?<![\w-])(--?[a-zA-Z][\w-]*)", usage)))
        commands.append((command, flags))
    return commands


def fresh_environment(home: Path) -> dict[str, str]:
    """The environment of a reader on a fresh machine, for the processes that run the blocks.

    A fresh ``HOME`` (so ``~/.hive`` and ``~/.ray`` are this run's), a private
    ``RAY_TMPDIR`` (no "current cluster" pointer left for anyone else; keep
    ``home`` short, Ray's socket paths live under it), no ``RAY_*``, ``HIVE_*``
    or ``OTEL_*`` variables from the test run, this checkout first on
    ``PYTHONPATH`` and this interpreter's ``bin`` first on ``PATH``.
    """
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("HIVE_", "RAY_", "OTEL_", "PYTEST_", "JUPYTER"))}
    (home / "r").mkdir(parents=True, exist_ok=True)
    env.update({
        "HOME": str(home),
        "RAY_TMPDIR": str(home / "r"),
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")]),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPOSITORY), os.environ.get("PYTHONPATH")])),
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
    })
    return env
