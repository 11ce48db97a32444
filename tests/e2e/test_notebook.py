"""docs/quickstart.ipynb, executed by nbclient in a real Jupyter kernel, as a reader would.

The kernel runs on a fresh HOME with nothing started beforehand, so
``Hive.connect()`` starts an embedded local Ray, exactly as on a new machine (and creates
``~/.ray/auth_token``, readable by its owner only).
Every cell must run without an error, and the cells tagged for the record
lists must each render as ONE HTML table (the check a reader makes by eye).
The executed notebook is kept in the test artifacts.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from pathlib import Path

import pytest

from tests.docs_snippets import REPOSITORY, fresh_environment

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

NOTEBOOK = REPOSITORY / "docs" / "quickstart.ipynb"
#: Tagged cells whose rich output must be one HTML table.
TABLES = ("pool", "pools", "agents", "tasks", "dead_letters", "restarts", "agent", "dataframe")


def _html(cell: dict) -> str:
    for output in cell.get("outputs", []):
        if output.get("output_type") in ("execute_result", "display_data") and "text/html" in output.get("data", {}):
            return output["data"]["text/html"]
    return ""


def _rows(html: str) -> list[str]:
    return re.findall(r"<tr>(.*?)</tr>", html, re.S)


def test_quickstart_notebook_runs_and_its_lists_render_as_tables(artifacts_dir: Path) -> None:
    nbclient = pytest.importorskip("nbclient")
    nbformat = pytest.importorskip("nbformat")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    home = Path(tempfile.mkdtemp(prefix="hn-", dir="/tmp"))
    try:
        client = nbclient.NotebookClient(notebook, kernel_name="python3", timeout=600,
                                         resources={"metadata": {"path": str(REPOSITORY)}})
        try:
            client.execute(env=fresh_environment(home))
        finally:
            nbformat.write(notebook, artifacts_dir / "quickstart-executed.ipynb")
        # The embedded Hive.connect() on a fresh HOME created Ray's token, readable by its owner only.
        token = home / ".ray" / "auth_token"
        assert oct(token.stat().st_mode & 0o777) == "0o600"
    finally:
        shutil.rmtree(home, ignore_errors=True)
    by_tag = {tag: cell for cell in notebook.cells for tag in cell.get("metadata", {}).get("tags", [])}
    assert set(TABLES) <= set(by_tag), sorted(by_tag)
    for tag in TABLES:
        html = _html(by_tag[tag])
        assert html.count("<table") == 1, f"the {tag!r} cell did not render as one table:\n{html[:2000]}"
    # The tables hold what the notebook did.
    pools = _html(by_tag["pools"])
    assert all(name in pools for name in (">echo<", ">sleep<", ">strict<"))
    assert len(_rows(_html(by_tag["agents"]))) >= 1 + 5  # a header row and every agent
    tasks = _html(by_tag["tasks"])
    assert len(_rows(tasks)) == 1 + 10 and "timed_out" in tasks and "cancelled" in tasks
    assert ">failed<" in _html(by_tag["dead_letters"]) and "rounds" in _html(by_tag["dead_letters"])
    assert "0 restarts" in _html(by_tag["restarts"])
    assert "Agent echo" in _html(by_tag["agent"])
    assert "task_id" in _html(by_tag["dataframe"])
