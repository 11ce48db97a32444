"""Agent types by name: registered in-process or through the ``hive_ray.agents`` entry point.

An installable package adds agent types by declaring, in its ``pyproject.toml``::

    [project.entry-points."hive_ray.agents"]
    translator = "my_package.agents:Translator"

The registry stores *references* (``"module:QualifiedName"`` or the class
itself) and imports a class only when it is needed, so listing types is cheap
and agent processes import only the code they run.
"""

from __future__ import annotations

import importlib
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from hive_ray._errors import ConfigurationError, UnknownAgentTypeError

if TYPE_CHECKING:
    from hive_ray._agent import Agent

ENTRY_POINT_GROUP = "hive_ray.agents"

_lock = threading.Lock()
_registered: dict[str, type[Agent] | str] = {}
_entry_points: dict[str, str] | None = None


@dataclass(frozen=True, slots=True)
class AgentTypeInfo:
    """What the orchestrator needs to know about a type without running it."""

    name: str
    capabilities: frozenset[str]
    concurrency: int
    reference: str | bytes  # "module:Qualname", or the class pickled by value
    virtual: bool = False  # a VirtualAgent type: one activation per key (hive_ray._virtual)
    subscriptions: tuple[str, ...] = ()  # a virtual type's topics (its class's ``subscriptions``)


def register_agent(cls: type[Agent], name: str | None = None) -> type[Agent]:
    """Register ``cls`` under ``name`` (default: its ``agent_type``). Usable as a decorator."""
    from hive_ray._agent import Agent

    if not (isinstance(cls, type) and issubclass(cls, Agent)):
        raise ConfigurationError(
            f"register_agent() takes a subclass of hive_ray.Agent, got {cls!r}"
        )
    with _lock:
        _registered[name or cls.type_name()] = cls
    return cls


def _discover_entry_points() -> dict[str, str]:
    global _entry_points
    if _entry_points is None:
        from importlib.metadata import entry_points

        _entry_points = {point.name: point.value for point in entry_points(group=ENTRY_POINT_GROUP)}
    return _entry_points


def known_agent_types() -> list[str]:
    """Every registered or installed type name."""
    with _lock:
        names = set(_registered)
    return sorted(names | set(_discover_entry_points()))


def load_agent_class(name_or_reference: str) -> type[Agent]:
    """Import the class registered as ``name_or_reference`` (or a ``module:Class`` path)."""
    from hive_ray._agent import Agent

    with _lock:
        found = _registered.get(name_or_reference)
    if found is None:
        found = _discover_entry_points().get(name_or_reference)
    if found is None and ":" in name_or_reference:
        found = name_or_reference
    if found is None:
        raise UnknownAgentTypeError(agent_type=name_or_reference, known=known_agent_types())
    if isinstance(found, str):
        module_name, _, qualname = found.partition(":")
        try:
            target: Any = importlib.import_module(module_name)
            for part in qualname.split("."):
                target = getattr(target, part)
        except (ImportError, AttributeError) as error:
            raise ConfigurationError(
                f"agent type {name_or_reference!r} points at {found!r}, which cannot be "
                f"imported ({error}); check the entry point or install the package"
            ) from None
        found = target
    if not (isinstance(found, type) and issubclass(found, Agent)):
        raise ConfigurationError(
            f"agent type {name_or_reference!r} resolves to {found!r}, not a hive_ray.Agent subclass"
        )
    return found


def describe(agent: type[Agent] | str) -> AgentTypeInfo:
    """Describe a type for the orchestrator; classes not importable by name are pickled."""
    cls = load_agent_class(agent) if isinstance(agent, str) else agent
    reference: str | bytes
    if isinstance(agent, str) and agent in _discover_entry_points():
        reference = _discover_entry_points()[agent]  # installed: every process can import it
    elif isinstance(agent, str):
        # Registered in this process only: other processes know it by its code.
        reference = _reference_of(cls) if cls.__module__.split(".")[0] == "hive_ray" else None
        reference = reference or _pickle_by_value(cls)
    elif cls.__module__.split(".")[0] == "hive_ray":
        reference = _reference_of(cls) or _pickle_by_value(cls)
    else:
        # A class handed over as an object may live in a notebook, a script or a
        # test module that agent processes cannot import: ship its code by value.
        reference = _pickle_by_value(cls)
    return AgentTypeInfo(
        name=cls.type_name(),
        capabilities=frozenset(cls.capabilities),
        concurrency=cls.concurrency(),
        reference=reference,
        virtual=bool(getattr(cls, "is_virtual", lambda: False)()),
        subscriptions=tuple(getattr(cls, "subscriptions", ())),
    )


def _reference_of(cls: type) -> str | None:
    module = getattr(cls, "__module__", "")
    qualname = getattr(cls, "__qualname__", "")
    if not module or module == "__main__" or "<locals>" in qualname:
        return None
    try:
        target: Any = importlib.import_module(module)
        for part in qualname.split("."):
            target = getattr(target, part)
    except (ImportError, AttributeError):
        return None
    return f"{module}:{qualname}" if target is cls else None


def _pickle_by_value(cls: type) -> bytes:
    import sys

    from ray import cloudpickle

    module = sys.modules.get(cls.__module__)
    if module is None or cls.__module__ == "__main__":
        return cloudpickle.dumps(cls)
    cloudpickle.register_pickle_by_value(module)
    try:
        return cloudpickle.dumps(cls)
    finally:
        cloudpickle.unregister_pickle_by_value(module)


def materialize(reference: str | bytes) -> type[Agent]:
    """Turn a reference from :class:`AgentTypeInfo` back into the class (in an agent process)."""
    if isinstance(reference, bytes):
        from ray import cloudpickle

        return cloudpickle.loads(reference)
    return load_agent_class(reference)
