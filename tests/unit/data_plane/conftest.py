"""Fixtures of the data-plane unit tests (no Ray: sockets on loopback and an event loop)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.unit.data_plane.peers import UNPICKLED, LoopThread


@pytest.fixture
def loop() -> Iterator[LoopThread]:
    thread = LoopThread()
    try:
        yield thread
    finally:
        thread.close()


@pytest.fixture(autouse=True)
def _fresh_tripwire() -> Iterator[None]:
    UNPICKLED.clear()
    yield
    UNPICKLED.clear()
