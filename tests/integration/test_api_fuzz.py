# ruff: noqa: F811 - the shared fixtures are imported, and pytest passes them as arguments
"""The OpenAPI document tells the truth: schemathesis, every check, every phase, the live API.

Schemathesis (its command line, as a user would run it) loads ``/openapi.json``
with an admin key and sends requests over real HTTP: the schema's examples,
its coverage probes (boundaries, missing fields, wrong types, undocumented
methods), random valid and invalid requests, and stateful sequences that
follow the links between operations (create a pool, read it, scale it, delete
it). Every check is on: no 5xx, status codes, media types and response bodies
as documented, valid data accepted, invalid data refused, ``Allow`` on 405,
authentication enforced, deleted resources gone.

The fuzzed app is a second deployment of the API, at ``/fuzz``, with an
orchestrator of its own: the fuzzer may create, scale and delete any pool it
finds without touching the session's, and ``max_agents_per_pool`` is 2 there,
so no generated request can start more than a handful of agents. Its event streams end
after half a second, so that the fuzzer's many stream requests each answer soon.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest

from tests.integration.test_api_support import READ_KEY, ApiServer, api, side_app  # noqa: F401

pytestmark = [pytest.mark.ray, pytest.mark.timeout(900)]

FUZZ_APP = "hive-fuzz"
HOOKS = "tests.integration.schemathesis_hooks"
REPOSITORY = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def fuzzed(api: ApiServer, hive_settings: dict[str, object],
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimpleNamespace]:
    """The API at ``/fuzz`` over its own orchestrator, with one echo agent and small limits."""
    from hive_ray._settings import Settings

    root = tmp_path_factory.mktemp("api-fuzz")
    suffix = root.name.rsplit("-", 1)[-1]
    settings = Settings.load({
        "orchestrator_name": f"orchestrator-api-fuzz-{suffix}",
        "analyzer_name": f"analyzer-api-fuzz-{suffix}",
        "state_dir": str(root / "state"), "journal": False,
        "max_agents_per_pool": 2, "api_max_wait_seconds": 2.0,
        # Every generated request to an event stream holds it open this long: short, so that
        # the dozens of them schemathesis sends do not dominate the run (their answers are the same).
        "api_stream_max_seconds": 0.5,
        "api_spawn_wait_seconds": 1.0,  # pools the cluster cannot place answer soon (starting)
        "api_max_body_bytes": 64 * 1024, "api_keys": {READ_KEY: "read"},
    })

    def prepare(hive: object) -> None:
        hive.spawn("echo", count=1, pool="echo", placement="packed", agents_per_host=2)  # type: ignore[attr-defined]

    with side_app(api, hive_settings, settings, app_name=FUZZ_APP, route_prefix="/fuzz",
                  prepare=prepare) as (base_url, _):
        yield SimpleNamespace(base_url=base_url, api=api, state_dir=root)


def test_schemathesis_finds_nothing_with_every_check_and_phase(fuzzed: SimpleNamespace) -> None:
    schemathesis = Path(sys.executable).with_name("schemathesis")
    assert schemathesis.exists(), "schemathesis is a test dependency: pip install -e '.[test]'"
    report = fuzzed.state_dir / "schemathesis-junit.xml"
    command = [
        str(schemathesis), "run", f"{fuzzed.base_url}/openapi.json",
        "--header", f"Authorization: Bearer {fuzzed.api.admin_key}",
        "--checks", "all",
        # Replaced by the hooks' version, which lets through only 422s for fields that disagree.
        "--exclude-checks", "positive_data_acceptance",
        "--phases", "examples,coverage,fuzzing,stateful",
        "--max-examples", "8", "--seed", "20261201", "--generation-database", "none",
        "--workers", "1", "--request-timeout", "30", "--no-color",
        "--report", "junit", "--report-junit-path", str(report),
    ]
    environment = {**os.environ, "SCHEMATHESIS_HOOKS": HOOKS,
                   "PYTHONPATH": os.pathsep.join([str(REPOSITORY), os.environ.get("PYTHONPATH", "")])}
    run = subprocess.run(command, capture_output=True, text=True, env=environment, cwd=REPOSITORY,
                         timeout=600)
    output = run.stdout + run.stderr
    assert run.returncode == 0, "schemathesis found problems (reproduce with the command it prints):\n" + output[-12000:]
    # It really ran: every phase, and the operations that change state among them.
    assert "Stateful" in output and "Coverage" in output and "Fuzzing" in output, output[-3000:]
    for operation in ("POST /v1/pools", "PATCH /v1/pools/{name}", "DELETE /v1/pools/{name}",
                      "POST /v1/tasks", "POST /v1/agents/{agent_type}/{key}/messages",
                      "GET /v1/agents/{agent_type}/{key}", "POST /v1/topics/{topic}/messages",
                      "GET /v1/topics/{topic}/events", "POST /v1/topics/{topic}/subscriptions",
                      "DELETE /v1/topics/{topic}/subscriptions/{agent_type}/{key}", "GET /v1/topics"):
        assert operation in report.read_text(), f"{operation} was not fuzzed"


def test_the_document_needs_a_key_and_documents_problems(fuzzed: SimpleNamespace) -> None:
    assert httpx.get(fuzzed.base_url + "/openapi.json", timeout=30).status_code == 401
    document = httpx.get(fuzzed.base_url + "/openapi.json", headers=fuzzed.api.headers("read"), timeout=30).json()
    assert document["servers"] == [{"url": "/fuzz"}]
    for path, item in document["paths"].items():
        for method, operation in item.items():
            for status, response in operation["responses"].items():
                if int(status) >= 400:
                    assert list(response["content"]) == ["application/problem+json"], (method, path, status)
    submit = document["paths"]["/v1/tasks"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    spec = document["components"]["schemas"][submit["$ref"].rsplit("/", 1)[-1]]
    assert [branch["required"] for branch in spec["oneOf"]] == [["agent_type"], ["capability"], ["pool"]]
    scale = document["paths"]["/v1/pools/{name}"]["patch"]["requestBody"]["content"]["application/json"]["schema"]
    count = document["components"]["schemas"][scale["$ref"].rsplit("/", 1)[-1]]["properties"]["count"]
    assert count["type"] == "integer" and count["maximum"] == 2
