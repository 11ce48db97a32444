"""The orchestrator's data plane: its token, its listeners, and the endpoint each peer is given.

Where a peer runs decides what it is given, per host at activation and per
driver when it connects:

* a peer on the orchestrator's own Ray node dials the loopback listener,
  which opens at start-up and is plain TCP (TLS too when Ray's TLS is on, or
  ``data_plane_tls`` is True);
* a peer on any other node dials a listener on the node address (or
  ``data_plane_host``), opened the first time such a peer needs it, so a
  cluster that starts as one machine and grows later gets one when it must,
  and a one-machine cluster never listens beyond loopback. That listener
  speaks TLS unless ``data_plane_tls`` is False.

A peer given no endpoint (the data plane is off, or the listener could not
open) uses Ray calls.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import ssl
from collections.abc import Mapping
from typing import Any

from hive_ray._errors import ConfigurationError
from hive_ray._runtime._channel import (
    CallHandler,
    ChannelServer,
    HostChannel,
    Listener,
    PartsHandler,
)
from hive_ray._runtime._endpoint import Endpoint
from hive_ray._runtime._frames import ChannelLimits
from hive_ray._runtime._tls import RayTlsFiles, ServerTls

logger = logging.getLogger("hive_ray.channel")

LOOPBACK = "127.0.0.1"
_WILDCARDS = {"", "0.0.0.0", "::"}


class DataPlane:
    """Owns the :class:`ChannelServer` and decides, per peer, which listener it dials."""

    def __init__(self, settings: Any, *, node_id: str, node_address: str,
                 call_handler: CallHandler | None, ray_tls: RayTlsFiles | None,
                 parts_handler: PartsHandler | None = None) -> None:
        self._settings = settings
        self._token = secrets.token_bytes(32)
        self.server = ChannelServer(self._token, call_handler, ChannelLimits.from_settings(settings), parts_handler)
        self.node_id = node_id
        self._node_address = node_address
        self._ray_tls = ray_tls
        self._tls: ServerTls | None = None
        self._loopback: Listener | None = None
        self._remote: Listener | None = None
        self._remote_lock = asyncio.Lock()
        self._remote_error = ""

    @classmethod
    async def start(cls, settings: Any, *, node_id: str, node_address: str,
                    call_handler: CallHandler | None, parts_handler: PartsHandler | None = None,
                    environ: Mapping[str, str] | None = None) -> DataPlane | None:
        """The data plane listening on loopback, or None if it is off or cannot listen."""
        if not settings.data_plane:
            return None
        try:
            plane = cls(settings, node_id=node_id, node_address=node_address, call_handler=call_handler,
                        ray_tls=RayTlsFiles.from_environment(environ), parts_handler=parts_handler)
            plane._loopback = await plane._listen(LOOPBACK, remote=False)
        except (OSError, ssl.SSLError, ConfigurationError) as error:
            logger.warning("the data plane could not listen on %s (%s); tasks travel as Ray calls",
                           LOOPBACK, error)
            return None
        return plane

    async def endpoint_for(self, node_id: str | None) -> Endpoint | None:
        """What a peer on Ray node ``node_id`` dials; None: it uses Ray calls.

        A peer that does not say where it runs is given loopback (which it reaches only if
        it shares the orchestrator's machine): nothing listens beyond loopback unless a
        peer elsewhere asks for it.
        """
        if node_id is None or node_id == self.node_id:
            listener = self._loopback
        else:
            listener = await self._remote_listener()
        return None if listener is None else self._endpoint(listener)

    def channel(self, host_key: str) -> HostChannel | None:
        return self.server.channel(host_key)

    async def wait_for(self, host_key: str, timeout: float) -> HostChannel | None:
        return await self.server.wait_for(host_key, timeout)

    def drop(self, host_key: str) -> None:
        self.server.drop(host_key)

    def status(self, host_key: str) -> dict[str, Any]:
        """How a host's tasks travel: its stream (address, TLS), or Ray calls and why."""
        channel = self.server.channel(host_key)
        if channel is not None:
            return channel.status()
        previous = self.server.channels.get(host_key)
        reason = f"its stream closed: {previous.close_reason}" if previous is not None else \
            "it did not connect to the data plane"
        return {"transport": "ray", "reason": reason}

    def statistics(self) -> dict[str, Any]:
        return {
            "listeners": [{"address": listener.address, "tls": listener.tls is not None}
                          for listener in self.server.listeners],
            "hosts_connected": sum(1 for channel in self.server.channels.values() if not channel.closed),
            "refused": dict(self.server.refused),
        }

    def close(self) -> None:
        self.server.close()

    # -- listeners -----------------------------------------------------------------
    async def _remote_listener(self) -> Listener | None:
        async with self._remote_lock:
            if self._remote is None and not self._remote_error:
                bind = self._settings.data_plane_host or self._node_address
                try:
                    self._remote = await self._listen(bind, remote=True)
                    logger.info("the data plane listens on %s for peers on other nodes (TLS %s)",
                                self._remote.address, "on" if self._remote.tls else "off")
                except (OSError, ssl.SSLError, ConfigurationError) as error:
                    self._remote_error = f"{type(error).__name__}: {error}"
                    logger.warning("the data plane could not listen on %s for other nodes (%s); "
                                   "their hosts use Ray calls", bind, self._remote_error)
            return self._remote

    async def _listen(self, host: str, *, remote: bool) -> Listener:
        return await self.server.listen(host, self._server_tls() if self._wants_tls(remote) else None)

    def _wants_tls(self, remote: bool) -> bool:
        """TLS on the node-address listener, and wherever Ray's TLS is on; the setting wins."""
        chosen = self._settings.data_plane_tls
        if chosen is not None:
            return bool(chosen)
        return remote or self._ray_tls is not None

    def _server_tls(self) -> ServerTls:
        if not hasattr(asyncio.StreamWriter, "start_tls"):
            raise ConfigurationError("TLS on the data plane needs Python 3.11 or newer")
        if self._tls is None:
            self._tls = ServerTls.from_ray(self._ray_tls) if self._ray_tls is not None else ServerTls.ephemeral()
        return self._tls

    def _endpoint(self, listener: Listener) -> Endpoint:
        host = listener.host
        if host in _WILDCARDS:
            host = self._node_address  # listening everywhere: peers dial the node address
        tls = listener.tls
        return Endpoint(host=host, port=listener.port, token=self._token,
                        tls="off" if tls is None else tls.mode,
                        fingerprint=tls.fingerprint.hex() if tls is not None and tls.mode == "pinned" else "")


__all__ = ["LOOPBACK", "DataPlane"]
