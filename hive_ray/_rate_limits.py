"""Limits on one model endpoint, shared by every agent that calls it: pure logic.

An endpoint (an OpenAI-compatible server) takes so many requests at once, so
many per minute and so many tokens per minute. :class:`EndpointLimits` decides
when the next request may start: callers wait in one first-come first-served
queue (no caller overtakes another that waits, so nobody starves), a request
holds a lease while it runs, and its tokens count in the minute it started.
Tokens are not known before a request ends: a lease reserves an estimate,
and :meth:`EndpointLimits.release` replaces it with what the endpoint reported.

A lease whose holder died (its host was killed) is reclaimed after
``lease_seconds``, so a lost host cannot hold a slot for ever.

The clock is injected; :mod:`hive_ray._runtime._limiter` runs this in a Ray
actor per endpoint, shared across pools and nodes.
"""

from __future__ import annotations

import itertools
from collections import deque
from dataclasses import dataclass, field

WINDOW_SECONDS = 60.0


@dataclass(frozen=True, slots=True)
class Limits:
    """What an endpoint takes; None: no limit of that kind."""

    max_concurrent: int | None = None
    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None

    def __post_init__(self) -> None:
        for name in ("max_concurrent", "requests_per_minute", "tokens_per_minute"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise ValueError(f"{name} must be a whole number of at least 1, or None for no limit; got {value!r}")


@dataclass(slots=True)
class _Lease:
    tokens: int
    expires: float
    started: float


@dataclass(slots=True)
class EndpointLimits:
    """Who may send the next request to one endpoint (see the module's docstring)."""

    limits: Limits
    lease_seconds: float = 900.0
    _leases: dict[int, _Lease] = field(default_factory=dict)
    _starts: deque[tuple[float, int]] = field(default_factory=deque)  # (time, lease id) in the window
    _tokens: dict[int, int] = field(default_factory=dict)  # lease id -> tokens counted in the window
    _queue: deque[int] = field(default_factory=deque)  # ticket numbers, first come first served
    _tickets: itertools.count = field(default_factory=itertools.count)
    _ids: itertools.count = field(default_factory=lambda: itertools.count(1))
    granted: int = 0
    reclaimed: int = 0

    def enqueue(self) -> int:
        """A ticket: the caller's place in the queue."""
        ticket = next(self._tickets)
        self._queue.append(ticket)
        return ticket

    def leave(self, ticket: int) -> None:
        """A caller that gave up waiting."""
        try:
            self._queue.remove(ticket)
        except ValueError:
            pass

    def try_grant(self, ticket: int, tokens: int, now: float) -> tuple[int | None, float | None]:
        """``(lease id, None)`` if ``ticket`` may start now, else ``(None, seconds to wait at most)``
        (None: until a running request ends). Only the ticket at the head of the queue is granted."""
        self._expire(now)
        if not self._queue or self._queue[0] != ticket:
            return None, None
        wait = self._wait(tokens, now)
        if wait is not None or (self.limits.max_concurrent is not None
                                and len(self._leases) >= self.limits.max_concurrent):
            return None, wait
        self._queue.popleft()
        lease = next(self._ids)
        self._leases[lease] = _Lease(tokens=tokens, expires=now + self.lease_seconds, started=now)
        self._starts.append((now, lease))
        self._tokens[lease] = tokens
        self.granted += 1
        return lease, None

    def release(self, lease: int, tokens_used: int | None, now: float) -> None:
        """A request ended; ``tokens_used`` (when the endpoint said) replaces its estimate."""
        held = self._leases.pop(lease, None)
        if held is not None and tokens_used is not None and lease in self._tokens:
            self._tokens[lease] = tokens_used
        self._expire(now)

    def in_flight(self) -> int:
        return len(self._leases)

    def waiting(self) -> int:
        return len(self._queue)

    def window(self, now: float) -> tuple[int, int]:
        """Requests started and tokens counted in the last minute."""
        self._expire(now)
        return len(self._starts), sum(self._tokens.values())

    def _wait(self, tokens: int, now: float) -> float | None:
        """Seconds until the per-minute limits allow a request of ``tokens``, None if they do now."""
        limits = self.limits
        waits = []
        if limits.requests_per_minute is not None and len(self._starts) >= limits.requests_per_minute:
            waits.append(self._starts[len(self._starts) - limits.requests_per_minute][0] + WINDOW_SECONDS - now)
        if limits.tokens_per_minute is not None:
            needed = min(tokens, limits.tokens_per_minute)  # a request above the limit alone still runs
            used = sum(self._tokens.values())
            if used + needed > limits.tokens_per_minute:
                freed, at = used, None
                for started, lease in self._starts:  # oldest first: when enough of the window has passed
                    freed -= self._tokens.get(lease, 0)
                    if freed + needed <= limits.tokens_per_minute:
                        at = started + WINDOW_SECONDS - now
                        break
                waits.append(at if at is not None else WINDOW_SECONDS)
        return max(0.0, max(waits)) if waits else None

    def _expire(self, now: float) -> None:
        starts = self._starts
        while starts and starts[0][0] + WINDOW_SECONDS <= now:
            _, lease = starts.popleft()
            self._tokens.pop(lease, None)
        for lease, held in list(self._leases.items()):
            if held.expires <= now:  # its holder died or hangs: give the slot back
                del self._leases[lease]
                self.reclaimed += 1


__all__ = ["Limits", "EndpointLimits", "WINDOW_SECONDS"]
