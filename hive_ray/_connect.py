"""Finding or starting what a :class:`hive_ray.Hive` talks to: Ray's token authentication,
the orchestrator actor by name, and the head node that ``hive up`` started on this machine."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hive_ray._settings import Settings


def _ensure_token_auth() -> None:
    """Secure by default: Ray's token authentication, for embedded clusters and the ones
    `hive up` starts. ``RAY_AUTH_MODE=disabled`` opts out.

    Ray reads the mode when it is imported; if it already was (a notebook that ran
    ``import ray`` first), its configuration is refreshed the way Ray itself does.
    """
    import sys

    if "RAY_AUTH_MODE" in os.environ:
        return
    os.environ["RAY_AUTH_MODE"] = "token"
    if "ray" in sys.modules:
        try:
            from ray._raylet import Config

            Config.initialize("")
        except (ImportError, AttributeError):  # another Ray version: the variable still reaches new processes
            pass


def get_or_create_orchestrator(settings: Settings, *, detached: bool) -> Any:
    """The orchestrator actor by name, created on first use."""
    import ray

    from hive_ray._runtime._orchestrator import Orchestrator

    try:
        return ray.get_actor(settings.orchestrator_name, namespace=settings.namespace)
    except ValueError:
        pass
    options: dict[str, Any] = {
        "name": settings.orchestrator_name,
        "namespace": settings.namespace,
        "get_if_exists": True,
        "num_cpus": 0,
        "max_concurrency": settings.max_concurrent_calls,
        "max_restarts": -1,
        # On the head node, beside its journal, and never on a worker that may go away.
        "resources": {"node:__internal_head__": 0.001},
    }
    if detached:
        options["lifetime"] = "detached"
    actor_class = ray.remote(Orchestrator)
    return actor_class.options(**options).remote(settings.model_dump(mode="json"))


def local_cluster_address(settings: Settings) -> str | None:
    """The address of the head ``hive up`` started, if that very process still runs (its
    pid, start time and command line are compared: a pid alone may name another process)."""
    from hive_ray._local_head import running_head

    record = running_head(Path(settings.state_dir))
    return record.address if record is not None else None


__all__ = ["_ensure_token_auth", "get_or_create_orchestrator", "local_cluster_address"]
