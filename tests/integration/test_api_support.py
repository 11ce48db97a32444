"""The API server the API tests share, and tests of its pure parts (keys, caches, telemetry).

The ``api`` fixture deploys the app once per run on the session's Ray, on free
ports. It is defined here and imported by the other ``test_api_*`` modules;
pytest makes one fixture per importing module, so the server itself is kept
on the session and started only once.
"""

from __future__ import annotations

import json
import os
import socket
import stat
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

READ_KEY = "read-only-test-key-0123456789"


@dataclass(frozen=True)
class ApiServer:
    base_url: str
    grpc_target: str
    admin_key: str
    read_key: str

    def headers(self, scope: str = "admin") -> dict[str, str]:
        return {"Authorization": f"Bearer {self.admin_key if scope == 'admin' else self.read_key}"}


def wait_ready(base_url: str, what: str, timeout: float = 60.0) -> None:
    """Poll ``/readyz`` (it really asks the orchestrator) until it answers 200."""
    import httpx

    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(base_url + "/readyz", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not become ready within {timeout:.0f} s")
        time.sleep(0.2)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="session")
def api(request: pytest.FixtureRequest, hive: object, hive_settings: dict[str, object]) -> Iterator[ApiServer]:
    """The API app deployed on the session's Ray (HTTP and gRPC on free loopback ports)."""
    server = getattr(request.session, "_hive_api_server", None)
    if server is not None:
        yield server
        return

    from hive_ray._api import ensure_api_key, start_api, stop_api
    from hive_ray._settings import Settings

    admin_key, _ = ensure_api_key(Path(str(hive_settings["state_dir"])))
    settings = Settings.load({
        **hive_settings, "http_port": free_port(), "grpc_port": free_port(),
        "api_keys": {READ_KEY: "read"}, "api_max_body_bytes": 64 * 1024,
        "api_max_wait_seconds": 10.0, "api_stream_max_seconds": 15.0,
    })
    urls = start_api(settings)
    wait_ready(urls["http"], "the API")
    server = ApiServer(urls["http"], urls["grpc"], admin_key, READ_KEY)
    request.session._hive_api_server = server  # type: ignore[attr-defined]
    try:
        yield server
    finally:
        if getattr(request.session, "_hive_api_server", None) is server:
            request.session._hive_api_server = None  # type: ignore[attr-defined]
            stop_api()


@contextmanager
def side_app(api: ApiServer, hive_settings: dict[str, object], settings: object, *, app_name: str,
             route_prefix: str, prepare: Callable[[object], None] = lambda hive: None) -> Iterator[tuple[str, object]]:
    """A second deployment of the API at ``route_prefix``, over an orchestrator of its own.

    ``settings`` (a :class:`hive_ray.Settings`) name that orchestrator; ``prepare(hive)`` runs
    before the app is deployed (spawn its pools). The app takes the session's admin key and
    the read key. Yields ``(base_url, hive)``; on exit the app, the orchestrator and its
    agents are gone.
    """
    import ray
    from ray import serve

    from hive_ray import Hive
    from hive_ray._api._deployment import build_application
    from hive_ray._api._keys import key_digests

    hive = Hive.connect(settings=settings.model_dump(mode="json", exclude={"api_keys"}))  # type: ignore[attr-defined]
    try:
        prepare(hive)
        digests = key_digests(settings.api_keys, Path(str(hive_settings["state_dir"])))  # type: ignore[attr-defined]
        serve.run(build_application(settings, digests), name=app_name, route_prefix=route_prefix,  # type: ignore[arg-type]
                  blocking=False)
        base_url = api.base_url + route_prefix
        wait_ready(base_url, f"the API at {route_prefix}")
        yield base_url, hive
    finally:
        try:
            serve.delete(app_name)
        finally:
            try:
                hive._call("shutdown", timeout=60)
            finally:
                ray.kill(hive._orchestrator, no_restart=True)
                hive.close()


@pytest.fixture(scope="session")
def admin_client(api: ApiServer) -> Iterator[object]:
    import httpx

    with httpx.Client(base_url=api.base_url, headers=api.headers("admin"), timeout=30) as client:
        yield client


# ---------------------------------------------------------------------- keys (no Ray)
def test_ensure_api_key_creates_an_owner_only_file_once(tmp_path: Path) -> None:
    from hive_ray._api import ensure_api_key, key_file

    key, created = ensure_api_key(tmp_path / "state")
    again, created_again = ensure_api_key(tmp_path / "state")
    assert created and not created_again and key == again and key.startswith("hive_")
    mode = stat.S_IMODE(os.stat(key_file(tmp_path / "state")).st_mode)
    assert mode == 0o600


def test_key_ring_scopes_and_refusals() -> None:
    from hive_ray._api._keys import KeyRing, bearer_token, key_digests

    ring = KeyRing(key_digests({"r": "read", "a": "admin"}, None))
    assert ring.scope_of("r") == "read" and ring.scope_of("a") == "admin"
    assert ring.scope_of("x") is None and ring.scope_of(None) is None and ring.scope_of("") is None
    assert KeyRing.allows("admin", "read") and not KeyRing.allows("read", "admin")
    assert bearer_token("Bearer abc") == "abc" and bearer_token("Basic abc") is None


def test_settings_never_show_api_keys() -> None:
    from hive_ray._settings import Settings

    settings = Settings(api_keys={"super-secret-key": "admin"})
    assert "super-secret-key" not in repr(settings) and "super-secret-key" not in str(settings)


# ---------------------------------------------------------------------- caches and telemetry (no Ray)
def test_ttl_cache_expires_and_clears() -> None:
    from hive_ray._api._cache import TtlCache

    now = [0.0]
    cache: TtlCache[str] = TtlCache(1.0, clock=lambda: now[0])
    cache.put("k", "v")
    assert cache.get("k") == "v"
    now[0] = 1.0
    assert cache.get("k") is None
    cache.put("k", "v")
    cache.clear()
    assert cache.get("k") is None


def test_ttl_cache_asks_for_a_refresh_past_half_life_and_drops_fetches_older_than_a_clear() -> None:
    from hive_ray._api._cache import TtlCache

    now = [0.0]
    cache: TtlCache[str] = TtlCache(1.0, clock=lambda: now[0])
    cache.put("k", "v")
    assert cache.lookup("k") == ("v", False)
    now[0] = 0.6
    assert cache.lookup("k") == ("v", True)
    seen = cache.generation
    cache.clear()  # a pool changed while a fetch was under way
    cache.put("k", "from before the change", seen)
    assert cache.lookup("k") == (None, False)
    cache.put("k", "fresh", cache.generation)
    assert cache.get("k") == "fresh"


def test_pool_reads_are_refreshed_in_the_background_before_they_expire() -> None:
    import asyncio

    from hive_ray._api._cache import TtlCache
    from hive_ray._api._keys import KeyRing
    from hive_ray._api._service import ApiService
    from hive_ray._settings import Settings

    async def scenario() -> None:
        calls: list[str] = []
        release = asyncio.Event()

        async def call(method: str, *args: object) -> list[int]:
            calls.append(method)
            if len(calls) > 1:
                await release.wait()
            return [len(calls)]

        service = ApiService(Settings(), call, KeyRing({}))
        now = [0.0]
        service._pools_cache = TtlCache(1.0, clock=lambda: now[0])
        assert await service.pools_json() == (b"[1]", False)
        now[0] = 0.7  # past half its life: answered from the cache, one fetch starts
        assert await service.pools_json() == (b"[1]", True)
        assert await service.pools_json() == (b"[1]", True)
        await asyncio.sleep(0)  # one loop turn: the refresh task starts and calls
        assert calls == ["pools", "pools"]  # one refresh, not one per request
        release.set()
        await asyncio.gather(*service._background)  # the refresh has stored its answer
        now[0] = 1.2  # the first answer's expiry: the refreshed one is served, no wait
        assert await service.pools_json() == (b"[2]", True)
        service.close()

    asyncio.run(scenario())


def test_bounded_map_forgets_least_recently_used() -> None:
    from hive_ray._api._cache import BoundedMap

    seen: BoundedMap[int] = BoundedMap(2)
    seen.put("a", 1)
    seen.put("b", 2)
    seen.get("a")
    seen.put("c", 3)
    assert seen.get("b") is None and seen.get("a") == 1 and len(seen) == 2


def test_task_window_buckets_throughput_and_latency() -> None:
    from hive_ray._api._telemetry import TaskWindow

    ended = []
    window = TaskWindow(clock=lambda: 100.0, on_end=lambda *args: ended.append(args))
    window.observe([
        {"task_id": "a", "pool": "p", "state": "queued", "time": 90.0},
        {"task_id": "a", "pool": "p", "state": "succeeded", "time": 91.0},
        {"task_id": "b", "pool": "p", "state": "queued", "time": 91.0},
        {"task_id": "b", "pool": "p", "state": "failed", "time": 96.0},
    ])
    points = window.series()
    assert [p["time"] for p in points] == [90.0, 95.0]
    assert points[0]["succeeded_per_second"] == 0.2 and points[0]["latency_p50_seconds"] == 1.0
    assert points[1]["failed_per_second"] == 0.2 and points[1]["latency_p95_seconds"] == 5.0
    assert ended == [("p", "succeeded", 1.0), ("p", "failed", 5.0)]


def test_problem_slugs_and_statuses() -> None:
    from hive_ray._api._problems import _slug, status_of
    from hive_ray._errors import OverloadedError, TaskNotFoundError

    assert _slug("TaskNotFoundError") == "task-not-found"
    assert status_of(TaskNotFoundError(task_id="x")) == 404
    assert status_of(OverloadedError(pool="p", retry_after=2.5)) == 429


def test_a_journal_that_cannot_record_is_a_503_with_its_reason() -> None:
    from hive_ray._api._problems import from_hive_error
    from hive_ray._errors import JournalError

    answer = from_hive_error(JournalError("no space left for the journal: free disk space", reason="full"))
    body = json.loads(answer.body)
    assert answer.status_code == 503 and answer.headers["Retry-After"] == "30"
    assert body["reason"] == "full" and body["error"] == "JournalError" and "free disk space" in body["detail"]


def test_the_serve_config_agrees_with_the_settings() -> None:
    import yaml

    from hive_ray._settings import Settings

    config = yaml.safe_load((Path(__file__).resolve().parents[2] / "deploy" / "serve.yaml").read_text())
    defaults = Settings()
    [app] = config["applications"]
    [deployment] = app["deployments"]
    assert app["import_path"] == "hive_ray._api._deployment:app_builder"
    assert deployment["name"] == "HiveAPI" and deployment["num_replicas"] == defaults.api_replicas
    assert deployment["max_ongoing_requests"] == defaults.api_max_ongoing_requests
    assert deployment["max_queued_requests"] == defaults.api_max_queued_requests
    assert config["http_options"]["host"] == defaults.http_host == "127.0.0.1"
    assert config["http_options"]["port"] == defaults.http_port
    assert config["grpc_options"]["port"] == defaults.grpc_port
    assert config["http_options"]["request_timeout_s"] == defaults.api_request_timeout_seconds
    assert config["grpc_options"]["grpc_servicer_functions"] == [
        "hive_ray._api.hive_pb2_grpc.add_HiveServicer_to_server"]
