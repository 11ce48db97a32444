"""Benchmark of the HTTP API against a bare Serve FastAPI no-op, in one run on one machine.

    python perf/run.py api [--quick] --json out.json

Starts (in this process's Ray) the hive API and, as a second Serve app on the
same proxy, a bare FastAPI no-op with the same Serve options. Load comes from
locust (``perf/locustfile.py``) in a separate process, one phase at a time:

- ``get_p95_ms``: ``GET /v1/pools`` (cached), 20 users x 1 request/s; baseline:
  the no-op's p95 under the same load; goal ratio <= 1.2;
- ``submit_wait_p95_ms``: ``POST /v1/tasks?wait=5`` to an echo agent, same load;
  goal <= 50 ms (its ratio is to the no-op's p95);
- ``rps``: ``GET /v1/pools`` with 32 users back to back; baseline: the no-op's
  capacity the same way; goal ratio >= 0.8;
- ``submit_wait_rps@32``: ``POST /v1/tasks?wait=10`` with 32 users back to back;
  baseline: the ``GET`` no-op's capacity; goal ratio >= 0.7;
- ``submit_wait_rps@vs_post_noop``: the same, against a ``POST`` of the same JSON
  body to the no-op: what Serve itself charges for a request with a body (the
  replica fetches the body from the proxy with an actor call of its own);
- ``submit_wait_p95_ms@200``: 200 users back to back; baseline: the ``POST``
  no-op's p95 under the same 200 users; goal <= 250 ms;
- ``refused_p50_ms@32``: 32 users submitting to a pool whose queue is full, p50
  of the 429 answers; baseline: the ``POST`` no-op's p50 at 32 users;
- ``error_rate``: failed requests over all phases (429s from the full pool are
  the point of their phase, not errors); goal 0.

``HIVE_BENCH_THROUGHPUT_OPTIMIZED=1`` starts Serve with ``RAY_SERVE_THROUGHPUT_OPTIMIZED=1``.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
LOCUSTFILE = HERE / "locustfile.py"
POOL = "bench-echo"
FULL_POOL = "bench-full"  # one sleep agent, its queue kept full: every submission is refused


def run(quick: bool = False) -> list[dict[str, Any]]:
    # Phases alternate, round after round, so that the machine's background noise
    # (other processes on 2 shared cores) falls on the API and its baseline alike.
    rounds, paced_seconds, flat_seconds = (2, 6, 5) if quick else (6, 10, 8)
    plan = [("noop_paced", "NoopPaced", 20, paced_seconds), ("get_paced", "GetPaced", 20, paced_seconds),
            ("submit_paced", "SubmitWaitPaced", 20, paced_seconds),
            ("noop_flat", "NoopFlat", 32, flat_seconds), ("get_flat", "GetFlat", 32, flat_seconds),
            ("post_flat", "NoopPostFlat", 32, flat_seconds), ("submit_flat", "SubmitWaitFlat", 32, flat_seconds),
            ("refused_flat", "SubmitRefusedFlat", 32, flat_seconds),
            ("post_200", "NoopPostFlat", 200, flat_seconds), ("submit_200", "SubmitWaitFlat", 200, flat_seconds)]
    phases: dict[str, dict[str, Any]] = {}
    with _Deployment() as target:
        for _ in range(rounds):
            for name, user, users, seconds in plan:
                measured = target.load(user, users, seconds)
                merged = phases.setdefault(name, {"milliseconds": [], "statuses": [], "errors": [],
                                                  "error_count": 0, "rps": []})
                for key in ("milliseconds", "statuses", "errors"):
                    merged[key] += measured.get(key, [])
                merged["error_count"] += measured["error_count"]
                merged["rps"].append(measured["rps"])
    for merged in phases.values():
        merged["rps"] = sorted(merged["rps"])[len(merged["rps"]) // 2]  # the median round

    def p(name: str, fraction: float) -> float:
        return _percentile(phases[name]["milliseconds"], fraction)

    refusals = phases["refused_flat"]
    refused = [ms for ms, status in zip(refusals["milliseconds"], refusals["statuses"], strict=True) if status == 429]
    requests = sum(len(phase["milliseconds"]) for phase in phases.values())
    errors = sum(phase["error_count"] for phase in phases.values())
    noop = "bare Serve FastAPI no-op, same proxy and load"
    post_noop = "bare Serve FastAPI no-op taking the same JSON body by POST"
    return [
        _row("get_p95_ms", p("get_paced", 0.95), "ms", noop, p("noop_paced", 0.95), "ratio <= 1.2"),
        _row("submit_wait_p95_ms", p("submit_paced", 0.95), "ms", noop, p("noop_paced", 0.95), "value <= 50"),
        _row("rps", phases["get_flat"]["rps"], "requests/s", noop + " (32 users back to back)",
             phases["noop_flat"]["rps"], "ratio >= 0.8"),
        _row("submit_wait_rps@32", phases["submit_flat"]["rps"], "requests/s",
             "bare Serve FastAPI no-op, GET, 32 users back to back", phases["noop_flat"]["rps"], "ratio >= 0.7"),
        _row("submit_wait_rps@vs_post_noop", phases["submit_flat"]["rps"], "requests/s",
             post_noop + ", 32 users back to back", phases["post_flat"]["rps"], "ratio >= 0.9"),
        _row("submit_wait_p95_ms@200", p("submit_200", 0.95), "ms", post_noop + ", 200 users back to back",
             p("post_200", 0.95), "value <= 250"),
        {**_row("refused_p50_ms@32", _percentile(refused, 0.5), "ms", post_noop + ", 32 users back to back",
                p("post_flat", 0.5), "ratio <= 1.2"), "refused": len(refused),
         "accepted": phases["refused_flat"]["statuses"].count(202)},
        {"metric": "error_rate", "value": errors / max(1, requests), "unit": "fraction",
         "baseline": {"name": "no errors", "value": 0.0}, "ratio": None, "goal": "value == 0",
         "requests": requests, "errors": errors,
         "error_samples": [e for phase in phases.values() for e in phase["errors"]][:5]},
    ]


def _row(metric: str, value: float, unit: str, baseline_name: str, baseline: float, goal: str) -> dict[str, Any]:
    return {"metric": metric, "value": round(value, 2), "unit": unit,
            "baseline": {"name": baseline_name, "value": round(baseline, 2)},
            "ratio": round(value / baseline, 3) if baseline else None, "goal": goal}


def _percentile(samples: list[float], fraction: float) -> float:
    if not samples:
        return float("nan")
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class _Deployment:
    """Ray, the hive API, an echo pool and the no-op app; torn down on exit."""

    def __enter__(self) -> _Deployment:
        import logging

        import ray

        from hive_ray import Hive
        from hive_ray._api import ensure_api_key, start_api
        from hive_ray._settings import Settings

        self._state = tempfile.mkdtemp(prefix="hive-bench-")
        self._owns_ray = not ray.is_initialized()
        if self._owns_ray:
            # address="local": a Ray of its own, never one a stale /tmp/ray pointer names.
            ray.init(address="local", namespace="hive", include_dashboard=False,
                     logging_level=logging.WARNING, log_to_driver=False)
        self.hive = Hive.connect(settings={"state_dir": self._state})
        self.key, _ = ensure_api_key(Path(self._state))
        self.settings = Settings.load({"state_dir": self._state, "http_port": _free_port(),
                                       "grpc_port": _free_port()})
        environment = {}
        if os.environ.get("HIVE_BENCH_THROUGHPUT_OPTIMIZED") == "1":
            environment["RAY_SERVE_THROUGHPUT_OPTIMIZED"] = "1"
        self.base_url = start_api(self.settings, environment)["http"]
        _deploy_noop(self.settings)
        self.hive.spawn("echo", 1, pool=POOL)
        self._fill(FULL_POOL)
        self._wait_ready()
        return self

    def _fill(self, pool: str) -> None:
        """A pool whose queue is full: one sleep agent (up to 100 tasks at once), then one queued."""
        from hive_ray import OverloadedError

        self.hive.spawn("sleep", 1, pool=pool, max_queue=1)
        for _ in range(500):
            try:
                self.hive.submit(None, {"seconds": 3600}, pool=pool)
            except OverloadedError:
                return
        raise RuntimeError(f"pool {pool} still accepted tasks after 500 submissions")

    def _wait_ready(self) -> None:
        import httpx

        headers = {"Authorization": f"Bearer {self.key}"}
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if (httpx.get(self.base_url + "/noop/").status_code == 200
                        and httpx.get(self.base_url + "/v1/pools", headers=headers).status_code == 200):
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError("the API or the no-op app did not answer within 60 s")

    def load(self, user: str, users: int, seconds: int) -> dict[str, Any]:
        """One locust phase: every response time (the first second, spawning users, left out)."""
        measured = self._locust(user, users, seconds + 1, user)
        skip = min(users, len(measured["milliseconds"]))
        measured["milliseconds"] = measured["milliseconds"][skip:]
        return measured

    def _locust(self, user: str, users: int, seconds: int, label: str) -> dict[str, Any]:
        locust = shutil.which("locust", path=str(Path(sys.executable).parent)) or "locust"
        with tempfile.TemporaryDirectory() as out:
            samples = Path(out) / "samples.json"
            env = {**os.environ, "HIVE_BENCH_KEY": self.key, "HIVE_BENCH_POOL": POOL, "HIVE_BENCH_FULL_POOL": FULL_POOL,
                   "HIVE_BENCH_SAMPLES": str(samples)}
            command = [locust, "-f", str(LOCUSTFILE), "--headless", "-u", str(users), "-r", str(users),
                       "-t", f"{seconds}s", "--host", self.base_url, "--csv", str(Path(out) / "load"),
                       "--only-summary", "--stop-timeout", "5", user]
            started = time.monotonic()
            subprocess.run(command, env=env, check=False, capture_output=True, timeout=seconds + 120)
            elapsed = time.monotonic() - started
            measured = json.loads(samples.read_text()) if samples.exists() else {
                "milliseconds": [], "errors": [f"locust wrote no samples for {label}"], "error_count": 1}
            stats = _aggregated(Path(out) / "load_stats.csv")
        measured["rps"] = stats.get("Requests/s", len(measured["milliseconds"]) / max(elapsed, 1e-9))
        return measured

    def __exit__(self, *exc_info: object) -> None:
        from ray import serve

        from hive_ray._api import stop_api

        try:
            serve.delete("noop")
        finally:
            stop_api()
            self.hive.close()
            if self._owns_ray:
                import ray

                ray.shutdown()
            shutil.rmtree(self._state, ignore_errors=True)


def _aggregated(path: Path) -> dict[str, float]:
    import csv

    try:
        with path.open() as file:
            for row in csv.DictReader(file):
                if row.get("Name") == "Aggregated":
                    return {"Requests/s": float(row["Requests/s"])}
    except (OSError, ValueError, KeyError):
        pass
    return {}


def _deploy_noop(settings: Any) -> None:
    """The baseline: a bare FastAPI no-op with the API's Serve options (defined here, pickled by value)."""
    from fastapi import FastAPI
    from ray import serve

    from hive_ray._api._deployment import deployment_options

    app = FastAPI()

    @app.get("/")
    async def noop() -> dict[str, bool]:
        return {"ok": True}

    @app.post("/post")
    async def post(body: dict[str, Any]) -> dict[str, bool]:  # the body parsed, as a submission's is
        return {"ok": True}

    @serve.ingress(app)
    class Noop:
        pass

    options = {**deployment_options(settings), "name": "Noop"}
    serve.run(serve.deployment(Noop).options(**options).bind(), name="noop", route_prefix="/noop",
              blocking=False)


if __name__ == "__main__":
    print(json.dumps(run(quick="--quick" in sys.argv), indent=2))
