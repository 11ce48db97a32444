"""Tokens (and their cost) that tasks spent at model endpoints: per task, and per pool and endpoint.

An agent reports what each model call used with ``self.context.record_usage``
(the ``llm`` agent does it for every completion). The host sends the lines of a
task back with its outcome; the orchestrator keeps them in the task's record
(``usage``, summed over attempts: a retried call was paid for too) and adds them
to its totals per pool, endpoint and model, which ``/metrics``, the analyzer's
report and the dashboard show. A price table (the ``llm_prices`` setting) turns
tokens into US dollars; a model without a price has no cost, never a guessed one.

A line is ``(endpoint, model, prompt_tokens, completion_tokens, requests)``:
a tuple, because it travels with every outcome of an agent that reports usage.
This module needs no Ray.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

UsageLine = tuple[str, str, int, int, int]

#: Pool × endpoint × model series the orchestrator keeps; beyond it, new ones are summed
#: under OTHER (an agent naming a new model per call must not grow memory or /metrics).
MAX_SERIES = 1000
OTHER = "(other)"
#: Longest endpoint or model name kept (longer ones are cut): they become metric labels.
MAX_NAME = 200


@dataclass(frozen=True, slots=True)
class Price:
    """US dollars per million prompt and completion tokens of one model."""

    prompt_per_million_usd: float
    completion_per_million_usd: float

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return (prompt_tokens * self.prompt_per_million_usd
                + completion_tokens * self.completion_per_million_usd) / 1_000_000


def endpoint_name(base_url: str | None) -> str:
    """How an endpoint is named in records and metrics: its URL without credentials,
    query or fragment (``https://user:key@host/v1?x=1`` becomes ``https://host/v1``)."""
    if not base_url:
        return ""
    try:
        parts = urlsplit(str(base_url))
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return _cut(str(base_url).split("?", 1)[0].split("@")[-1])
    if not parts.scheme or not host:
        return _cut(str(base_url).split("?", 1)[0].split("@")[-1])
    if ":" in host:  # an IPv6 address
        host = f"[{host}]"
    return _cut(f"{parts.scheme}://{host}{port}{parts.path.rstrip('/')}")


def usage_line(*, endpoint: str | None, model: str, prompt_tokens: int, completion_tokens: int,
               requests: int = 1) -> UsageLine:
    """One checked line; ValueError says which number or name is wrong."""
    if not isinstance(model, str) or not model:
        raise ValueError(f"record_usage needs the model's name, not {model!r}")
    counts = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "requests": requests}
    for name, value in counts.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"record_usage: {name} must be a whole number of at least 0, not {value!r}")
    return (endpoint_name(endpoint), _cut(model), prompt_tokens, completion_tokens, requests)


def merge_lines(lines: Iterable[UsageLine]) -> list[UsageLine]:
    """Lines of one endpoint and model summed into one, in first-seen order."""
    merged: dict[tuple[str, str], list[int]] = {}
    for endpoint, model, prompt, completion, requests in lines:
        counts = merged.setdefault((endpoint, model), [0, 0, 0])
        counts[0] += prompt
        counts[1] += completion
        counts[2] += requests
    return [(endpoint, model, *counts) for (endpoint, model), counts in merged.items()]  # type: ignore[misc]


def price_of(prices: Mapping[str, Price], model: str) -> Price | None:
    """The model's price: its own entry, else the ``"*"`` entry, else None (unpriced)."""
    return prices.get(model) or prices.get("*")


def task_usage(previous: Mapping[str, Any] | None, lines: Iterable[UsageLine],
               prices: Mapping[str, Price]) -> dict[str, Any]:
    """A task's ``usage`` record with ``lines`` added to what it had (JSON-ready).

    ``cost_usd`` is the sum over priced models, None when no model it used has a price.
    """
    known = [(m["endpoint"], m["model"], m["prompt_tokens"], m["completion_tokens"], m["requests"])
             for m in (previous or {}).get("models", ())]
    models = []
    for endpoint, model, prompt, completion, requests in merge_lines([*known, *lines]):
        price = price_of(prices, model)
        models.append({"endpoint": endpoint, "model": model, "requests": requests, "prompt_tokens": prompt,
                       "completion_tokens": completion,
                       "cost_usd": None if price is None else price.cost(prompt, completion)})
    costs = [m["cost_usd"] for m in models if m["cost_usd"] is not None]
    return {
        "requests": sum(m["requests"] for m in models),
        "prompt_tokens": sum(m["prompt_tokens"] for m in models),
        "completion_tokens": sum(m["completion_tokens"] for m in models),
        "total_tokens": sum(m["prompt_tokens"] + m["completion_tokens"] for m in models),
        "cost_usd": sum(costs) if costs else None,
        "models": models,
    }


class UsageTotals:
    """Usage summed per (pool, endpoint, model) since the orchestrator started, bounded."""

    def __init__(self, prices: Mapping[str, Price] | None = None, *, max_series: int = MAX_SERIES) -> None:
        self.prices = dict(prices or {})
        self._max_series = max_series
        # key -> [requests, prompt tokens, completion tokens, cost in USD or None]
        self._series: dict[tuple[str, str, str], list[Any]] = {}

    def add(self, pool: str, lines: Iterable[UsageLine]) -> None:
        for endpoint, model, prompt, completion, requests in lines:
            key = (pool, endpoint, model)
            counts = self._series.get(key)
            if counts is None:
                if len(self._series) >= self._max_series:
                    key = (OTHER, OTHER, OTHER)
                    counts = self._series.get(key)
                if counts is None:
                    counts = self._series[key] = [0, 0, 0, None]
            counts[0] += requests
            counts[1] += prompt
            counts[2] += completion
            price = price_of(self.prices, model)
            if price is not None:
                counts[3] = (counts[3] or 0.0) + price.cost(prompt, completion)

    def rows(self) -> list[dict[str, Any]]:
        """One dict per series, sorted by pool, endpoint and model."""
        return [{"pool": pool, "endpoint": endpoint, "model": model, "requests": counts[0],
                 "prompt_tokens": counts[1], "completion_tokens": counts[2], "cost_usd": counts[3]}
                for (pool, endpoint, model), counts in sorted(self._series.items())]


def _cut(text: str) -> str:
    return text if len(text) <= MAX_NAME else text[:MAX_NAME]


__all__ = ["MAX_SERIES", "OTHER", "Price", "UsageLine", "UsageTotals", "endpoint_name", "merge_lines",
           "price_of", "task_usage", "usage_line"]
