"""Which variables change sampling, and the note for the one that does not (no Ray)."""

from __future__ import annotations

import logging

import pytest

from hive_ray._settings import Settings
from hive_ray._tracing import Sampler, effective_sampling


def test_the_hive_ratio_and_the_opentelemetry_pair_set_the_ratio() -> None:
    settings = Settings(tracing=True, tracing_sample_ratio=0.25)
    assert effective_sampling(settings, {}) == {"tracing": True, "ratio": 0.25,
                                                "from": "tracing_sample_ratio", "note": None}
    pair = {"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "1.0"}
    assert effective_sampling(settings, pair)["ratio"] == 1.0
    assert effective_sampling(settings, pair)["from"] == "OTEL_TRACES_SAMPLER"
    assert effective_sampling(Settings(), {})["tracing"] is False


def test_the_sampler_argument_alone_changes_nothing_and_says_so(caplog: pytest.LogCaptureFixture) -> None:
    lone = {"OTEL_TRACES_SAMPLER_ARG": "1.0"}
    sampling = effective_sampling(Settings(tracing=True), lone)
    assert sampling["ratio"] == 0.01
    assert "OTEL_TRACES_SAMPLER_ARG=1.0 is ignored" in sampling["note"]
    assert "OTEL_TRACES_SAMPLER=parentbased_traceidratio" in sampling["note"]
    assert "HIVE_TRACING_SAMPLE_RATIO=1.0" in sampling["note"]
    with caplog.at_level(logging.WARNING, logger="hive_ray.tracing"):
        assert Sampler.from_environment(0.01, lone).ratio == 0.01
    assert "is ignored" in caplog.text
