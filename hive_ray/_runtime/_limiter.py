"""One actor per model endpoint that every agent calling it asks before each request.

:class:`EndpointLimiter` runs :class:`~hive_ray._rate_limits.EndpointLimits`
(concurrency, requests and tokens per minute, first come first served) behind
two calls: ``acquire`` (waits for its turn; answers a lease) and ``release``.
It is a detached actor named after the endpoint, so agents of every pool, on
every node, share it; it costs two actor calls (about 1 ms) per request, small
beside a model's answer. A caller that stops waiting (its task cancelled)
cancels its ``acquire``, which leaves the queue; a lease whose holder died is
reclaimed after ``lease_seconds``.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from typing import Any

import ray

from hive_ray._rate_limits import EndpointLimits, Limits
from hive_ray._usage import endpoint_name


@ray.remote(num_cpus=0, max_concurrency=100_000)
class EndpointLimiter:
    def __init__(self, limits: dict[str, Any], lease_seconds: float, endpoint: str = "") -> None:
        self._core = EndpointLimits(Limits(**limits), lease_seconds=lease_seconds)
        self._endpoint = endpoint  # its name in metrics (hive_ray._usage.endpoint_name)
        self._changed: asyncio.Event | None = None

    def configure(self, limits: dict[str, Any]) -> None:
        """New limits (the last agent to start sets them: give every pool of an endpoint the same)."""
        self._core.limits = Limits(**limits)
        self._notify()

    async def acquire(self, tokens: int) -> int:
        """Wait for this caller's turn and the endpoint's room; a lease to release afterwards."""
        core = self._core
        ticket = core.enqueue()
        try:
            while True:
                lease, wait = core.try_grant(ticket, max(0, int(tokens)), time.monotonic())
                if lease is not None:
                    self._notify()  # the next in line may fit too
                    return lease
                await self._change(wait)
        finally:
            core.leave(ticket)  # a no-op once granted; a cancelled wait leaves the queue
            self._notify()

    def release(self, lease: int, tokens_used: int | None = None) -> None:
        self._core.release(lease, tokens_used, time.monotonic())
        self._notify()

    def statistics(self) -> dict[str, Any]:
        requests, tokens = self._core.window(time.monotonic())
        return {"endpoint": self._endpoint, "in_flight": self._core.in_flight(), "waiting": self._core.waiting(),
                "requests_last_minute": requests, "tokens_last_minute": tokens,
                "granted": self._core.granted, "reclaimed": self._core.reclaimed,
                "limits": {"max_concurrent": self._core.limits.max_concurrent,
                           "requests_per_minute": self._core.limits.requests_per_minute,
                           "tokens_per_minute": self._core.limits.tokens_per_minute}}

    def _notify(self) -> None:
        if self._changed is not None:
            self._changed.set()
            self._changed = None

    async def _change(self, wait: float | None) -> None:
        if self._changed is None:
            self._changed = asyncio.Event()
        changed = self._changed
        # Re-check at least every second: a lease may expire, the window slides.
        bound = 1.0 if wait is None else min(1.0, max(0.001, wait))
        try:
            await asyncio.wait_for(changed.wait(), bound)
        except asyncio.TimeoutError:
            pass


_PREFIX = "hive-endpoint-"


def limiter_name(base_url: str) -> str:
    return _PREFIX + hashlib.sha256(base_url.rstrip("/").encode()).hexdigest()[:16]


def endpoint_limiter(base_url: str, limits: Limits, *, lease_seconds: float, namespace: str = "hive") -> Any:
    """The endpoint's limiter (started by whoever asks first), set to ``limits``."""
    values = {"max_concurrent": limits.max_concurrent, "requests_per_minute": limits.requests_per_minute,
              "tokens_per_minute": limits.tokens_per_minute}
    limiter = EndpointLimiter.options(name=limiter_name(base_url), namespace=namespace, lifetime="detached",
                                      get_if_exists=True).remote(values, lease_seconds, endpoint_name(base_url))
    limiter.configure.remote(values)
    return limiter


async def limiter_statistics(namespace: str = "hive", *, timeout_seconds: float = 2.0) -> list[dict[str, Any]]:
    """``statistics()`` of every endpoint limiter in ``namespace`` (for ``/metrics`` and the
    dashboard); one that does not answer within ``timeout_seconds`` is left out."""
    handles = await asyncio.to_thread(_limiters, namespace)  # GCS lookups: off the event loop
    if not handles:
        return []
    answers = await asyncio.gather(
        *(asyncio.wait_for(handle.statistics.remote(), timeout_seconds) for handle in handles),
        return_exceptions=True)
    return sorted((answer for answer in answers if isinstance(answer, dict)), key=lambda a: a["endpoint"])


def _limiters(namespace: str) -> list[Any]:
    handles = []
    for actor in ray.util.list_named_actors(all_namespaces=True):
        if actor.get("namespace") == namespace and actor.get("name", "").startswith(_PREFIX):
            try:
                handles.append(ray.get_actor(actor["name"], namespace=namespace))
            except ValueError:  # gone since it was listed
                continue
    return handles


__all__ = ["EndpointLimiter", "endpoint_limiter", "limiter_name", "limiter_statistics"]
