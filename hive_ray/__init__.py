"""hive-ray: supervised, observable multi-agent systems on Ray.

``import hive_ray`` is cheap: it imports neither Ray nor pydantic. Each public
name is loaded from its private module the first time it is used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "Agent": "hive_ray._agent",
    "AgentContext": "hive_ray._agent",
    "AgentInfo": "hive_ray._models",
    "CapacityError": "hive_ray._errors",
    "ConfigurationError": "hive_ray._errors",
    "Hive": "hive_ray._client",
    "HiveConnectionError": "hive_ray._errors",
    "HiveError": "hive_ray._errors",
    "IdempotencyConflictError": "hive_ray._errors",
    "JournalError": "hive_ray._errors",
    "NoRouteError": "hive_ray._errors",
    "OverloadedError": "hive_ray._errors",
    "PoolInfo": "hive_ray._models",
    "PoolSpec": "hive_ray._models",
    "ResultLostError": "hive_ray._errors",
    "Settings": "hive_ray._settings",
    "StreamRestart": "hive_ray._streaming",
    "Task": "hive_ray._task",
    "TaskCancelledError": "hive_ray._errors",
    "TaskError": "hive_ray._errors",
    "TaskFailedError": "hive_ray._errors",
    "TaskHandle": "hive_ray._client",
    "TaskNotFoundError": "hive_ray._errors",
    "TaskRecord": "hive_ray._models",
    "TaskSpec": "hive_ray._models",
    "TaskState": "hive_ray._task",
    "TaskStream": "hive_ray._streaming",
    "TaskTimeoutError": "hive_ray._errors",
    "UnknownAgentTypeError": "hive_ray._errors",
    "UnknownPoolError": "hive_ray._errors",
    "VirtualAgent": "hive_ray._virtual",
    "VirtualAgentRef": "hive_ray._agent_ref",
    "VirtualAgentState": "hive_ray._agent_ref",
    "known_agent_types": "hive_ray._registry",
    "register_agent": "hive_ray._registry",
}

__all__ = sorted(_EXPORTS)


def _find_shipped_agents_in_a_checkout() -> None:
    # Installed, actors/ is the subpackage hive_ray.actors. Imported straight from a source
    # checkout (Ray workers put the driver's working directory first on sys.path), the
    # same name must reach the top-level actors/ directory beside this package.
    import os

    here = os.path.dirname(os.path.abspath(__file__))
    root = os.path.dirname(here)
    if not os.path.isdir(os.path.join(here, "actors")) and os.path.isfile(
        os.path.join(root, "actors", "__init__.py")
    ):
        __path__.append(root)


_find_shipped_agents_in_a_checkout()


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'hive_ray' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)


if TYPE_CHECKING:
    from hive_ray._agent import Agent, AgentContext
    from hive_ray._agent_ref import VirtualAgentRef, VirtualAgentState
    from hive_ray._client import Hive, TaskHandle
    from hive_ray._errors import (
        CapacityError,
        ConfigurationError,
        HiveConnectionError,
        HiveError,
        IdempotencyConflictError,
        JournalError,
        NoRouteError,
        OverloadedError,
        ResultLostError,
        TaskCancelledError,
        TaskError,
        TaskFailedError,
        TaskNotFoundError,
        TaskTimeoutError,
        UnknownAgentTypeError,
        UnknownPoolError,
    )
    from hive_ray._models import AgentInfo, PoolInfo, PoolSpec, TaskRecord, TaskSpec
    from hive_ray._registry import known_agent_types, register_agent
    from hive_ray._settings import Settings
    from hive_ray._streaming import StreamRestart, TaskStream
    from hive_ray._task import Task, TaskState
    from hive_ray._virtual import VirtualAgent
