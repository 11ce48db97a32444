"""``/metrics``: Prometheus text for the replica and for the orchestrator behind it.

Names start with ``hive_``; durations are ``_seconds`` histograms and counts
``_total`` counters. Labels stay low-cardinality: a route *template* (never a
raw path with ids in it), a method, a status code, a pool, an outcome.

Two sources meet in one scrape:

- the replica's own measurements (HTTP latency by route, task durations seen
  on the event stream), kept in a private registry so several apps in one
  process never collide;
- the orchestrator's state, read at scrape time (``pools()`` and
  ``statistics()``), so queue depths and outcome counters are the real ones;
- tokens, requests and cost per pool, endpoint and model (``hive_model_*``, from
  the orchestrator's usage totals) and each model endpoint's shared limits
  (``hive_endpoint_*``, from its limiter actor);
- with tracing on and a saved performance baseline, ``hive_perf_regressions``
  from the analyzer (see :class:`hive_ray._api._perf.PerfReader`).
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

HTTP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
TASK_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                60.0, 300.0, 1800.0)

#: Orchestrator counters exported as hive_tasks_total{outcome=...}.
OUTCOMES = ("submitted", "succeeded", "failed", "cancelled", "timed_out", "redelivered")


class _OrchestratorCollector:
    """Turns the snapshot taken just before a scrape into metric families."""

    def __init__(self) -> None:
        self.pools: list[dict[str, Any]] = []
        self.statistics: dict[str, Any] | None = None
        self.regressions: int | None = None
        self.endpoints: list[dict[str, Any]] = []

    def describe(self) -> list[Any]:
        return []  # the families depend on the snapshot; do not probe at registration

    def collect(self) -> Any:
        up = GaugeMetricFamily("hive_orchestrator_up", "1 if the orchestrator answered this scrape.")
        up.add_metric([], 0.0 if self.statistics is None else 1.0)
        yield up
        queued = GaugeMetricFamily("hive_pool_queue_depth", "Tasks waiting in a pool's queue.",
                                   labels=["pool"])
        running = GaugeMetricFamily("hive_pool_running_tasks", "Tasks running on a pool's agents.",
                                    labels=["pool"])
        agents = GaugeMetricFamily("hive_pool_agents", "Agents of a pool by state.",
                                   labels=["pool", "state"])
        desired = GaugeMetricFamily("hive_pool_desired_agents", "Agents a pool should have.",
                                    labels=["pool"])
        restarts = CounterMetricFamily("hive_agent_restarts", "Agent restarts after a crash, per pool.",
                                       labels=["pool"])
        for pool in self.pools:
            name = pool["name"]
            queued.add_metric([name], pool["queued"])
            running.add_metric([name], pool["running"])
            desired.add_metric([name], pool["desired"])
            by_state: dict[str, int] = {}
            for agent in pool["agents"]:
                by_state[agent["state"]] = by_state.get(agent["state"], 0) + 1
            for state, count in sorted(by_state.items()):
                agents.add_metric([name, state], count)
            restarts.add_metric([name], pool.get("restarts", sum(a["restarts"] for a in pool["agents"])))
        yield from (queued, running, agents, desired, restarts)
        yield from _virtual_families([pool for pool in self.pools if pool.get("virtual")])
        tasks = CounterMetricFamily("hive_tasks", "Tasks by outcome since the orchestrator started.",
                                    labels=["outcome"])
        counters = (self.statistics or {}).get("counters", {})
        for outcome in OUTCOMES:
            tasks.add_metric([outcome], float(counters.get(outcome, 0)))
        yield tasks
        in_memory = GaugeMetricFamily("hive_tasks_in_memory", "Task records the orchestrator holds.")
        in_memory.add_metric([], float((self.statistics or {}).get("tasks_in_memory", 0)))
        yield in_memory
        yield from _usage_families((self.statistics or {}).get("usage", []))
        yield from _endpoint_families(self.endpoints)
        if self.regressions is not None:  # only with a saved baseline to compare against
            regressions = GaugeMetricFamily(
                "hive_perf_regressions", "Operations whose latency regressed against the saved "
                "performance baseline (significant and material).")
            regressions.add_metric([], float(self.regressions))
            yield regressions


def _virtual_families(pools: list[dict[str, Any]]) -> Any:
    """Virtual agents per type, as their hosts last reported them (health checks)."""
    if not pools:
        return
    active = GaugeMetricFamily("hive_virtual_agents_active", "Virtual agents active now, per type.",
                               labels=["pool", "agent_type"])
    counters = {
        field: CounterMetricFamily(f"hive_virtual_{name}", help_text, labels=["pool", "agent_type"])
        for field, name, help_text in (
            ("activated", "activations", "Virtual agent activations, per type (since its shards started)."),
            ("deactivated", "deactivations", "Virtual agents dropped (idle, stale), per type."),
            ("handled", "messages", "Messages virtual agents handled, per type."))}
    for pool in pools:
        labels = [pool["name"], pool["agent_type"]]
        counts = pool["virtual"]
        active.add_metric(labels, float(counts.get("active", 0)))
        for field, family in counters.items():
            family.add_metric(labels, float(counts.get(field, 0)))
    yield active
    yield from counters.values()


def _usage_families(rows: list[dict[str, Any]]) -> Any:
    """Tokens, requests and cost per pool, endpoint and model (see hive_ray._usage)."""
    labels = ["pool", "endpoint", "model"]
    requests = CounterMetricFamily("hive_model_requests", "Requests to model endpoints, per pool, "
                                   "endpoint and model, since the orchestrator started.", labels=labels)
    tokens = CounterMetricFamily("hive_model_tokens", "Tokens spent at model endpoints (kind: prompt or "
                                 "completion).", labels=[*labels, "kind"])
    cost = CounterMetricFamily("hive_model_cost_usd", "US dollars spent at model endpoints, for models "
                               "the llm_prices setting prices.", labels=labels)
    for row in rows:
        key = [row["pool"], row["endpoint"], row["model"]]
        requests.add_metric(key, float(row["requests"]))
        tokens.add_metric([*key, "prompt"], float(row["prompt_tokens"]))
        tokens.add_metric([*key, "completion"], float(row["completion_tokens"]))
        if row.get("cost_usd") is not None:
            cost.add_metric(key, float(row["cost_usd"]))
    yield from (requests, tokens, cost)


def _endpoint_families(endpoints: list[dict[str, Any]]) -> Any:
    """Each endpoint's shared limits and who waits for them (its limiter actor)."""
    in_flight = GaugeMetricFamily("hive_endpoint_requests_in_flight",
                                  "Requests holding one of an endpoint's shared slots.", labels=["endpoint"])
    waiting = GaugeMetricFamily("hive_endpoint_requests_waiting",
                                "Requests queued for an endpoint's shared limits.", labels=["endpoint"])
    window = GaugeMetricFamily("hive_endpoint_window_usage", "Requests and tokens an endpoint's limiter "
                               "counts in the last minute.", labels=["endpoint", "kind"])
    granted = CounterMetricFamily("hive_endpoint_requests_granted", "Requests let through an endpoint's "
                                  "limits since its limiter started.", labels=["endpoint"])
    limits = GaugeMetricFamily("hive_endpoint_limit", "An endpoint's configured limits (absent: none).",
                               labels=["endpoint", "limit"])
    for each in endpoints:
        name = each["endpoint"]
        in_flight.add_metric([name], float(each["in_flight"]))
        waiting.add_metric([name], float(each["waiting"]))
        window.add_metric([name, "requests"], float(each["requests_last_minute"]))
        window.add_metric([name, "tokens"], float(each["tokens_last_minute"]))
        granted.add_metric([name], float(each["granted"]))
        for limit, value in sorted(each.get("limits", {}).items()):
            if value is not None:
                limits.add_metric([name, limit], float(value))
    yield from (in_flight, waiting, window, granted, limits)


class ApiMetrics:
    """The replica's metrics and the orchestrator snapshot, rendered together."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.http_duration = Histogram(
            "hive_http_request_duration_seconds", "Time to answer an HTTP request, by route template.",
            ["route", "method", "status"], buckets=HTTP_BUCKETS, registry=self.registry)
        self.http_requests = Counter(
            "hive_http_requests", "HTTP requests answered, by route template.",
            ["route", "method", "status"], registry=self.registry)
        self.task_duration = Histogram(
            "hive_task_duration_seconds", "Submission to end of tasks, as seen on the event stream.",
            ["pool", "outcome"], buckets=TASK_BUCKETS, registry=self.registry)
        self._orchestrator = _OrchestratorCollector()
        self.registry.register(self._orchestrator)  # type: ignore[arg-type]
        # The label children are cached: looking them up per request is most of the cost.
        self._http_children: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    def observe_http(self, route: str, method: str, status: int, seconds: float) -> None:
        key = (route, method, status)
        children = self._http_children.get(key)
        if children is None:
            labels = (route, method, str(status))
            children = (self.http_duration.labels(*labels), self.http_requests.labels(*labels))
            self._http_children[key] = children
        children[0].observe(seconds)
        children[1].inc()

    def observe_task(self, pool: str, outcome: str, seconds: float) -> None:
        self.task_duration.labels(pool, outcome).observe(seconds)

    def render(self, pools: list[dict[str, Any]], statistics: dict[str, Any] | None,
               regressions: int | None = None, endpoints: list[dict[str, Any]] | None = None) -> bytes:
        collector = self._orchestrator
        collector.pools, collector.statistics, collector.regressions = pools, statistics, regressions
        collector.endpoints = endpoints or []
        try:
            return generate_latest(self.registry)
        finally:
            collector.pools, collector.statistics, collector.regressions = [], None, None
            collector.endpoints = []
