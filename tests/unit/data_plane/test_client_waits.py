"""The Hive client over a data plane whose orchestrator never answers: every wait with a
timeout ends at that timeout plus the margin, with an error that says what happened."""

from __future__ import annotations

import asyncio

import pytest

from hive_ray import Hive, HiveConnectionError, TaskHandle
from hive_ray._runtime._channel_client import ChannelClient
from hive_ray._settings import Settings
from tests.unit.data_plane.peers import MISSING_MODULE_REPLY, endpoint_of, start_server

CANCELLED: list[str] = []


@pytest.fixture
def silent_hive(loop, tmp_path):
    """A client whose data plane reaches an orchestrator that accepts calls and never answers."""

    async def never(method, args):
        if method == "admission":  # map asks first; answered, so that map's own waits are tested
            return {"pool": "p", "max_queue": 1000, "backlog": 0, "concurrency": 1}
        if method == "cancel_many":
            CANCELLED.extend(args[0])
            return len(args[0])
        await asyncio.Event().wait()

    CANCELLED.clear()
    _, listener = start_server(loop, handler=never)
    hive = Hive(None, Settings(state_dir=tmp_path, client_timeout_margin_seconds=0.2), owns_ray=False)
    hive._channel = ChannelClient(endpoint_of(listener))
    yield hive
    hive.close()


def test_result_gives_up_at_its_timeout_plus_the_margin(silent_hive):
    with pytest.raises(HiveConnectionError, match=r"did not answer wait\(\) within its timeout plus 0.2 s"):
        TaskHandle(silent_hive, "task-1", "pool").result(timeout=0.1)
    assert silent_hive._channel._pending == {}


def test_run_events_and_map_give_up_too(silent_hive):
    with pytest.raises(HiveConnectionError, match=r"run\(\)"):
        silent_hive.run(pool="p", payload=1, wait_timeout=0.1)
    with pytest.raises(HiveConnectionError, match=r"events\(\)"):
        silent_hive.events(after=0, timeout=0.1)
    with pytest.raises(HiveConnectionError, match=r"run_many\(\)"):
        silent_hive.map(None, [1, 2, 3], pool="p", chunk_size=2, progress=False, timeout=0.1)
    assert len(CANCELLED) == 3  # what the map gave up on is cancelled, not left running


def test_async_calls_give_up_too(silent_hive):
    async def main():
        await silent_hive.run_async(pool="p", payload=1, wait_timeout=0.1)

    with pytest.raises(HiveConnectionError, match=r"run\(\)"):
        asyncio.run(main())
    assert silent_hive._channel._pending == {}


def test_an_unreadable_reply_fails_the_call_at_once_and_is_not_retried(loop, tmp_path):
    async def handler(method, args):
        return MISSING_MODULE_REPLY()

    _, listener = start_server(loop, handler=handler)
    # data_plane off on this side: no new stream is asked for (that would be a Ray call).
    hive = Hive(None, Settings(state_dir=tmp_path, data_plane=False), owns_ray=False)
    hive._channel = ChannelClient(endpoint_of(listener))
    with pytest.raises(HiveConnectionError, match=r"task\(\) failed on the data plane: .*could not be unpickled"):
        hive._call("task", "task-1")  # a read: retried on a broken stream, but not on this
    assert hive._channel is None  # later calls use Ray until a new stream is open
    hive.close()
