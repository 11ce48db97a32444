import subprocess
import sys

import hive_ray


def test_all_is_sorted_unique_and_every_name_resolves():
    assert hive_ray.__all__ == sorted(set(hive_ray.__all__))
    for name in hive_ray.__all__:
        assert getattr(hive_ray, name) is not None


def test_private_modules_are_not_exported():
    assert not [name for name in hive_ray.__all__ if name.startswith("_")]


def test_unknown_attribute_has_a_clear_error():
    try:
        hive_ray.Orchestrator  # noqa: B018
    except AttributeError as error:
        assert "has no attribute 'Orchestrator'" in str(error)
    else:
        raise AssertionError("expected AttributeError")


def test_import_is_lazy_in_a_fresh_process():
    code = (
        "import sys, hive_ray\n"
        "heavy = [m for m in ('ray', 'ray.serve', 'opentelemetry', 'fastapi', 'pydantic') if m in sys.modules]\n"
        "print(','.join(heavy))"
    )
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert output.stdout.strip() == ""


def test_a_source_checkout_finds_the_shipped_agents(tmp_path):
    """Ray workers import from the driver's working directory: from a checkout too,
    hive_ray.actors must be the top-level actors/ directory."""
    from pathlib import Path

    root = Path(hive_ray.__file__).resolve().parent.parent
    code = (
        "import sys; sys.path.insert(0, sys.argv[1])\n"
        "import hive_ray, hive_ray.actors.echo as echo\n"
        "print(hive_ray.__file__.startswith(sys.argv[1]), echo.EchoAgent.agent_type)\n"
    )
    output = subprocess.run([sys.executable, "-c", code, str(root)], capture_output=True, text=True,
                            check=True, cwd=tmp_path)
    assert output.stdout.split() == ["True", "echo"]
