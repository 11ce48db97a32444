"""Fixtures shared by every test tier.

Integration and end-to-end tests share ONE local Ray for the whole run
(starting Ray takes about 5 s on CI's 2 cores) and one orchestrator; each test
uses pools with unique names so tests do not see each other's agents.
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

import pytest

ARTIFACTS = Path(os.environ.get("HIVE_TEST_ARTIFACTS", Path(__file__).resolve().parent.parent / "test-artifacts"))

_names = itertools.count()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Modules that never use the session-wide Ray run before those that do.

    The session's Ray, once started, stays up until the run ends, with the API, the
    orchestrators and every agent the integration tests left running; on CI's 2 cores it
    takes CPU from the end-to-end tests that start clusters of their own (`hive up`, an
    embedded Ray in a kernel, a three-node cluster). Those run first, on an idle machine.
    Each module stays in one piece and keeps its order; so does each group.
    """
    uses_ray: dict[str, bool] = {}
    for item in items:
        module = item.nodeid.split("::", 1)[0]
        uses_ray[module] = uses_ray.get(module, False) or "ray_session" in item.fixturenames
    items.sort(key=lambda item: uses_ray[item.nodeid.split("::", 1)[0]])  # stable


@pytest.fixture
def unique_name(request: pytest.FixtureRequest) -> str:
    """A pool name no other test uses."""
    base = "".join(ch if ch.isalnum() else "-" for ch in request.node.name.lower())[:30].strip("-")
    return f"{base}-{next(_names)}"


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS


@pytest.fixture(scope="session")
def ray_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The session-wide local Ray. Logical CPUs are generous: agents default to num_cpus=0."""
    import logging

    import ray

    if ray.is_initialized():
        yield
        return
    ray.init(
        address="local",  # never some other cluster running on this machine
        num_cpus=8,
        namespace="hive",
        include_dashboard=False,
        logging_level=logging.WARNING,
        log_to_driver=False,
    )
    try:
        yield
    finally:
        ray.shutdown()


@pytest.fixture(scope="session")
def hive_settings(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    state = tmp_path_factory.mktemp("hive-state")
    # Prices of the fake model endpoint's "fake" model (tests/fake_openai.py): token costs.
    return {"state_dir": str(state), "journal_dir": str(state / "journal"),
            "llm_prices": {"fake": {"prompt_per_million_usd": 1.0, "completion_per_million_usd": 2.0}}}


@pytest.fixture(scope="session")
def hive(ray_session: None, hive_settings: dict[str, object]) -> Iterator[object]:
    """A client of the session's orchestrator."""
    from hive_ray import Hive

    client = Hive.connect(settings=hive_settings)
    try:
        yield client
    finally:
        client.close()


@pytest.fixture(autouse=True)
def _stop_the_pools_a_test_started(request: pytest.FixtureRequest) -> Iterator[None]:
    """Pools a test started on the session's orchestrator (through ``hive`` or the API) are
    stopped after it. Nothing else would stop them: their idle agents, one process each,
    would stay until the run ends and take CPU (health checks) from every later test."""
    if "hive" not in request.fixturenames or "ray_session" not in request.fixturenames:
        yield
        return
    client = request.getfixturevalue("hive")  # the session's, or a module's override of it
    before = {pool.name for pool in client.pools()}
    yield
    from hive_ray import UnknownPoolError

    for pool in client.pools():
        if pool.name not in before:
            try:
                client.stop(pool.name)
            except UnknownPoolError:  # stopped meanwhile by the test's own clean-up
                pass


def _wait_until(predicate: Callable[[], bool], timeout: float = 30.0, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


@pytest.fixture
def wait_until() -> Callable[..., bool]:
    """``wait_until(predicate, timeout)``: poll a condition of a real cluster until it holds."""
    return _wait_until


@pytest.fixture
def hive_overrides() -> dict[str, object]:
    """Settings for ``isolated_hive``; a test module overrides this fixture to change them."""
    return {}


@contextmanager
def _private_hive(settings: dict[str, object]) -> Iterator[object]:
    """A client of a private orchestrator (own name and journal), stopped and killed after."""
    import ray

    from hive_ray import Hive

    client = Hive.connect(settings=settings)
    try:
        yield client
    finally:
        try:
            client._call("shutdown", timeout=60)
        finally:
            ray.kill(client._orchestrator, no_restart=True)
            client.close()


@pytest.fixture(scope="session")
def private_hive(ray_session: None) -> Callable[[dict[str, object]], AbstractContextManager[object]]:
    """``with private_hive(settings) as hive``: for fixtures of any scope that need their own
    orchestrator (settings must name it and its journal)."""
    return _private_hive


@pytest.fixture
def isolated_hive(ray_session: None, tmp_path: Path, request: pytest.FixtureRequest,
                  hive_overrides: dict[str, object]) -> Iterator[object]:
    """A client of a private orchestrator (own name and journal), for tests that break it."""
    name = f"orchestrator-{request.node.name[:40]}-{next(_names)}"
    settings = {"orchestrator_name": name, "state_dir": str(tmp_path / "state"),
                "journal_dir": str(tmp_path / "journal"), **hive_overrides}
    with _private_hive(settings) as client:
        yield client
