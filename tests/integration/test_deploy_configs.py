"""The deployment files, checked against the schemas and code they must agree with.

No Ray cluster is started here (tests/e2e/test_deploy_cluster.py runs them):
``ray-cluster.yaml`` and ``deploy/fake-cluster.yaml`` against the cluster
config schema that ships with Ray (and Ray's own config preparation),
``deploy/hive.yaml`` with hive-ray's config loader, the Serve config embedded
in ``deploy/k8s/rayservice.yaml`` against Serve's schema and against
``deploy/serve.yaml``, and the image, ports, versions and names that the
Dockerfile, the manifests and the cluster config must share.
"""

from __future__ import annotations

import copy
import json
import re
import shlex
import shutil
import subprocess
import sys
import time
import typing
import zipfile
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CLUSTER = REPO / "ray-cluster.yaml"
FAKE_CLUSTER = REPO / "deploy" / "fake-cluster.yaml"
HIVE_CONFIG = REPO / "deploy" / "hive.yaml"
SERVE_CONFIG = REPO / "deploy" / "serve.yaml"
DOCKERFILE = REPO / "deploy" / "Dockerfile"
K8S = REPO / "deploy" / "k8s"
SERVE_CONFIG_MISSING = "deploy/serve.yaml not written yet"

VERSION = re.search(r'^version = "([^"]+)"', (REPO / "pyproject.toml").read_text(), re.M).group(1)
WHEEL = f"hive_ray-{VERSION}-py3-none-any.whl"
IMAGE = f"hive-ray:{VERSION}"


def load(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def ray_schema() -> dict[str, Any]:
    import ray.autoscaler

    return json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())


def ray_version() -> str:
    from importlib.metadata import version

    return version("ray")


# --------------------------------------------------------------------------- ray-cluster.yaml
def test_ray_cluster_yaml_is_valid_for_rays_cluster_launcher() -> None:
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = load(CLUSTER)
    jsonschema.validate(config, ray_schema())
    # What `ray up` does before talking to AWS: merge the provider's defaults, validate again.
    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    assert prepared["provider"]["type"] == "aws"
    assert prepared["head_node_type"] in prepared["available_node_types"]


def test_the_schema_check_would_catch_a_typo() -> None:
    config = load(CLUSTER)
    config["idle_timeout_minute"] = config.pop("idle_timeout_minutes")
    with pytest.raises(jsonschema.ValidationError, match="idle_timeout_minute"):
        jsonschema.validate(config, ray_schema())


def test_agent_capacity_is_a_custom_resource_that_only_workers_offer() -> None:
    config = load(CLUSTER)
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    workers = {name: spec for name, spec in types.items() if name != config["head_node_type"]}

    assert head["resources"].get("agent_slot", 0) == 0
    assert workers, "no worker node type"
    for name, spec in workers.items():
        assert spec["resources"]["agent_slot"] > 0, name
        assert 0 <= spec["min_workers"] <= spec["max_workers"] <= config["max_workers"], name
        assert spec["node_config"]["InstanceType"], name
    assert sum(spec["min_workers"] for spec in workers.values()) <= config["max_workers"]
    assert config["idle_timeout_minutes"] > 0


def test_nodes_install_this_project_at_its_version_and_the_tested_ray() -> None:
    config = load(CLUSTER)
    [wheel_remote] = [remote for remote, local in config["file_mounts"].items() if local.endswith(".whl")]
    assert config["file_mounts"][wheel_remote] == f"dist/{WHEEL}", "rebuild path: bump the version here"
    assert Path(wheel_remote).name == WHEEL
    setup = " ; ".join(config["setup_commands"])
    assert f"install --quiet {wheel_remote}" in setup
    assert f'"ray[default,serve]=={ray_version()}"' in setup, "pin the Ray that the tests ran on"


def test_the_head_starts_ray_with_token_auth_then_hive_up() -> None:
    config = load(CLUSTER)
    head = config["head_start_ray_commands"]
    starts = [i for i, command in enumerate(head) if "ray start --head" in command]
    ups = [i for i, command in enumerate(head) if re.search(r"\bhive up\b", command)]
    assert len(starts) == 1 and len(ups) == 1 and starts[0] < ups[0], head

    hive_up = shlex.split(head[ups[0]])
    config_file = hive_up[hive_up.index("--config") + 1]
    assert "--no-block" in hive_up
    assert config["file_mounts"][config_file] == "deploy/hive.yaml"
    assert "RAY_ADDRESS=auto" in hive_up and "RAY_AUTH_MODE=token" in hive_up

    for command in [head[starts[0]], *config["worker_start_ray_commands"][1:]]:
        assert "RAY_AUTH_MODE=token" in command, command
    assert "/home/ubuntu/.ray/auth_token" in config["file_mounts"]
    for remote, local in config["file_mounts"].items():
        if not local.startswith(("~", "dist/")):  # the token and the wheel are made by the admin
            assert (REPO / local).is_file(), f"file_mounts {remote}: {local} is not in the repository"
    assert "--dashboard-host=127.0.0.1" in head[starts[0]]
    # No extra firewall rule: Ray's own group admits the cluster's nodes and SSH, nothing else.
    extra_rules = config["provider"].get("security_group", {}).get("IpPermissions", [])
    assert all((rule["FromPort"], rule["ToPort"]) == (22, 22) for rule in extra_rules), extra_rules


def test_the_cli_accepts_the_commands_the_cluster_runs() -> None:
    from hive_ray._cli import build_parser

    parser = build_parser()
    for command in load(CLUSTER)["head_start_ray_commands"]:
        words = shlex.split(command)
        if "hive" in words:
            args = parser.parse_args(words[words.index("hive") + 1:])
            assert args.no_block and args.config
    assert parser.parse_args(["down"]).handler.__name__ == "_down"


def test_hive_yaml_loads_with_hives_config_loader() -> None:
    from hive_ray._config import load_config
    from hive_ray._settings import Settings

    config = load_config(HIVE_CONFIG)
    settings = Settings(**config.settings)
    assert str(settings.journal_dir).startswith("/home/ubuntu/")
    assert config.pools
    for pool in config.pools:
        assert pool.resources.get("agent_slot", 0) >= 1, f"pool {pool.name} would not reach a worker"


# --------------------------------------------------------------------------- fake-cluster.yaml
def test_fake_cluster_yaml_is_valid_and_mirrors_the_real_node_types() -> None:
    from ray.autoscaler._private.util import validate_config

    config = load(FAKE_CLUSTER)
    jsonschema.validate(config, ray_schema())
    validate_config(config)  # what the autoscaler's monitor checks when it reads the file
    assert config["provider"]["type"] == "fake_multinode"
    types = config["available_node_types"]
    assert types[config["head_node_type"]]["resources"]["agent_slot"] == 0
    workers = [spec for name, spec in types.items() if name != config["head_node_type"]]
    assert workers and all(spec["resources"]["agent_slot"] > 0 for spec in workers)
    assert config["idle_timeout_minutes"] <= 0.5, "the e2e test waits for idle nodes to go"


# --------------------------------------------------------------------------- Dockerfile
def dockerfile_instructions() -> list[tuple[str, str]]:
    """``(INSTRUCTION, arguments)`` pairs, with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    pairs = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            instruction, _, arguments = line.partition(" ")
            pairs.append((instruction.upper(), arguments.strip()))
    return pairs


def test_dockerfile_structure() -> None:
    instructions = dockerfile_instructions()
    stages = [arguments for instruction, arguments in instructions if instruction == "FROM"]
    assert len(stages) == 2 and stages[0].endswith(" AS build"), stages
    assert all(stage.startswith("python:${PYTHON_VERSION}-slim") for stage in stages)
    args = dict(arguments.split("=", 1) for instruction, arguments in instructions
                if instruction == "ARG" and "=" in arguments)
    assert args["PYTHON_VERSION"] == f"{sys.version_info.major}.{sys.version_info.minor}"
    assert args["RAY_VERSION"] == ray_version(), "the image must hold the Ray the tests ran on"
    for instruction, arguments in instructions:
        if instruction == "COPY" and not arguments.startswith("--from"):
            for source in arguments.split()[:-1]:
                assert (REPO / source).exists(), f"COPY {source}: no such path in the repository"
    users = [arguments for instruction, arguments in instructions if instruction == "USER"]
    assert users and users[-1] not in ("root", "0"), "the image must not run as root"
    installs = [arguments for instruction, arguments in instructions
                if instruction == "RUN" and "pip install" in arguments]
    assert any("/tmp/wheels/*.whl" in run and "ray[default,serve]==${RAY_VERSION}" in run for run in installs)
    assert f"-t {IMAGE} " in DOCKERFILE.read_text(), "the documented tag must be the project version"


def test_dockerfile_build_stage_builds_the_wheel_the_cluster_ships(tmp_path: Path) -> None:
    """Replay the build stage's COPY lines into a fresh context and build the wheel the same way."""
    context = tmp_path / "src"
    context.mkdir()
    for instruction, arguments in dockerfile_instructions():
        if instruction == "COPY" and not arguments.startswith("--from"):
            *sources, destination = arguments.split()
            for source in sources:
                target = context / destination / (Path(source).name if destination.endswith("/") else "")
                if (REPO / source).is_dir():
                    shutil.copytree(REPO / source, target, ignore=shutil.ignore_patterns("__pycache__"))
                else:
                    target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy(REPO / source, target)
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    "--wheel-dir", str(wheels), str(context)], check=True, capture_output=True, timeout=120)

    [wheel] = list(wheels.iterdir())
    assert wheel.name == WHEEL == Path(next(iter(
        remote for remote in load(CLUSTER)["file_mounts"] if remote.endswith(".whl")))).name
    names = set(zipfile.ZipFile(wheel).namelist())
    for needed in ("hive_ray/__init__.py", "hive_ray/default_config.yaml", "hive_ray/actors/echo.py",
                   "hive_ray/_api/__init__.py", "hive_ray/_api/hive.proto", "hive_ray/py.typed"):
        assert needed in names, f"{needed} missing from the wheel"
    entry_points = zipfile.ZipFile(wheel).read(f"hive_ray-{VERSION}.dist-info/entry_points.txt").decode()
    assert "hive = hive_ray._cli:main" in entry_points
    module = serve_import_path(embedded_serve_config()).partition(":")[0]
    assert module.replace(".", "/") + ".py" in names or not SERVE_CONFIG.exists(), (
        f"the Serve app's module {module} is not in the wheel"
    )


# --------------------------------------------------------------------------- Kubernetes
def manifest(name: str) -> dict[str, Any]:
    [document] = list(yaml.safe_load_all((K8S / name).read_text()))
    return document


def embedded_serve_config() -> dict[str, Any]:
    return yaml.safe_load(manifest("rayservice.yaml")["spec"]["serveConfigV2"])


def serve_import_path(config: dict[str, Any]) -> str:
    [application] = config["applications"]
    return application["import_path"]


def unknown_keys(model: Any, data: Any, where: str = "") -> list[str]:
    """Keys the pydantic ``model`` does not define, recursively.

    Serve's schema models ignore unknown fields, so a misspelt option in a
    Serve config would be dropped silently by ``serve deploy``; this finds it.
    """
    from pydantic import BaseModel

    if not isinstance(data, dict):
        return []
    found = []
    for key, value in data.items():
        field = model.model_fields.get(key)
        if field is None:
            found.append(f"{where}{key}")
            continue
        annotation = field.annotation
        candidates = [annotation, *typing.get_args(annotation)]
        for candidate in candidates:
            inner = typing.get_args(candidate)
            if isinstance(candidate, type) and issubclass(candidate, BaseModel):
                found += unknown_keys(candidate, value, f"{where}{key}.")
            elif inner and isinstance(inner[0], type) and issubclass(inner[0], BaseModel) and isinstance(value, list):
                for index, item in enumerate(value):
                    found += unknown_keys(inner[0], item, f"{where}{key}[{index}].")
    return found


def containers(spec: dict[str, Any]) -> list[dict[str, Any]]:
    groups = [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
    return [container for group in groups for container in group["template"]["spec"]["containers"]]


@pytest.mark.parametrize("name", ["raycluster.yaml", "rayservice.yaml"])
def test_kuberay_manifest_structure(name: str) -> None:
    document = manifest(name)
    assert document["apiVersion"] == "ray.io/v1"
    assert document["kind"] == {"raycluster.yaml": "RayCluster", "rayservice.yaml": "RayService"}[name]
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", document["metadata"]["name"])
    spec = document["spec"] if name == "raycluster.yaml" else document["spec"]["rayClusterConfig"]

    assert spec["rayVersion"] == ray_version()
    assert spec["authOptions"] == {"mode": "token"}
    assert spec["enableInTreeAutoscaling"] is True
    assert spec["headGroupSpec"]["serviceType"] == "ClusterIP", "Ray's ports must not leave the cluster"
    for group in [spec["headGroupSpec"], *spec["workerGroupSpecs"]]:
        # KubeRay's rayStartParams is map[string]string: a number or bool here is rejected.
        assert all(isinstance(value, str) for value in group["rayStartParams"].values()), group
    for group in spec["workerGroupSpecs"]:
        assert group["groupName"]
        assert 0 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        resources = json.loads(json.loads(group["rayStartParams"]["resources"]))
        assert resources["agent_slot"] > 0
    assert "resources" not in spec["headGroupSpec"]["rayStartParams"], "the head offers no agent_slot"
    for container in containers(spec):
        assert container["image"] == IMAGE, "image tag must be the project version"
        for port in container.get("ports", []):
            # Kubernetes port names: at most 15 characters, lowercase letters, digits, '-'.
            assert re.fullmatch(r"[a-z0-9]([-a-z0-9]{0,13}[a-z0-9])?", port["name"]), port
        keys = [e for e in container["env"] if e["name"] == "HIVE_API_KEYS"]
        assert keys and "secretKeyRef" in keys[0]["valueFrom"], "API keys come from a Secret"


def test_rayservice_runs_the_same_cluster_as_raycluster() -> None:
    assert manifest("rayservice.yaml")["spec"]["rayClusterConfig"] == manifest("raycluster.yaml")["spec"]


def test_the_journal_volume_is_mounted_where_the_head_looks_for_it() -> None:
    spec = manifest("raycluster.yaml")["spec"]
    head = spec["headGroupSpec"]["template"]["spec"]
    [container] = head["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    claims = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in head["volumes"]
              if "persistentVolumeClaim" in v}
    [(volume, claim)] = claims.items()
    assert mounts[volume] == env["HIVE_JOURNAL_DIR"]
    assert manifest("journal-pvc.yaml")["metadata"]["name"] == claim


def test_embedded_serve_config_validates_against_serves_schema() -> None:
    from ray.serve.schema import ServeDeploySchema

    config = embedded_serve_config()
    schema = ServeDeploySchema(**config)
    assert unknown_keys(ServeDeploySchema, config) == []
    # In a pod the proxies must listen on the pod's address for the Service to reach them.
    assert schema.http_options.host == "0.0.0.0"
    env_vars = config.get("controller_options", {}).get("runtime_env", {}).get("env_vars", {})
    assert env_vars.get("HIVE_HTTP_HOST", "0.0.0.0") == "0.0.0.0"
    head_ports = {p["name"]: p["containerPort"] for p in containers(
        manifest("rayservice.yaml")["spec"]["rayClusterConfig"])[0]["ports"]}
    assert schema.http_options.port == head_ports["serve"]
    assert schema.grpc_options.port == head_ports["serve-grpc"]
    exposed = {int(p) for instruction, arguments in dockerfile_instructions()
               if instruction == "EXPOSE" for p in arguments.split()}
    assert set(head_ports.values()) <= exposed, "EXPOSE every port the manifests use"


def test_the_strict_key_check_finds_a_misspelt_option() -> None:
    from ray.serve.schema import ServeDeploySchema

    config = embedded_serve_config()
    config["applications"][0]["deployments"][0]["max_ongoing_request"] = 5
    assert unknown_keys(ServeDeploySchema, config) == ["applications[0].deployments[0].max_ongoing_request"]


def without_bind_address(config: dict[str, Any]) -> dict[str, Any]:
    """A Serve config minus where its proxies listen (HTTP host, and the gRPC proxy's HIVE_HTTP_HOST)."""
    config = copy.deepcopy(config)
    config.get("http_options", {}).pop("host", None)
    env_vars = config.get("controller_options", {}).get("runtime_env", {}).get("env_vars", {})
    env_vars.pop("HIVE_HTTP_HOST", None)
    return config


@pytest.mark.skipif(not SERVE_CONFIG.exists(), reason=SERVE_CONFIG_MISSING)
def test_rayservice_embeds_deploy_serve_yaml() -> None:
    """Same applications, tuning, gRPC, logging and proxy options; only the bind address differs."""
    from ray.serve.schema import ServeDeploySchema

    shipped, embedded = load(SERVE_CONFIG), embedded_serve_config()
    ServeDeploySchema(**shipped)
    assert unknown_keys(ServeDeploySchema, shipped) == []
    shipped, embedded = without_bind_address(shipped), without_bind_address(embedded)
    for key in sorted(set(shipped) | set(embedded)):
        assert embedded.get(key) == shipped.get(key), (
            f"serveConfigV2 differs from deploy/serve.yaml in {key!r}: copy deploy/serve.yaml into "
            "deploy/k8s/rayservice.yaml, keeping its bind address 0.0.0.0"
        )


@pytest.mark.skipif(not SERVE_CONFIG.exists(), reason=SERVE_CONFIG_MISSING)
def test_the_serve_import_path_resolves() -> None:
    import importlib

    module, _, attribute = serve_import_path(load(SERVE_CONFIG)).partition(":")
    assert callable(getattr(importlib.import_module(module), attribute))


# --------------------------------------------------------------------------- journal backup
def test_backup_journal_copies_a_journal_that_is_being_written(tmp_path: Path) -> None:
    """The admin guide's backup command, run while another thread keeps committing tasks."""
    import threading

    from hive_ray._journal import Journal, JournalEntry

    journal = Journal.open(tmp_path / "journal")
    stop = threading.Event()
    committed = [0]

    def write() -> None:
        number = 0
        while not stop.is_set():
            for _ in range(200):
                number += 1
                journal.put(JournalEntry(task_id=f"t{number}", pool="echo", state="queued",
                                         idempotency_key=None, created_at=float(number),
                                         updated_at=float(number), finished=False, body=b"x" * 200))
            journal.commit()
            committed[0] = number

    writer = threading.Thread(target=write)
    writer.start()
    try:
        deadline = time.monotonic() + 30
        while committed[0] < 2000 and time.monotonic() < deadline:
            time.sleep(0.01)
        before = committed[0]
        done = subprocess.run([sys.executable, str(REPO / "deploy" / "backup_journal.py"),
                               str(journal.path), str(tmp_path / "backups")],
                              capture_output=True, text=True, timeout=60)
    finally:
        stop.set()
        writer.join()
        journal.close()

    assert done.returncode == 0, done.stderr
    [backup] = list((tmp_path / "backups").iterdir())
    assert backup.name.startswith("journal-") and backup.suffix == ".sqlite3"
    import sqlite3

    copy = sqlite3.connect(backup)
    try:
        [(tasks,)] = copy.execute("SELECT count(*) FROM tasks").fetchall()
        assert copy.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    finally:
        copy.close()
    assert before <= tasks <= committed[0] and f"{tasks} tasks" in done.stdout
    # And the copy opens as a journal (what a restore relies on).
    Journal.open(backup.parent, filename=backup.name).close()


def test_backup_journal_refuses_a_missing_journal(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, str(REPO / "deploy" / "backup_journal.py"),
                           str(tmp_path / "nope.sqlite3"), str(tmp_path / "backups")],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert "no journal at" in done.stderr and "HIVE_JOURNAL_DIR" in done.stderr
    assert not (tmp_path / "nope.sqlite3").exists()
