import pytest
from pydantic import ValidationError

from hive_ray import Agent, ConfigurationError, UnknownAgentTypeError, register_agent
from hive_ray._config import load_config
from hive_ray._models import PoolSpec, TaskSpec
from hive_ray._registry import describe, known_agent_types, load_agent_class


def test_shipped_agents_are_found_through_the_entry_point():
    assert {"echo", "compute", "sleep", "coordinator"} <= set(known_agent_types())
    assert load_agent_class("compute").capabilities >= {"compute"}


def test_unknown_type_lists_known_ones():
    with pytest.raises(UnknownAgentTypeError, match="no agent type 'nope'; known types: .*echo"):
        load_agent_class("nope")


def test_register_agent_by_decorator_and_describe():
    @register_agent
    class Greeter(Agent):
        agent_type = "greeter-unit"
        capabilities = frozenset({"greet"})
        concurrent = True
        max_concurrency = 4

        def handle(self, task):
            return f"hello {task.payload}"

    assert "greeter-unit" in known_agent_types()
    info = describe("greeter-unit")
    assert info.capabilities == {"greet"} and info.concurrency == 4
    assert isinstance(info.reference, bytes)  # defined in a function: shipped by value


def test_register_agent_refuses_non_agents():
    with pytest.raises(ConfigurationError, match="takes a subclass of hive_ray.Agent"):
        register_agent(dict)  # type: ignore[arg-type]


def test_task_spec_needs_exactly_one_target():
    with pytest.raises(ValidationError, match="give exactly one of agent_type, capability or pool"):
        TaskSpec(payload=1)
    with pytest.raises(ValidationError, match=r"got agent_type, capability"):
        TaskSpec(agent_type="echo", capability="x")
    with pytest.raises(ValidationError, match="timeout"):
        TaskSpec(agent_type="echo", timeout=-1)
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        TaskSpec(agent_type="echo", priorty=3)


def test_pool_spec_rejects_typos_and_bad_names():
    with pytest.raises(ValidationError, match="Extra inputs"):
        PoolSpec(name="p", agent_type="echo", cout=3)
    with pytest.raises(ValidationError, match="name"):
        PoolSpec(name="has space", agent_type="echo")


def test_default_config_has_the_demo_pools():
    config = load_config(None)
    assert {pool.name for pool in config.pools} == {"echo", "compute", "sleep", "coordinator"}


def test_config_errors_point_at_the_key(tmp_path):
    bad = tmp_path / "hive.yaml"
    bad.write_text("pools:\n  - {name: echo, agent_type: echo, count: -1}\n")
    with pytest.raises(ConfigurationError, match=r"pools.0.count"):
        load_config(bad)
    with pytest.raises(ConfigurationError, match="cannot read config file"):
        load_config(tmp_path / "missing.yaml")


def test_pool_spec_refuses_fields_that_disagree_naming_both():
    with pytest.raises(ValidationError, match=r"restart.backoff_initial_seconds \(20\) is above "
                                              r"restart.backoff_max_seconds \(10\)"):
        PoolSpec(name="p", agent_type="echo", restart={"backoff_initial_seconds": 20})
    with pytest.raises(ValidationError, match=r"autoscale.min_agents \(5\) is above autoscale.max_agents \(2\)"):
        PoolSpec(name="p", agent_type="echo", autoscale={"min_agents": 5, "max_agents": 2})
    # Each is fine alone, and the policies they feed accept them.
    from hive_ray._supervision import RestartPolicy

    spec = PoolSpec(name="p", agent_type="echo", restart={"backoff_initial_seconds": 20, "backoff_max_seconds": 30})
    RestartPolicy(**spec.restart.model_dump())


def test_boundary_numbers_are_strict_and_finite():
    assert PoolSpec(name="p", agent_type="echo", count=2, num_cpus=1).num_cpus == 1.0  # an int is a number
    for bad in ({"count": 2.0}, {"count": "2"}, {"num_cpus": float("nan")}, {"health_check": 1},
                {"restart": {"window_seconds": float("inf")}}):
        with pytest.raises(ValidationError):
            PoolSpec(name="p", agent_type="echo", **bad)
    with pytest.raises(ValidationError):
        TaskSpec(pool="p", priority=1.0)
    assert TaskSpec(pool="p", timeout=2).timeout == 2.0
    with pytest.raises(ValidationError, match="at least 1 character"):
        TaskSpec(agent_type="")
