"""Transport: how drivers and hosts reach the orchestrator.

A mixin of :class:`~hive_ray._runtime._orchestrator.Orchestrator`. Ray actor
calls reach every public method; the data plane (``_channel.py``) carries the
operations that :mod:`hive_ray._operations` marks ``data_plane``, and answers
them through :meth:`Transport._answer_client_call`.
"""

from __future__ import annotations

import asyncio
import logging
import random
from typing import TYPE_CHECKING, Any

from hive_ray._errors import ConfigurationError
from hive_ray._operations import DATA_PLANE_OPERATIONS
from hive_ray._settings import Settings
from hive_ray._task import TaskEntry

if TYPE_CHECKING:
    from hive_ray._runtime._pools import Pool

logger = logging.getLogger("hive_ray.orchestrator")


class Transport:
    """The data plane's start-up and the calls that arrive over it."""

    # State this part reads or writes, owned as documented in _orchestrator.py.
    settings: Settings
    _placement: Any
    _journal: Any
    _pools: dict[str, Pool]
    _tasks: dict[str, TaskEntry]
    _rng: random.Random
    _counters: dict[str, int]
    _wakeup: asyncio.Event | None
    _tracer: Any
    _channels: Any
    _channel_token: str

    async def _make_ray_placement(self) -> Any:
        import secrets

        import ray

        from hive_ray._runtime._channel import ChannelServer
        from hive_ray._runtime._placement import RayPlacement

        me = ray.get_runtime_context().current_actor
        self._channel_token = secrets.token_hex(16)
        channels: ChannelServer | None = ChannelServer(self._channel_token, self._answer_client_call)
        host = self.settings.data_plane_host or _data_plane_bind_address()
        if host == "off":
            channels = None
        else:
            try:
                await channels.start(host)
            except OSError as error:
                logger.warning("data plane could not listen on %s (%s); using Ray calls", host, error)
                channels = None
        self._channels = channels
        return RayPlacement(me, namespace=self.settings.namespace, channels=channels,
                            channel_token=self._channel_token,
                            max_result_bytes=self.settings.max_result_bytes_in_memory)

    async def _answer_client_call(self, method: str, args: tuple[Any, ...]) -> Any:
        if method not in DATA_PLANE_OPERATIONS:
            raise ConfigurationError(f"{method!r} cannot be called over the data plane; use a Ray call")
        return await getattr(self, method)(*args)

    async def client_endpoint(self) -> tuple[tuple[str, int], str, str] | None:
        """``(address, token, node address)`` of the data plane for drivers, or None if off."""
        await self._ensure_started()
        if self._channels is None or self._channels.address is None:
            return None
        import ray

        return self._channels.address, self._channel_token, ray.util.get_node_ip_address()


def _data_plane_bind_address() -> str:
    """Loopback when every node shares this machine's address, else Ray's node address."""
    import ray

    own = ray.util.get_node_ip_address()
    addresses = {node["NodeManagerAddress"] for node in ray.nodes() if node.get("Alive")}
    return "127.0.0.1" if addresses <= {own} else own


__all__ = ["Transport"]
