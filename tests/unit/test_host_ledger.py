"""The host's ledger of batches and outcomes, kept for an orchestrator that may die (no Ray)."""

import asyncio

from hive_ray._runtime._host_ledger import OutcomeLedger
from hive_ray._task import Envelope, Outcome


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def envelopes(*task_ids, attempt=1):
    return [Envelope(task_id=task_id, agent_id="a-0", payload=None, attempt=attempt) for task_id in task_ids]


def ok(task_id, value=None):
    return Outcome(task_id=task_id, status="ok", value=value)


def test_running_batches_and_their_outcomes_are_in_the_snapshot():
    ledger = OutcomeLedger()
    first = ledger.begin("a-0", envelopes("t1", "t2", attempt=2))
    running, kept = ledger.snapshot()
    assert [(b.agent_id, b.attempts) for b in running] == [("a-0", {"t1": 2, "t2": 2})] and kept == []
    ledger.end(first, [ok("t1", 1), ok("t2", 2)])
    running, kept = ledger.snapshot()
    assert running == []
    assert [(k.agent_id, k.attempt, k.outcome.task_id, k.outcome.value) for k in kept] == [
        ("a-0", 2, "t1", 1), ("a-0", 2, "t2", 2)]


def test_a_claim_waits_for_a_running_batch_and_answers_lost_for_unknown_tasks():
    async def scenario():
        ledger = OutcomeLedger()
        batch = ledger.begin("a-0", envelopes("t1"))
        claim = asyncio.ensure_future(ledger.claim(["t1", "nowhere"]))
        await asyncio.sleep(0)
        assert not claim.done()
        ledger.end(batch, [ok("t1", "done")])
        done, lost = await claim
        assert (done.status, done.value) == ("ok", "done")
        assert lost.status == "lost" and "nowhere" in lost.error["message"]
        # Claimed again (a second restart before the journal had it): still answered.
        assert (await ledger.claim(["t1"]))[0].value == "done"
    asyncio.run(scenario())


def test_a_batch_that_raises_ends_its_tasks_with_the_error_and_a_cancelled_one_is_lost():
    async def scenario():
        ledger = OutcomeLedger()
        failing = ledger.begin("a-0", envelopes("t1"))
        ledger.fail(failing, RuntimeError("frame too large"))
        [outcome] = await ledger.claim(["t1"])
        assert outcome.status == "error" and outcome.error == {"type": "RuntimeError", "message": "frame too large"}
        cut = ledger.begin("a-0", envelopes("t2"))
        claim = asyncio.ensure_future(ledger.claim(["t2"]))
        await asyncio.sleep(0)
        ledger.fail(cut, asyncio.CancelledError())
        assert (await claim)[0].status == "lost"
        assert ledger.statistics() == {"running_batches": 0, "kept_outcomes": 1}
    asyncio.run(scenario())


def test_outcomes_are_dropped_only_once_a_later_batch_shows_the_orchestrator_alive():
    clock = Clock()
    ledger = OutcomeLedger(keep_seconds=5.0, clock=clock)
    ledger.end(ledger.begin("a-0", envelopes("old")), [ok("old")])
    clock.now += 60  # the orchestrator died: nothing arrives, nothing is dropped
    assert [k.outcome.task_id for k in ledger.snapshot()[1]] == ["old"]
    ledger.end(ledger.begin("a-0", envelopes("new")), [ok("new")])  # a batch: it is alive again
    assert [k.outcome.task_id for k in ledger.snapshot()[1]] == ["new"]


def test_kept_outcomes_are_bounded():
    ledger = OutcomeLedger(limit=3)
    for index in range(10):
        ledger.end(ledger.begin("a-0", envelopes(f"t{index}")), [ok(f"t{index}")])
    assert [k.outcome.task_id for k in ledger.snapshot()[1]] == ["t7", "t8", "t9"]
