"""The replica's way to the orchestrator: async calls through a :class:`hive_ray.Hive`.

Hot reads and submissions go over the client's data plane without blocking
the replica's event loop. Pool changes are rare and slow (agents start), so
they use the client's synchronous methods on a worker thread, which keeps
one implementation of ``spawn`` (agent type lookup included).
"""

from __future__ import annotations

import asyncio
from typing import Any

from hive_ray._client import _RETRYABLE_METHODS, Hive
from hive_ray._errors import HiveConnectionError


class Gateway:
    """Async access to the orchestrator for one replica."""

    def __init__(self, hive: Hive) -> None:
        self.hive = hive

    @classmethod
    def connect(cls, settings: Any) -> Gateway:
        # Inside a replica Ray is initialised: connect() attaches and finds the
        # orchestrator by name (creating it, detached, if none runs yet).
        return cls(Hive.connect(settings=settings))

    async def call(self, method: str, *args: Any) -> Any:
        from hive_ray._runtime._channel import ChannelClosed

        try:
            return await self.hive._call_async(method, *args)
        except ChannelClosed:
            # The orchestrator restarted: Ray calls from now on (the client does the same).
            self.hive._channel = None
            if method not in _RETRYABLE_METHODS:
                raise HiveConnectionError(
                    f"the connection to the orchestrator broke during {method}(); the call may or "
                    "may not have taken effect. Check the task list before retrying."
                ) from None
            return await self.hive._call_async(method, *args)
        except Exception as error:  # noqa: BLE001
            from ray.exceptions import RayActorError

            if isinstance(error, RayActorError):
                raise HiveConnectionError(
                    "the orchestrator is not reachable; it may be restarting. Try again in a few "
                    "seconds."
                ) from None
            raise

    async def blocking(self, method: str, *args: Any, **options: Any) -> Any:
        """A synchronous client method on a worker thread (pool changes)."""
        return await asyncio.to_thread(getattr(self.hive, method), *args, **options)

    def close(self) -> None:
        self.hive.close()
