"""Every code block in README.md and docs/ is run by tests/e2e/test_docs_snippets.py, or says why not.

This fast check fails at once when a block is added that the slow tier could
not run and that carries no ``<!-- not-run: why -->`` marker.
"""

from __future__ import annotations

import re

from tests.docs_snippets import all_blocks, blocks_of, documents


def test_every_block_is_runnable_or_marked_with_a_reason() -> None:
    blocks = all_blocks()
    assert {block.document for block in blocks} >= {"README.md", "docs/ADMIN.md"}
    unrunnable = [block.label for block in blocks if block.kind == "unrunnable"]
    assert unrunnable == [], "add `<!-- not-run: why -->` above these, or make them runnable"
    assert all(block.not_run for block in blocks if block.kind == "not-run"), "a not-run marker needs a reason"


def test_every_marker_sits_right_above_a_block() -> None:
    for path in documents():
        text = path.read_text(encoding="utf-8")
        markers = len(re.findall(r"<!--\s*not-run:", text))
        assert markers == sum(1 for block in blocks_of(path) if block.not_run is not None), path


def test_the_readme_runs_its_notebook_snippets_and_its_api_calls() -> None:
    kinds = {block.kind for block in all_blocks() if block.document == "README.md"}
    assert {"python", "shell", "toml", "synopsis"} <= kinds


def test_parsing_a_document(tmp_path) -> None:
    document = tmp_path / "doc.md"
    document.write_text("text\n\n```python\nx = 1\n```\n\n<!-- not-run: needs a cloud -->\n\n"
                        "```bash\nray up\n```\n\n```\nhive up [--no-block]  starts\n```\n\n````\nnested ```\n````\n")
    import tests.docs_snippets as snippets

    original = snippets.REPOSITORY
    snippets.REPOSITORY = tmp_path
    try:
        blocks = blocks_of(document)
    finally:
        snippets.REPOSITORY = original
    assert [(b.line, b.kind, b.not_run) for b in blocks] == [
        (3, "python", None), (9, "not-run", "needs a cloud"), (13, "synopsis", None), (17, "unrunnable", None)]
    assert blocks[0].code == "x = 1\n" and blocks[3].code == "nested ```\n"
    assert snippets.synopsis_commands(blocks[2]) == [(["up"], ["--no-block"])]
