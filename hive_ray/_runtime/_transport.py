"""Transport: how drivers and hosts reach the orchestrator.

A mixin of :class:`~hive_ray._runtime._orchestrator.Orchestrator`. Ray actor
calls reach every public method; the data plane (``_channel.py``) carries the
operations that :mod:`hive_ray._operations` marks ``data_plane``, and answers
them through :meth:`Transport._answer_client_call`.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from hive_ray._errors import ConfigurationError
from hive_ray._operations import DATA_PLANE_OPERATIONS
from hive_ray._runtime._state import SharedState

if TYPE_CHECKING:
    pass

logger = logging.getLogger("hive_ray.orchestrator")


class Transport(SharedState):
    """The data plane's start-up and the calls that arrive over it."""

    # Shared state: see _state.py. What only this part uses:
    _data_plane: Any  # hive_ray._runtime._data_plane.DataPlane, or None when it is off

    async def _make_ray_placement(self) -> Any:
        import ray

        from hive_ray._runtime._data_plane import DataPlane
        from hive_ray._runtime._placement import RayPlacement

        context = ray.get_runtime_context()
        # Listens on loopback; a listener for other nodes opens when a peer there needs it.
        self._data_plane = await DataPlane.start(
            self.settings, node_id=context.get_node_id(), node_address=ray.util.get_node_ip_address(),
            call_handler=self._answer_client_call, parts_handler=self._take_parts)
        return RayPlacement(context.current_actor, namespace=self.settings.namespace,
                            data_plane=self._data_plane, orchestrator_name=self.settings.orchestrator_name,
                            orphan_exit_seconds=self.settings.orphaned_host_exit_seconds,
                            max_result_bytes=self.settings.max_result_bytes_in_memory)

    async def _answer_client_call(self, method: str, args: tuple[Any, ...]) -> Any:
        if method not in DATA_PLANE_OPERATIONS:
            raise ConfigurationError(f"{method!r} cannot be called over the data plane; use a Ray call")
        return await getattr(self, method)(*args)

    async def client_endpoint(self, node_id: str | None = None) -> Any:
        """The data plane's :class:`~hive_ray._runtime._endpoint.Endpoint` for a driver on Ray
        node ``node_id`` (loopback on this node, the node address elsewhere), or None: use Ray calls."""
        await self._ensure_started()
        if self._data_plane is None:
            return None
        return await self._data_plane.endpoint_for(node_id)


__all__ = ["Transport"]
