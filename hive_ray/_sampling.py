"""Tracing configuration: what a process needs to trace, and the root sampling decision.

Split from :mod:`hive_ray._tracing`, which re-exports every name here. One
ratio serves every decision: a client call's, an API request's, and the
orchestrator's for each task that no sampled trace covers
(:mod:`hive_ray._task_sampling`). The ratio comes from ``tracing_sample_ratio`` (``HIVE_TRACING_SAMPLE_RATIO``), or
from the standard pair ``OTEL_TRACES_SAMPLER`` and ``OTEL_TRACES_SAMPLER_ARG``;
the argument alone changes nothing (as the OpenTelemetry specification says),
and :func:`effective_sampling` says so for reports.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

logger = logging.getLogger("hive_ray.tracing")


@dataclass(frozen=True, slots=True, kw_only=True)
class TracingConfig:
    """What a process needs to trace: taken from :class:`hive_ray.Settings`, sent to hosts.

    ``sample_ratio`` applies where traces start: client calls, API requests, and
    in the orchestrator each task outside a sampled trace; the standard
    ``OTEL_TRACES_SAMPLER``/``OTEL_TRACES_SAMPLER_ARG`` override it.
    """

    enabled: bool = False
    sample_ratio: float = 0.01
    export_dir: str | None = None
    feed_analyzer: bool = True
    analyzer_name: str = "analyzer"
    namespace: str = "hive"
    flush_seconds: float = 1.0
    max_queued_spans: int = 100_000

    @classmethod
    def from_settings(cls, settings: Any) -> TracingConfig:
        return cls(
            enabled=bool(settings.tracing),
            sample_ratio=float(settings.tracing_sample_ratio),
            export_dir=None if settings.tracing_export_dir is None else str(settings.tracing_export_dir),
            feed_analyzer=bool(settings.tracing_feed_analyzer),
            analyzer_name=str(settings.analyzer_name),
            namespace=str(settings.namespace),
            flush_seconds=float(settings.tracing_flush_seconds),
            max_queued_spans=int(settings.tracing_max_queued_spans),
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TracingConfig:
        return cls(**{key: value for key, value in data.items() if key in cls.__dataclass_fields__})


class Sampler:
    """The root sampling decision: parent-based, then a ratio (``TraceIdRatioBased``'s rule).

    ``OTEL_TRACES_SAMPLER`` (``always_on``, ``always_off``, ``traceidratio`` and their
    ``parentbased_`` forms) and ``OTEL_TRACES_SAMPLER_ARG`` replace the configured
    ratio when set, as every OpenTelemetry SDK does.
    """

    __slots__ = ("ratio", "parent_based", "_bound")

    def __init__(self, ratio: float, *, parent_based: bool = True) -> None:
        self.ratio = min(1.0, max(0.0, ratio))
        self.parent_based = parent_based
        self._bound = round(self.ratio * (1 << 64))

    @classmethod
    def from_environment(cls, default_ratio: float, environ: Mapping[str, str] = os.environ) -> Sampler:
        name = environ.get("OTEL_TRACES_SAMPLER", "").strip().lower()
        if not name:
            if environ.get("OTEL_TRACES_SAMPLER_ARG", "").strip():
                logger.warning(lone_sampler_argument_note())
            return cls(default_ratio)
        argument = environ.get("OTEL_TRACES_SAMPLER_ARG", "").strip()
        try:
            ratio = float(argument) if argument else 1.0
        except ValueError:
            logger.warning("OTEL_TRACES_SAMPLER_ARG=%r is not a number; using 1.0", argument)
            ratio = 1.0
        parent_based = name.startswith("parentbased_")
        base = name.removeprefix("parentbased_")
        if base == "always_on":
            return cls(1.0, parent_based=parent_based)
        if base == "always_off":
            return cls(0.0, parent_based=parent_based)
        if base == "traceidratio":
            return cls(ratio, parent_based=parent_based)
        logger.warning("OTEL_TRACES_SAMPLER=%r is not supported by hive-ray; using a ratio of %s",
                       name, default_ratio)
        return cls(default_ratio)

    def __repr__(self) -> str:
        return f"Sampler(ratio={self.ratio}, parent_based={self.parent_based})"

    def sample_root(self, trace_id: int) -> bool:
        # The lower 64 bits against ratio * 2**64, as TraceIdRatioBased does, so that
        # services sharing a ratio agree on a trace.
        return (trace_id & 0xFFFFFFFFFFFFFFFF) < self._bound


def lone_sampler_argument_note(environ: Mapping[str, str] = os.environ) -> str:
    """Why ``OTEL_TRACES_SAMPLER_ARG`` alone changes nothing, and what does."""
    argument = environ.get("OTEL_TRACES_SAMPLER_ARG", "").strip()
    return (f"OTEL_TRACES_SAMPLER_ARG={argument} is ignored: the OpenTelemetry specification applies "
            "it only with a ratio sampler named in OTEL_TRACES_SAMPLER. Set "
            f"OTEL_TRACES_SAMPLER=parentbased_traceidratio as well, or use "
            f"HIVE_TRACING_SAMPLE_RATIO={argument or '1.0'} instead")


def effective_sampling(settings: Any, environ: Mapping[str, str] = os.environ) -> dict[str, Any]:
    """What this process's settings and environment make of sampling, for reports and advice.

    ``ratio`` is the share of root calls (client calls, requests) traced here
    and, with the cluster's settings, of tasks outside a sampled trace; ``note``
    explains a variable that has no effect (None when everything set is used).
    """
    lone_argument = (not environ.get("OTEL_TRACES_SAMPLER", "").strip()
                     and bool(environ.get("OTEL_TRACES_SAMPLER_ARG", "").strip()))
    used = {k: v for k, v in environ.items() if k != "OTEL_TRACES_SAMPLER_ARG"} if lone_argument else environ
    sampler = Sampler.from_environment(float(settings.tracing_sample_ratio), used)
    return {
        "tracing": bool(settings.tracing),
        "ratio": sampler.ratio,
        "from": "OTEL_TRACES_SAMPLER" if environ.get("OTEL_TRACES_SAMPLER", "").strip()
        else "tracing_sample_ratio",
        "note": lone_sampler_argument_note(environ) if lone_argument else None,
    }
