"""Lists of records as notebook tables (RecordList), and the records' own HTML."""

from __future__ import annotations

import copy
import pickle
from html.parser import HTMLParser

import pytest

from hive_ray._models import RESTART_COLUMNS, AgentInfo, PoolInfo, PoolSpec, TaskRecord
from hive_ray._tables import MAX_HTML_ROWS, RecordList
from hive_ray._task import TaskState


class _Tables(HTMLParser):
    """Counts tables, rows and cells of an HTML fragment, and keeps the cell texts."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.tables = 0
        self.rows: list[list[str]] = []
        self.headers: list[str] = []
        self._cell: list[str] | None = None
        self._kind = ""
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "table":
            self.tables += 1
        elif tag == "tr":
            self.rows.append([])
        elif tag in ("td", "th"):
            self._cell, self._kind = [], tag

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None:
            text = "".join(self._cell)
            (self.headers if self._kind == "th" else self.rows[-1]).append(text)
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def _task(number: int, **changes: object) -> TaskRecord:
    fields = dict(task_id=f"t{number}", pool="echo", agent_type="echo", state=TaskState.SUCCEEDED,
                  created_at=1_700_000_000.0 + number, started_at=1_700_000_000.5 + number,
                  finished_at=1_700_000_000.75 + number, attempts=1, agent_id="echo-0",
                  result={"n": number})
    fields.update(changes)
    return TaskRecord(**fields)


def _agent(number: int) -> AgentInfo:
    return AgentInfo(agent_id=f"echo-{number}", pool="echo", agent_type="echo", state="ready",
                     pid=1000 + number, node_id="ab" * 20, inflight=number, tasks_done=10 * number)


def test_a_record_list_is_a_list():
    tasks = RecordList([_task(1), _task(2)], "tasks")
    assert tasks == [_task(1), _task(2)] and isinstance(tasks, list) and len(tasks) == 2
    assert tasks[0].task_id == "t1" and [t.task_id for t in tasks] == ["t1", "t2"]
    assert isinstance(tasks[:1], RecordList) and tasks[:1] == [_task(1)]
    tasks.append(_task(3))
    assert len(tasks) == 3 and sorted(tasks, key=lambda t: t.task_id)[-1].task_id == "t3"
    for copied in (pickle.loads(pickle.dumps(tasks)), copy.deepcopy(tasks), copy.copy(tasks)):
        assert copied == tasks and isinstance(copied, RecordList) and copied.kind == "tasks"


def test_tasks_render_as_one_table_with_a_row_each_and_escaped_cells():
    evil = _task(2, result="<script>alert(1)</script>")
    tables = _Tables(RecordList([_task(1), evil], "tasks")._repr_html_())
    assert tables.tables == 1
    assert tables.headers == ["task", "state", "pool", "agent", "attempts", "created", "duration",
                              "result or error"]
    body = [row for row in tables.rows if row]
    assert [row[0] for row in body] == ["t1", "t2"] and body[0][1] == "succeeded"
    assert body[0][6] == "250.0 ms"
    assert "<script>" not in RecordList([evil], "tasks")._repr_html_()


def test_pools_agents_and_restarts_have_their_own_columns():
    pool = PoolInfo(name="echo", agent_type="echo", capabilities=[], size=2, desired=3, state="ok",
                    policy="least_loaded", placement="dedicated", queued=4, running=1, succeeded=9,
                    failed=0, agents=[_agent(0), _agent(1)], spec=PoolSpec(name="echo", agent_type="echo"))
    pools = _Tables(RecordList([pool], "pools")._repr_html_())
    assert pools.headers[:4] == ["pool", "type", "state", "agents"] and pools.rows[-1][3] == "2/3"
    agents = _Tables(RecordList(pool.agents, "agents")._repr_html_())
    assert agents.headers[:4] == ["agent", "pool", "type", "state"]
    assert [row[0] for row in agents.rows if row] == ["echo-0", "echo-1"]
    restarts = RecordList([{"pool": "echo", "agent": "echo-0", "cause": "process_killed", "detail": "x",
                            "at": 1_700_000_000.0, "attempt": 1, "delay_seconds": 0.1}],
                          "restarts", RESTART_COLUMNS)
    table = _Tables(restarts._repr_html_())
    assert table.headers == ["when", "pool", "agent", "cause", "attempt", "delay", "detail"]
    assert table.rows[-1][3] == "process_killed" and table.rows[-1][5] == "0.10 s"
    assert pickle.loads(pickle.dumps(restarts))._repr_html_() == restarts._repr_html_()


def test_an_empty_list_and_a_long_one():
    empty = _Tables(RecordList([], "dead letters")._repr_html_())
    assert empty.tables == 1 and "0 dead letters" in RecordList([], "dead letters")._repr_html_()
    many = RecordList([_task(n) for n in range(MAX_HTML_ROWS + 5)], "tasks")
    html = many._repr_html_()
    assert len([row for row in _Tables(html).rows if len(row) == 8]) == MAX_HTML_ROWS
    assert "5 more; to_pandas() has every row" in html
    assert "1 task<" in RecordList([_task(1)], "tasks")._repr_html_()


def test_to_pandas_has_every_field():
    pandas = pytest.importorskip("pandas")
    frame = RecordList([_task(1), _task(2, state=TaskState.FAILED, error={"message": "boom"})],
                       "tasks").to_pandas()
    assert isinstance(frame, pandas.DataFrame) and list(frame["task_id"]) == ["t1", "t2"]
    assert list(frame["state"]) == ["succeeded", "failed"] and "metadata" in frame.columns
    assert RecordList([_task(1)], "tasks").to_dataframe().shape[0] == 1


def test_agent_info_has_an_html_repr():
    tables = _Tables(_agent(3)._repr_html_())
    assert tables.tables == 1 and ["3"] in [row[-1:] for row in tables.rows]
    assert "Agent echo-3" in _agent(3)._repr_html_()
