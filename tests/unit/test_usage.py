"""Token accounting without Ray: lines, a task's usage record, totals per pool, endpoint and model."""

from __future__ import annotations

import pickle

import pytest

from hive_ray._agent import AgentContext, current_task_id
from hive_ray._task import Outcome
from hive_ray._usage import OTHER, Price, UsageTotals, endpoint_name, task_usage, usage_line

PRICES = {"small": Price(0.15, 0.60), "*": Price(1.0, 2.0)}


@pytest.mark.parametrize(("url", "name"), [
    ("http://127.0.0.1:8000/v1/", "http://127.0.0.1:8000/v1"),
    ("https://user:secret@api.example.com/v1?key=abc#x", "https://api.example.com/v1"),
    ("http://[::1]:9000/v1", "http://[::1]:9000/v1"),
    ("not a url?token=1", "not a url"),
    (None, ""),
])
def test_an_endpoint_is_named_without_credentials_or_query(url: str | None, name: str) -> None:
    assert endpoint_name(url) == name


def test_a_task_sums_its_lines_per_model_and_prices_them() -> None:
    first = task_usage(None, [usage_line(endpoint="http://e/v1", model="small", prompt_tokens=1000,
                                         completion_tokens=500)], PRICES)
    # A retry's call adds to the same model's line.
    both = task_usage(first, [("http://e/v1", "small", 1000, 500, 1), ("http://e/v1", "big", 10, 0, 1)],
                      {"small": PRICES["small"]})
    assert both["requests"] == 3
    assert (both["prompt_tokens"], both["completion_tokens"], both["total_tokens"]) == (2010, 1000, 3010)
    small, big = both["models"]
    assert (small["model"], small["requests"], small["prompt_tokens"]) == ("small", 2, 2000)
    assert small["cost_usd"] == pytest.approx((2000 * 0.15 + 1000 * 0.60) / 1e6)
    assert big["cost_usd"] is None  # unpriced: no cost, never a guessed one
    assert both["cost_usd"] == pytest.approx(small["cost_usd"])


def test_the_star_price_covers_other_models_and_no_price_means_no_cost() -> None:
    line = ("", "anything", 1_000_000, 0, 1)
    assert task_usage(None, [line], PRICES)["cost_usd"] == pytest.approx(1.0)
    assert task_usage(None, [line], {})["cost_usd"] is None


@pytest.mark.parametrize("bad", [{"prompt_tokens": -1}, {"completion_tokens": 1.5}, {"requests": True},
                                 {"model": ""}, {"prompt_tokens": "7"}])
def test_bad_counts_are_refused_with_the_field_named(bad: dict) -> None:
    arguments = {"endpoint": None, "model": "m", "prompt_tokens": 1, "completion_tokens": 1, **bad}
    with pytest.raises(ValueError, match=next(iter(bad)).replace("_", ".") if "model" not in bad else "model"):
        usage_line(**arguments)


def test_totals_are_kept_per_pool_endpoint_and_model_and_bounded() -> None:
    totals = UsageTotals(PRICES, max_series=2)
    totals.add("a", [("e", "small", 10, 5, 1)])
    totals.add("a", [("e", "small", 10, 5, 1)])
    totals.add("b", [("e", "small", 1, 1, 1)])
    totals.add("c", [("e", "new", 1, 1, 1), ("e", "newer", 2, 2, 1)])  # beyond the bound: summed as other
    rows = {(row["pool"], row["model"]): row for row in totals.rows()}
    assert set(rows) == {("a", "small"), ("b", "small"), (OTHER, OTHER)}
    assert (rows["a", "small"]["requests"], rows["a", "small"]["prompt_tokens"]) == (2, 20)
    assert rows[OTHER, OTHER]["requests"] == 2
    assert rows[OTHER, OTHER]["cost_usd"] == pytest.approx((3 * 1.0 + 3 * 2.0) / 1e6)


def test_the_context_keeps_usage_per_task_until_the_host_takes_it() -> None:
    context = AgentContext(agent_id="a-1", pool="p", agent_type="t")
    with pytest.raises(RuntimeError, match="handle"):
        context.record_usage(model="m", prompt_tokens=1)
    for task_id in ("t1", "t2"):
        token = current_task_id.set(task_id)
        try:
            context.record_usage(model="m", endpoint="http://x:1@e/v1", prompt_tokens=3, completion_tokens=4)
            context.record_usage(model="m", endpoint="http://e/v1", prompt_tokens=1)
        finally:
            current_task_id.reset(token)
    assert context.take_usage("t1") == [("http://e/v1", "m", 4, 4, 2)]
    assert context.take_usage("t1") is None
    assert context.take_usage("t2") == [("http://e/v1", "m", 4, 4, 2)]


def test_an_outcome_carries_its_usage_through_pickle() -> None:
    outcome = Outcome(task_id="t", status="ok", value=1, usage=[("e", "m", 1, 2, 1)])
    assert pickle.loads(pickle.dumps(outcome)).usage == [("e", "m", 1, 2, 1)]


def test_a_journal_row_written_before_usage_existed_still_reads() -> None:
    from hive_ray._runtime._durability import _SAVED_V1, decode_entry, encode_entry
    from hive_ray._task import TaskEntry, TaskState

    entry = TaskEntry(task_id="t", pool="p", agent_type="llm", payload="hi", state=TaskState.SUCCEEDED,
                      usage={"requests": 1, "prompt_tokens": 2, "completion_tokens": 3, "total_tokens": 5,
                             "cost_usd": None, "models": []})
    assert decode_entry(encode_entry(entry)).usage == entry.usage
    old = pickle.dumps((1, tuple(entry.state.value if name == "state" else getattr(entry, name)
                                 for name in _SAVED_V1)))
    assert decode_entry(old).usage is None
    assert decode_entry(old).payload == "hi"


def test_usage_nobody_claims_is_bounded(monkeypatch) -> None:
    import hive_ray._agent as agent_module

    monkeypatch.setattr(agent_module, "MAX_UNCLAIMED_USAGE", 3)
    context = AgentContext(agent_id="a-1", pool="p", agent_type="t")
    for number in range(5):  # e.g. a background task that outlives its handler keeps counting
        token = current_task_id.set(f"t{number}")
        try:
            context.record_usage(model="m", prompt_tokens=1)
        finally:
            current_task_id.reset(token)
    assert context.take_usage("t0") is None and context.take_usage("t4") == [("", "m", 1, 0, 1)]


def test_a_records_notebook_view_shows_what_it_spent() -> None:
    from hive_ray._models import TaskRecord

    record = TaskRecord(task_id="t", pool="p", agent_type="llm", state="succeeded", created_at=1.0,
                        usage={"requests": 2, "prompt_tokens": 40, "completion_tokens": 50, "total_tokens": 90,
                               "cost_usd": 0.25, "models": []})
    assert "40 prompt + 50 completion in 2 request(s), $0.2500" in record._repr_html_()
    assert "tokens" not in TaskRecord(task_id="t", pool="p", agent_type="echo", state="succeeded",
                                      created_at=1.0)._repr_html_()
