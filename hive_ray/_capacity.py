"""How many agents a pool may have: admin limits and what the cluster's memory can hold.

Every agent lives in a host process: one per agent with dedicated placement,
one per ``agents_per_host`` agents when packed. A host process costs about
50 MB whatever Ray resources it reserves (measured: 50 MB USS for an idle
actor, ~55 MB for a host), so the number of host processes is what a cluster
runs out of first. A review asked for 22,605 dedicated agents: the orchestrator
started ~340 processes, took memory to 20 of 23 GB and stopped answering. Now a
pool size is checked before anything starts, against:

- ``max_agents_per_pool`` (an admin-set maximum), and
- the host-process budget: ``max_host_processes`` if set, else half the memory
  Ray reports for the cluster at :data:`HOST_PROCESS_BYTES` per process.

Ray resources (CPUs, GPUs, custom ones) are not checked here: agents that need
more than the cluster has stay ``starting`` and their demand goes to the Ray
autoscaler, which may add nodes.

Pure Python: unit-tested without Ray.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from hive_ray._errors import CapacityError

#: What one host process costs, for the budget derived from the cluster's memory.
HOST_PROCESS_BYTES = 64 * 1024 * 1024
#: Share of the cluster's memory that host processes may take by default.
HOST_MEMORY_SHARE = 0.5
#: The derived budget never goes below this (a small cluster still runs a few pools).
MIN_HOST_PROCESSES = 8


@dataclass(frozen=True, slots=True)
class CapacityLimits:
    """The limits in force: from settings and what the cluster reports."""

    max_agents_per_pool: int
    max_host_processes: int | None  # the admin's setting; None: derived from memory
    cluster_memory_bytes: float | None  # Ray's "memory" resource; None: unknown

    def host_budget(self) -> int | None:
        """Host processes all pools together may use, or None when nothing limits them."""
        if self.max_host_processes is not None:
            return self.max_host_processes
        if not self.cluster_memory_bytes:
            return None
        derived = int(self.cluster_memory_bytes * HOST_MEMORY_SHARE // HOST_PROCESS_BYTES)
        return max(MIN_HOST_PROCESSES, derived)

    def budget_reason(self) -> str:
        if self.max_host_processes is not None:
            return f"max_host_processes is {self.max_host_processes}"
        assert self.cluster_memory_bytes is not None
        return (f"half the cluster's {self.cluster_memory_bytes / 2**30:.1f} GiB of memory at "
                f"{HOST_PROCESS_BYTES // 2**20} MiB per host process; set max_host_processes to change it")


def hosts_for(agents: int, agents_per_host: int) -> int:
    """Host processes ``agents`` need at ``agents_per_host`` agents each."""
    return math.ceil(max(0, agents) / max(1, agents_per_host))


def room_for(limits: CapacityLimits, *, agents_per_host: int, other_hosts: int) -> int:
    """The most agents a pool may have, given the host processes other pools use."""
    room = limits.max_agents_per_pool
    budget = limits.host_budget()
    if budget is not None:
        room = min(room, max(0, budget - other_hosts) * max(1, agents_per_host))
    return room


def check_pool_size(limits: CapacityLimits, *, pool: str, wanted: int, agents_per_host: int,
                    other_hosts: int) -> None:
    """Raise :class:`CapacityError`, saying which limit and what to do, if ``wanted`` does not fit."""
    if wanted > limits.max_agents_per_pool:
        raise CapacityError(
            f"pool {pool!r} cannot have {wanted:,} agents: max_agents_per_pool is "
            f"{limits.max_agents_per_pool:,}. Ask for fewer, or raise the setting "
            "(HIVE_MAX_AGENTS_PER_POOL) if the cluster can hold them.",
            pool=pool, wanted=wanted, limit=limits.max_agents_per_pool)
    budget = limits.host_budget()
    needed = hosts_for(wanted, agents_per_host)
    if budget is not None and other_hosts + needed > budget:
        room = room_for(limits, agents_per_host=agents_per_host, other_hosts=other_hosts)
        placement = ("one host process per agent (dedicated placement)" if agents_per_host <= 1
                     else f"one host process per {agents_per_host} agents")
        packed_hint = (" Packed placement (placement: packed) runs hundreds of agents per process."
                       if agents_per_host <= 1 else "")
        raise CapacityError(
            f"pool {pool!r} cannot have {wanted:,} agents: that needs {needed:,} host processes "
            f"({placement}); other pools use {other_hosts:,} and the cluster has room for "
            f"{budget:,} ({limits.budget_reason()}). Ask for at most {room:,}.{packed_hint}",
            pool=pool, wanted=wanted, limit=room)


__all__ = ["CapacityLimits", "check_pool_size", "hosts_for", "room_for"]
