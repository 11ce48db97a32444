"""Load for the API benchmark (``perf/bench_api.py``); run it only in its own process.

Locust monkey-patches the standard library (gevent) on import, so nothing
else may import this file. ``bench_api.py`` runs, for example::

    locust -f perf/locustfile.py --headless -u 20 -r 20 -t 20s --host http://127.0.0.1:8000 \\
        --csv out/get_paced GetPaced

Users:

- ``NoopPaced`` / ``NoopFlat``: the bare Serve FastAPI no-op (the baseline);
- ``GetPaced`` / ``GetFlat``: ``GET /v1/pools``, the cached read endpoint;
- ``SubmitWaitPaced`` / ``SubmitWaitFlat``: ``POST /v1/tasks?wait=5`` to the echo pool;
- ``NoopPostFlat``: a ``POST`` of the same JSON body to the no-op (Serve's own cost of a
  request with a body, the fair baseline for a submission);
- ``SubmitRefusedFlat``: submissions to a pool whose queue is full (``HIVE_BENCH_FULL_POOL``):
  429 answers are what is measured, so they count as successes.

*Paced* users send one request per second each; *Flat* ones send back to back.
Environment: ``HIVE_BENCH_KEY`` (API key), ``HIVE_BENCH_POOL`` (echo pool),
``HIVE_BENCH_FULL_POOL`` (a pool that refuses), ``HIVE_BENCH_SAMPLES`` (a file where
every response time, in ms, and its status are written at exit: locust's own
percentiles are rounded to whole milliseconds).
"""

from __future__ import annotations

import json
import os
import random
import time

import gevent
from locust import FastHttpUser, constant, events, task

KEY = os.environ.get("HIVE_BENCH_KEY", "")
POOL = os.environ.get("HIVE_BENCH_POOL", "bench-echo")
FULL_POOL = os.environ.get("HIVE_BENCH_FULL_POOL", "bench-full")
BODY = {"pool": POOL, "payload": {"n": 1}}
AUTH = {"Authorization": f"Bearer {KEY}"}
_samples: list[float] = []
_statuses: list[int] = []
_errors: list[str] = []


@events.request.add_listener
def _record(response_time: float, exception: BaseException | None, response: object = None,
            **_: object) -> None:
    _samples.append(response_time)
    _statuses.append(int(getattr(response, "status_code", 0) or 0))
    if exception is not None:
        _errors.append(repr(exception)[:200])


@events.quitting.add_listener
def _write_samples(**_: object) -> None:
    path = os.environ.get("HIVE_BENCH_SAMPLES")
    if path:
        with open(path, "w") as file:
            json.dump({"milliseconds": _samples, "statuses": _statuses, "errors": _errors[:20], "error_count": len(_errors)}, file)


class _Noop(FastHttpUser):
    abstract = True

    @task
    def noop(self) -> None:
        self.client.get("/noop/", name="noop")


class _Get(FastHttpUser):
    abstract = True

    @task
    def pools(self) -> None:
        self.client.get("/v1/pools", headers=AUTH, name="GET /v1/pools")


class _Paced(FastHttpUser):
    """One request per second per user, each user at its own fixed phase within the second.

    Each user keeps its own schedule (``phase + k`` seconds) instead of locust's
    ``constant_pacing``: that one counts from the moment the user started, and with
    ``-r 20`` every user starts in the same instant, so after the first second the
    20 users fire together, a burst of 20 simultaneous requests each second
    instead of 20 requests a second (measured: the no-op's p50 went from 7 ms to
    38 ms, all of it queueing behind the burst).
    """

    abstract = True

    def on_start(self) -> None:
        self._next_at = time.time() + random.random()
        gevent.sleep(max(0.0, self._next_at - time.time()))

    def wait_time(self) -> float:
        self._next_at += 1.0
        return max(0.0, self._next_at - time.time())


class NoopPaced(_Paced):
    @task
    def noop(self) -> None:
        self.client.get("/noop/", name="noop")


class NoopFlat(_Noop):
    wait_time = constant(0)


class GetPaced(_Paced):
    @task
    def pools(self) -> None:
        self.client.get("/v1/pools", headers=AUTH, name="GET /v1/pools")


class GetFlat(_Get):
    wait_time = constant(0)


class SubmitWaitPaced(_Paced):
    @task
    def submit(self) -> None:
        self.client.post("/v1/tasks?wait=5", json=BODY, headers=AUTH, name="POST /v1/tasks?wait")


class SubmitWaitFlat(FastHttpUser):
    wait_time = constant(0)

    @task
    def submit(self) -> None:
        self.client.post("/v1/tasks?wait=10", json=BODY, headers=AUTH, name="POST /v1/tasks?wait")


class NoopPostFlat(FastHttpUser):
    wait_time = constant(0)

    @task
    def post(self) -> None:
        self.client.post("/noop/post", json=BODY, name="POST noop")


class SubmitRefusedFlat(FastHttpUser):
    wait_time = constant(0)

    @task
    def submit(self) -> None:
        body = {"pool": FULL_POOL, "payload": {"seconds": 600}}
        with self.client.post("/v1/tasks", json=body, headers=AUTH, name="POST /v1/tasks (full pool)",
                              catch_response=True) as response:
            if response.status_code in (202, 429):
                response.success()
