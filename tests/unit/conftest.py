"""Unit tests are pure logic: they fail loudly if they touch Ray."""

from __future__ import annotations

import sys

import pytest


@pytest.fixture(autouse=True)
def _no_ray(monkeypatch: pytest.MonkeyPatch) -> None:
    ray = sys.modules.get("ray")
    if ray is None:
        return

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("unit tests must not use Ray; move this test to tests/integration")

    for name in ("init", "get", "put", "get_actor", "kill"):
        monkeypatch.setattr(ray, name, refuse)
