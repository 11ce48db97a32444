"""Streaming tasks in the orchestrator (parts in, parts out, back-pressure) and the host's
sender of parts: against a fake placement and a fake orchestrator, no Ray."""

from __future__ import annotations

import asyncio
from typing import Any

from hive_ray._runtime._host_streams import PartSender, drain
from hive_ray._runtime._streams import Streams
from hive_ray._stream_buffer import PART, RESTART
from hive_ray._streaming import StreamCursor
from tests.unit.test_orchestrator_logic import make, pool, run, settle


async def running_task(orchestrator: Any, placement: Any) -> tuple[str, str]:
    """A task held running at the fake placement's gate: (task id, its agent)."""
    placement.gate = asyncio.Event()
    accepted = await orchestrator.submit({"agent_type": "echo"}, "x")
    entry = orchestrator._tasks[accepted["task_id"]]
    await settle(lambda: entry.agent_id is not None)
    return entry.task_id, entry.agent_id


def test_parts_reach_a_reader_that_came_first_in_order_and_the_end_carries_the_answer():
    async def scenario():
        orchestrator, placement = make()
        await pool(orchestrator, count=1)
        task_id, agent = await running_task(orchestrator, placement)
        reading = asyncio.ensure_future(orchestrator.stream_parts(task_id, 0, 30.0))
        await settle(lambda: task_id in orchestrator._streams)
        assert not reading.done()  # it long-polls until parts come
        assert await orchestrator.report_parts(task_id, agent, 1, [], True)
        assert await orchestrator.report_parts(task_id, agent, 1, ["a", "b"])
        first = await reading
        base = orchestrator._streams[task_id].base  # sequences count on from the buffer's start
        assert first["items"] == [(base + 1, PART, "a"), (base + 2, PART, "b")]
        assert not first["ended"] and first["streamed"]
        placement.gate.set()  # the fake agent answers: the task ends
        last = await orchestrator.stream_parts(task_id, base + 2, 30.0)
        assert last["ended"] and last["answer"] == ("succeeded", "x", None)
        assert task_id not in orchestrator._streams  # read to the end: gone
    run(scenario())


def test_a_full_buffer_holds_the_host_until_its_reader_reads():
    async def scenario():
        orchestrator, placement = make({"stream_buffer_parts": 2})
        await pool(orchestrator, count=1)
        task_id, agent = await running_task(orchestrator, placement)
        await orchestrator.report_parts(task_id, agent, 1, [], True)
        await orchestrator.report_parts(task_id, agent, 1, ["a", "b"])
        await orchestrator.stream_parts(task_id, 0, 0.0, 1)  # a reader: it read "a", not yet "b"
        base = orchestrator._streams[task_id].base
        held = asyncio.ensure_future(orchestrator.report_parts(task_id, agent, 1, ["c"]))
        for _ in range(50):
            await asyncio.sleep(0)
        assert not held.done()  # the buffer holds "a" and "b" unacknowledged
        assert await orchestrator.report_parts_many([(task_id, agent, 1, ["c"], False)]) == [None]  # full
        read = await orchestrator.stream_parts(task_id, base + 1, 0.0)  # acknowledges "a"
        assert read["items"] == [(base + 2, PART, "b")]
        assert await asyncio.wait_for(held, 5)
        assert (await orchestrator.stream_parts(task_id, base + 2, 0.0))["items"] == [(base + 3, PART, "c")]
    run(scenario())


def test_parts_of_a_cancelled_task_are_refused_so_the_host_stops_sending():
    async def scenario():
        orchestrator, placement = make()
        await pool(orchestrator, count=1)
        task_id, agent = await running_task(orchestrator, placement)
        assert await orchestrator.report_parts(task_id, agent, 1, [], True)
        await orchestrator.cancel(task_id)
        assert not await orchestrator.report_parts(task_id, agent, 1, ["late"])
        assert not await orchestrator.report_parts(task_id, "some-other-agent", 1, ["x"])
        ended = await orchestrator.stream_parts(task_id, 0, 0.0)
        assert ended["ended"] and ended["answer"][0] == "cancelled"
    run(scenario())


def test_a_task_without_parts_answers_its_result_alone():
    async def scenario():
        orchestrator, _ = make()
        await pool(orchestrator, count=1)
        task_id, _ = await orchestrator.run({"agent_type": "echo"}, {"x": 1})
        answer = await orchestrator.stream_parts(task_id, 0, 0.0)
        assert answer["ended"] and not answer["streamed"] and answer["items"] == []
        assert answer["answer"] == ("succeeded", {"x": 1}, None)
        assert not orchestrator._streams
    run(scenario())


async def streaming(parts: list[Any]) -> tuple[Any, Any, str, str]:
    """An orchestrator with one running task whose run opened and streamed ``parts``."""
    orchestrator, placement = make()
    await pool(orchestrator, count=1)
    task_id, agent = await running_task(orchestrator, placement)
    await orchestrator.report_parts(task_id, agent, 1, [], True)
    await orchestrator.report_parts(task_id, agent, 1, parts)
    return orchestrator, placement, task_id, agent


def test_a_run_after_a_lost_host_starts_with_a_restart_item():
    async def scenario():
        orchestrator, _, task_id, agent = await streaming(["a"])
        entry = orchestrator._tasks[task_id]
        entry.attempts = 2  # what a redelivery after the lost host leaves (see _dispatch.py)
        await orchestrator.report_parts(task_id, agent, 2, [], True)
        await orchestrator.report_parts(task_id, agent, 2, ["a2"])
        items = (await orchestrator.stream_parts(task_id, 0, 0.0))["items"]
        base = orchestrator._streams[task_id].base
        assert items == [(base + 1, PART, "a"), (base + 2, RESTART, 2), (base + 3, PART, "a2")]
    run(scenario())


def test_a_cursor_from_before_an_orchestrator_restart_starts_over_with_nothing_lost():
    async def scenario():
        orchestrator, _, task_id, agent = await streaming(["a", "b"])
        cursor = StreamCursor()
        assert [value for _, _, value in cursor.take(await orchestrator.stream_parts(task_id, 0, 0.0))] == ["a", "b"]
        # The orchestrator restarts: its buffers are gone; the host replays its run from the start.
        orchestrator._streams.clear()
        await orchestrator.report_parts(task_id, agent, 1, ["a", "b", "c"], True)
        reply = await orchestrator.stream_parts(task_id, cursor.after, 0.0)
        assert [(kind, value) for _, kind, value in cursor.take(reply)] == [
            (RESTART, 1), (PART, "a"), (PART, "b"), (PART, "c")]  # told to start over; nothing missing
        assert cursor.restarts == 1 and reply["missed"] == 0
    run(scenario())


def test_a_consumer_whose_buffer_is_gone_gets_a_restart_and_the_whole_result():
    async def scenario():
        orchestrator, placement, task_id, _ = await streaming(["a"])
        cursor = StreamCursor()
        cursor.take(await orchestrator.stream_parts(task_id, 0, 0.0))
        orchestrator._streams.clear()  # gone with a restart, and the run ended meanwhile
        placement.gate.set()
        await settle(lambda: orchestrator._tasks[task_id].state.terminal)
        orchestrator._streams.clear()
        items = cursor.take(await orchestrator.stream_parts(task_id, cursor.after, 0.0))
        assert [kind for _, kind, _ in items] == [RESTART]
        assert cursor.answer == ("succeeded", "x", None) and cursor.result_is_the_part()  # the whole result follows
    run(scenario())


class FakeMux:
    """A host's PartMux whose orchestrator answers when a test lets it."""

    def __init__(self, accept: bool = True) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.release = asyncio.Event()
        self.release.set()
        self.accept = accept

    async def send(self, *batch: Any) -> bool:
        self.calls.append(batch)
        await self.release.wait()
        return self.accept


def test_the_sender_keeps_one_call_in_flight_and_holds_the_generator_when_too_much_waits():
    async def scenario():
        orchestrator = FakeMux()
        sender = PartSender(orchestrator, "t", "agent", 1, most_pending=3)
        sender.open()
        await sender.flush()
        orchestrator.release.clear()  # the orchestrator stops answering (a slow consumer)
        await sender.add("a")  # sent at once
        await settle(lambda: len(orchestrator.calls) == 2)
        for part in ("b", "c"):
            await sender.add(part)  # waiting for the call in flight
        held = asyncio.ensure_future(sender.add("d"))  # a third waiting part: the generator waits
        for _ in range(50):
            await asyncio.sleep(0)
        assert not held.done()
        orchestrator.release.set()
        await held
        await sender.flush()
        sent = [call[3] for call in orchestrator.calls]
        assert sent == [[], ["a"], ["b", "c", "d"]]  # in order, in batches, one call at a time
        assert orchestrator.calls[0][4] is True and not any(call[4] for call in orchestrator.calls[1:])
        assert sender.parts == ["a", "b", "c", "d"]
    run(scenario())


class FlakyMux:
    """A host's PartMux whose orchestrator is away for the first ``failures`` calls."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls: list[tuple[Any, ...]] = []

    async def send(self, *batch: Any) -> bool:
        self.calls.append(batch)
        if len(self.calls) <= self.failures:
            raise ConnectionError("the orchestrator is restarting")
        return True


def test_a_run_that_outlives_an_orchestrator_outage_replays_its_parts_from_the_start(monkeypatch):
    import hive_ray._runtime._host_streams as host_streams

    monkeypatch.setattr(host_streams, "OUTAGE_RETRY_MAX_SECONDS", 0.0)

    async def scenario():
        mux = FlakyMux(failures=2)
        sender = PartSender(mux, "t", "agent", 1)
        sender.open()
        await settle(lambda: len(mux.calls) >= 1)
        await sender.add("a")
        await sender.add("b")
        await settle(lambda: len(mux.calls) >= 3 and sender._outage_since is None)
        await sender.add("c")
        await sender.flush()
        delivered = [call[3] for call in mux.calls[2:]]
        assert mux.calls[2][4] is True  # the replay opens the run again...
        assert [part for parts in delivered for part in parts] == ["a", "b", "c"]  # ...and sends all of it
        assert sender.live
    run(scenario())


def test_a_run_that_ends_while_the_orchestrator_is_away_gives_up_streaming_not_its_result():
    async def scenario():
        mux = FlakyMux(failures=100)

        async def tokens():
            for token in ("x", "y"):
                yield token

        result = await drain(tokens(), PartSender(mux, "t", "agent", 1), executor=None)
        assert result == "xy" and len(mux.calls) == 1  # its outcome carries the result
    run(scenario())


def test_an_orchestrator_that_never_answers_does_not_hold_a_run_forever(monkeypatch):
    import hive_ray._runtime._host_streams as host_streams
    from hive_ray._runtime._host_streams import PartMux

    monkeypatch.setattr(host_streams, "PARTS_ANSWER_SECONDS", 0.05)

    class Wedged:
        """Takes every batch and never answers."""

        def __init__(self) -> None:
            self.report_parts_many = self
            self.batches = 0

        def remote(self, items):
            self.batches += 1
            return asyncio.get_running_loop().create_future()

    async def scenario():
        orchestrator = Wedged()

        async def tokens():
            yield "x"
            yield "y"

        sender = PartSender(PartMux(orchestrator), "t", "agent", 1)
        assert await asyncio.wait_for(drain(tokens(), sender, executor=None), 10) == "xy"
        assert orchestrator.batches >= 1 and not sender.live  # it gave up streaming, not its result
    run(scenario())


def test_a_refused_run_stops_sending_but_keeps_every_part_for_the_result():
    async def scenario():
        orchestrator = FakeMux(accept=False)

        async def tokens():
            for token in ("x", "y", "z"):
                yield token

        result = await drain(tokens(), PartSender(orchestrator, "t", "agent", 1), executor=None)
        assert result == "xyz" and len(orchestrator.calls) == 1  # only the opening was sent
    run(scenario())


def test_a_plain_generator_runs_one_step_at_a_time_on_a_worker_thread():
    async def scenario():
        import threading
        from concurrent.futures import ThreadPoolExecutor

        threads = set()

        def numbers():
            for number in range(3):
                threads.add(threading.get_ident())
                yield number

        with ThreadPoolExecutor(2) as executor:
            result = await drain(numbers(), PartSender(FakeMux(), "t", "agent", 1), executor)
        assert result == [0, 1, 2] and threading.get_ident() not in threads
    run(scenario())


def test_the_streams_mixin_is_part_of_the_orchestrator():
    from hive_ray._runtime._orchestrator import Orchestrator

    assert issubclass(Orchestrator, Streams)
