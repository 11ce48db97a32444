"""Supervision policy: when to restart a failed agent, and when to retry a failed task.

This module is plain Python with no Ray in it, so that the decisions the
orchestrator makes under failure can be unit-tested with an injected clock
and a seeded random generator. The Ray adapters only carry the decisions out.

Two separate concerns live here because they share the same backoff shape:

* **Restarting agents** (`RestartPolicy`, `RestartTracker`): Erlang/OTP-style
  restart intensity. A slot (or a whole pool) may restart at most
  ``max_restarts`` times within ``window_seconds``; one more failure inside the
  window marks it *degraded* and it is no longer restarted, because an agent
  that crashes in a loop wastes the cluster and hides the real fault.
* **Retrying tasks** (`RetryPolicy`): how many attempts a task gets and which
  error types are never worth retrying.
"""

from __future__ import annotations

import math
import random
from collections import deque
from dataclasses import asdict, dataclass, fields
from enum import Enum
from typing import Any


class RestartCause(str, Enum):
    """Why an agent actor stopped and needs a restart.

    A `str` subclass so that causes compare equal to, and serialize as, their
    plain string values ("exception", "oom_killed", ...).
    """

    EXCEPTION = "exception"
    PROCESS_KILLED = "process_killed"
    OOM_KILLED = "oom_killed"
    NODE_LOST = "node_lost"
    HEALTH_CHECK_FAILED = "health_check_failed"
    TIMEOUT_UNRESPONSIVE = "timeout_unresponsive"

    @classmethod
    def parse(cls, cause: RestartCause | str) -> RestartCause:
        """Return the cause for ``cause``, accepting the enum or its string value.

        Raises:
            ValueError: ``cause`` is not one of the known causes.
        """
        try:
            return cls(cause)
        except ValueError:
            known = ", ".join(member.value for member in cls)
            raise ValueError(f"unknown restart cause {cause!r}; known causes: {known}") from None


def _require(condition: bool, message: str) -> None:
    """Raise `ValueError` with ``message`` unless ``condition`` holds."""
    if not condition:
        raise ValueError(message)


def _validate_backoff(
    owner: str, *, initial: float, maximum: float, multiplier: float, jitter: float
) -> None:
    """Check the backoff knobs shared by restart and retry policies."""
    _require(
        math.isfinite(initial) and initial >= 0,
        f"{owner}.backoff_initial_seconds must be a finite number >= 0, got {initial!r}",
    )
    _require(
        math.isfinite(maximum) and maximum >= initial,
        f"{owner}.backoff_max_seconds must be finite and >= backoff_initial_seconds "
        f"({initial!r}), got {maximum!r}",
    )
    _require(
        math.isfinite(multiplier) and multiplier >= 1,
        f"{owner} backoff multiplier must be a finite number >= 1, got {multiplier!r}",
    )
    _require(
        0 <= jitter <= 1,
        f"{owner}.jitter must be a fraction between 0 and 1 inclusive, got {jitter!r}",
    )


def jittered_backoff(
    attempt: int,
    *,
    initial: float,
    maximum: float,
    multiplier: float,
    jitter: float,
    rng: random.Random,
) -> float:
    """Return the delay before retry number ``attempt`` (1-based).

    The delay is ``initial * multiplier ** (attempt - 1)``, capped at
    ``maximum``, then scaled by a random factor in ``[1 - jitter, 1 + jitter]``
    so that many agents failing together do not restart in lockstep. The
    jittered result is capped at ``maximum`` again, so ``maximum`` is a hard
    upper bound.
    """
    try:
        raw = initial * multiplier ** (attempt - 1)
    except OverflowError:
        raw = maximum
    base = min(raw, maximum)
    factor = 1.0 + rng.uniform(-jitter, jitter) if jitter else 1.0
    return min(base * factor, maximum)


@dataclass(frozen=True, slots=True, kw_only=True)
class RestartPolicy:
    """How often an agent slot (or pool) may be restarted, and how fast.

    Attributes:
        max_restarts: restarts allowed within ``window_seconds``; the failure
            after that marks the slot degraded instead of restarting it.
        window_seconds: the sliding window for the intensity limit, and also
            the quiet period after which the backoff streak starts over.
        backoff_initial_seconds: delay before the first restart of a streak.
        backoff_max_seconds: upper bound for any restart delay.
        backoff_multiplier: growth factor of the delay per consecutive failure.
        jitter: random spread of each delay, as a fraction (0.2 means +/-20%).
    """

    max_restarts: int = 5
    window_seconds: float = 60.0
    backoff_initial_seconds: float = 0.1
    backoff_max_seconds: float = 10.0
    backoff_multiplier: float = 2.0
    jitter: float = 0.2

    def __post_init__(self) -> None:
        _require(
            isinstance(self.max_restarts, int) and self.max_restarts >= 0,
            f"RestartPolicy.max_restarts must be an integer >= 0, got {self.max_restarts!r}",
        )
        _require(
            math.isfinite(self.window_seconds) and self.window_seconds > 0,
            f"RestartPolicy.window_seconds must be a finite number > 0, "
            f"got {self.window_seconds!r}",
        )
        _validate_backoff(
            "RestartPolicy",
            initial=self.backoff_initial_seconds,
            maximum=self.backoff_max_seconds,
            multiplier=self.backoff_multiplier,
            jitter=self.jitter,
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class RestartDecision:
    """What to do after an agent failure, as decided by `RestartTracker`.

    Attributes:
        restart: whether to start a replacement.
        delay_seconds: how long to wait before starting it (0 when not restarting).
        attempt: the position of this failure in the current backoff streak (1-based).
        degraded: the intensity limit was exceeded; the slot stays down until reset.
        reason: a human-readable explanation, suitable for logs and events.
    """

    restart: bool
    delay_seconds: float
    attempt: int
    degraded: bool
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class RestartEvent:
    """A record of one restart decision, for the event log and the dashboard.

    Attributes:
        pool: the agent pool the failed agent belongs to.
        agent: the agent slot name (or the pool name for pool-wide trackers).
        cause: a `RestartCause` value.
        detail: free text from the failure (exception summary, exit code, ...).
        at: wall-clock time of the failure, seconds since the epoch.
        attempt: the attempt number from the `RestartDecision`.
        delay_seconds: the delay from the `RestartDecision`.
    """

    pool: str
    agent: str
    cause: str
    detail: str
    at: float
    attempt: int
    delay_seconds: float

    def to_dict(self) -> dict[str, Any]:
        """Return the event as a JSON-ready dictionary."""
        return asdict(self)


class RestartTracker:
    """Restart intensity and backoff bookkeeping for one agent slot or one pool.

    Feed it every failure of whatever it supervises: a tracker per slot limits
    a single crashing agent, a tracker per pool limits the pool as a whole
    (use both when a pool-wide crash loop must also be caught). Time is always
    passed in (``now``, a monotonic clock in seconds), so tests need no sleeps.

    Memory stays bounded: only failure times inside the window are kept, and
    there are at most ``max_restarts + 1`` of them.

    Once degraded, the tracker stays degraded, because nothing is restarted to
    produce the quiet period that would clear it; call `reset` when an
    operator (or a new deployment) brings the slot back.
    """

    __slots__ = ("_degraded", "_failures", "_last_failure_at", "_policy", "_rng", "_streak")

    def __init__(self, policy: RestartPolicy | None = None, *, rng: random.Random | None = None):
        self._policy = policy if policy is not None else RestartPolicy()
        self._rng = rng if rng is not None else random.Random()
        self._failures: deque[float] = deque(maxlen=self._policy.max_restarts + 1)
        self._streak = 0
        self._last_failure_at: float | None = None
        self._degraded = False

    @property
    def policy(self) -> RestartPolicy:
        """The policy this tracker enforces."""
        return self._policy

    @property
    def degraded(self) -> bool:
        """Whether the intensity limit has been exceeded since the last `reset`."""
        return self._degraded

    def failures_in_window(self, now: float) -> int:
        """Return how many failures happened within ``window_seconds`` before ``now``."""
        self._prune(now)
        return len(self._failures)

    def record_failure(self, cause: RestartCause | str, now: float) -> RestartDecision:
        """Record a failure at ``now`` and decide whether and when to restart.

        Raises:
            ValueError: ``cause`` is not a known `RestartCause`.
        """
        parsed = RestartCause.parse(cause)
        policy = self._policy
        if self._degraded:
            return RestartDecision(
                restart=False,
                delay_seconds=0.0,
                attempt=self._streak,
                degraded=True,
                reason=f"{parsed.value}: already degraded; call reset() to allow restarts again",
            )
        self._forget_streak_after_quiet_period(now)
        self._prune(now)
        self._failures.append(now)
        self._last_failure_at = now
        self._streak += 1
        if len(self._failures) > policy.max_restarts:
            self._degraded = True
            return RestartDecision(
                restart=False,
                delay_seconds=0.0,
                attempt=self._streak,
                degraded=True,
                reason=(
                    f"{parsed.value}: {len(self._failures)} failures within "
                    f"{policy.window_seconds:g}s exceed max_restarts={policy.max_restarts}; "
                    f"not restarting"
                ),
            )
        delay = jittered_backoff(
            self._streak,
            initial=policy.backoff_initial_seconds,
            maximum=policy.backoff_max_seconds,
            multiplier=policy.backoff_multiplier,
            jitter=policy.jitter,
            rng=self._rng,
        )
        return RestartDecision(
            restart=True,
            delay_seconds=delay,
            attempt=self._streak,
            degraded=False,
            reason=(
                f"{parsed.value}: restart {len(self._failures)} of {policy.max_restarts} "
                f"allowed within {policy.window_seconds:g}s, after {delay:.3f}s"
            ),
        )

    def record_success(self, now: float) -> None:
        """Record that the supervised agent is healthy at ``now``.

        A success alone does not end the backoff streak (an agent that starts
        and crashes at once also reports success in between); the streak ends
        once ``window_seconds`` pass without a failure.
        """
        self._forget_streak_after_quiet_period(now)
        self._prune(now)

    def reset(self) -> None:
        """Forget all failures and clear the degraded state."""
        self._failures.clear()
        self._streak = 0
        self._last_failure_at = None
        self._degraded = False

    def _forget_streak_after_quiet_period(self, now: float) -> None:
        last = self._last_failure_at
        if last is not None and now - last >= self._policy.window_seconds:
            self._streak = 0
            self._last_failure_at = None

    def _prune(self, now: float) -> None:
        horizon = now - self._policy.window_seconds
        failures = self._failures
        while failures and failures[0] <= horizon:
            failures.popleft()


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryDecision:
    """Whether to run a failed task again, and after how long."""

    retry: bool
    delay_seconds: float
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryPolicy:
    """How a failed task is retried.

    Attributes:
        max_attempts: total attempts including the first; 1 means never retry.
        backoff_initial_seconds: delay before the second attempt.
        backoff_max_seconds: upper bound for any delay.
        multiplier: growth factor of the delay per attempt.
        jitter: random spread of each delay, as a fraction (0.2 means +/-20%).
        never_retry: exception type names that fail the task at once; a plain
            name ("ValueError") matches that class in any module, a dotted
            name ("mypkg.errors.QuotaError") matches only that module.
    """

    max_attempts: int = 3
    backoff_initial_seconds: float = 0.05
    backoff_max_seconds: float = 5.0
    multiplier: float = 2.0
    jitter: float = 0.2
    never_retry: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _require(
            isinstance(self.max_attempts, int) and self.max_attempts >= 1,
            f"RetryPolicy.max_attempts must be an integer >= 1 (1 disables retries), "
            f"got {self.max_attempts!r}",
        )
        _validate_backoff(
            "RetryPolicy",
            initial=self.backoff_initial_seconds,
            maximum=self.backoff_max_seconds,
            multiplier=self.multiplier,
            jitter=self.jitter,
        )
        if isinstance(self.never_retry, str):
            raise ValueError(
                f"RetryPolicy.never_retry must be a sequence of exception type names, "
                f"not a single string; write ({self.never_retry!r},)"
            )
        names = tuple(self.never_retry)
        for name in names:
            _require(
                isinstance(name, str) and name.strip() == name and name != "",
                f"RetryPolicy.never_retry entries must be non-empty type names without "
                f"surrounding spaces, got {name!r}",
            )
        # Lists arriving from config files are stored as tuples to keep the policy hashable.
        object.__setattr__(self, "never_retry", names)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RetryPolicy:
        """Build a policy from a dictionary such as a parsed config section.

        Raises:
            ValueError: a key is unknown or a value is out of range.
        """
        known = {field.name for field in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(
                f"unknown RetryPolicy field(s) {', '.join(unknown)}; "
                f"known fields: {', '.join(sorted(known))}"
            )
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        """Return the policy as a JSON-ready dictionary (``never_retry`` as a list)."""
        data = asdict(self)
        data["never_retry"] = list(self.never_retry)
        return data

    def is_never_retried(self, error_type: str) -> bool:
        """Whether ``error_type`` (a plain or dotted type name) is in ``never_retry``."""
        short = error_type.rpartition(".")[2]
        for name in self.never_retry:
            if name == error_type or ("." not in name and name == short):
                return True
        return False

    def decide(self, attempt: int, error_type: str, rng: random.Random) -> RetryDecision:
        """Decide what to do after attempt number ``attempt`` (1-based) failed.

        Args:
            attempt: the attempt that just failed; the first run is attempt 1.
            error_type: the failing exception's type name, plain or dotted
                (see `error_type_name`).
            rng: the random generator for jitter; inject a seeded one in tests.
        """
        if attempt < 1:
            raise ValueError(f"attempt numbers start at 1, got {attempt!r}")
        if self.is_never_retried(error_type):
            return RetryDecision(
                retry=False, delay_seconds=0.0, reason=f"{error_type} is listed in never_retry"
            )
        if attempt >= self.max_attempts:
            return RetryDecision(
                retry=False,
                delay_seconds=0.0,
                reason=f"attempt {attempt} failed with {error_type}; "
                f"max_attempts={self.max_attempts} reached",
            )
        delay = jittered_backoff(
            attempt,
            initial=self.backoff_initial_seconds,
            maximum=self.backoff_max_seconds,
            multiplier=self.multiplier,
            jitter=self.jitter,
            rng=rng,
        )
        return RetryDecision(
            retry=True,
            delay_seconds=delay,
            reason=f"attempt {attempt} of {self.max_attempts} failed with {error_type}; "
            f"retrying after {delay:.3f}s",
        )


def error_type_name(error: BaseException) -> str:
    """Return the name `RetryPolicy` matches for ``error``.

    Built-in exceptions give their plain name ("ValueError"); others give
    ``module.QualifiedName`` ("mypkg.errors.QuotaError").
    """
    kind = error.__class__
    if kind.__module__ == "builtins":
        return kind.__qualname__
    return f"{kind.__module__}.{kind.__qualname__}"
