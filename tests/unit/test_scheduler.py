import pytest

from hive_ray._errors import OverloadedError
from hive_ray._scheduler import PoolScheduler
from hive_ray._task import TaskEntry


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def entry(name: str, priority: int = 0, affinity: str | None = None) -> TaskEntry:
    return TaskEntry(task_id=name, pool="p", agent_type="echo", payload=None, priority=priority,
                     affinity_key=affinity)


def flat(assignments):
    return {agent: [e.task_id for e in entries] for agent, entries in assignments}


def test_one_task_per_free_agent_when_tasks_are_slow():
    scheduler = PoolScheduler("p")
    for agent in ("a", "b"):
        scheduler.add_agent(agent)
    for i in range(5):
        scheduler.enqueue(entry(f"t{i}"))
    assigned = flat(scheduler.assign())
    assert sorted(len(v) for v in assigned.values()) == [1, 1]
    assert len(scheduler) == 3
    assert scheduler.assign() == []  # both busy: nothing more goes out
    scheduler.release("a")
    assert flat(scheduler.assign()) == {"a": ["t2"]}


def test_a_queued_task_never_waits_while_an_agent_is_free():
    scheduler = PoolScheduler("p")
    scheduler.add_agent("busy")
    scheduler.add_agent("idle")
    scheduler.enqueue(entry("first"))
    assert flat(scheduler.assign()) in ({"busy": ["first"]}, {"idle": ["first"]})
    scheduler.enqueue(entry("second"))
    # Whichever agent took 'first', 'second' goes to the other one at once.
    assert len(flat(scheduler.assign())) == 1
    assert len(scheduler) == 0


def test_priority_decides_what_goes_first():
    scheduler = PoolScheduler("p")
    scheduler.add_agent("a")
    scheduler.enqueue(entry("low", 0))
    scheduler.enqueue(entry("high", 9))
    assert flat(scheduler.assign()) == {"a": ["high"]}


def test_short_tasks_are_batched_and_long_ones_are_not():
    scheduler = PoolScheduler("p", max_batch=32, target_batch_seconds=0.002)
    scheduler.add_agent("a")
    assert scheduler.batch_size() == 1
    for _ in range(20):
        scheduler.observe_handle_seconds(0.00001)
    assert scheduler.batch_size() == 32
    for i in range(100):
        scheduler.enqueue(entry(f"t{i}"))
    [(agent, batch)] = scheduler.assign()
    assert len(batch) == 64  # room for two batches keeps the agent busy
    for _ in range(100):
        scheduler.observe_handle_seconds(0.5)
    assert scheduler.batch_size() == 1


def test_batch_size_moves_in_powers_of_two_and_ignores_wobbles():
    scheduler = PoolScheduler("p", max_batch=64, target_batch_seconds=0.002)
    scheduler.add_agent("a")
    scheduler.observe_handle_seconds(0.002 / 40)  # ideal 40
    assert scheduler.batch_size() == 32
    for handle in (0.002 / 60, 0.002 / 20, 0.002 / 50, 0.002 / 17):  # the ideal wobbles by 3x
        for _ in range(30):
            scheduler.observe_handle_seconds(handle)
        assert scheduler.batch_size() == 32
    for _ in range(60):
        scheduler.observe_handle_seconds(0.002 / 10)  # ideal 10: below half of 32
    assert scheduler.batch_size() == 8
    for _ in range(60):
        scheduler.observe_handle_seconds(0.002 / 300)  # capped by max_batch
    assert scheduler.batch_size() == 64
    for _ in range(60):
        scheduler.observe_handle_seconds(0.0015)  # longer than half the target: no batching
    assert scheduler.batch_size() == 1
    assert scheduler.agent("a").slots == 1


def test_affinity_pins_a_key_to_one_agent_and_others_do_not_wait_behind_it():
    scheduler = PoolScheduler("p")
    scheduler.add_agent("a")
    scheduler.add_agent("b")
    scheduler.enqueue(entry("k1", affinity="user-1"))
    first = flat(scheduler.assign())
    [owner] = first
    other = "b" if owner == "a" else "a"
    scheduler.enqueue(entry("k2", affinity="user-1"))
    scheduler.enqueue(entry("free"))
    # k2 must wait for its owner; 'free' goes to the other agent meanwhile.
    assert flat(scheduler.assign()) == {other: ["free"]}
    assert len(scheduler) == 1  # k2, parked behind its owner
    scheduler.release(owner)
    assert flat(scheduler.assign()) == {owner: ["k2"]}
    assert len(scheduler) == 0 and scheduler._affinity_queues == {}  # no empty queue kept


def test_cancelled_pinned_task_is_not_dispatched():
    scheduler = PoolScheduler("p")
    scheduler.add_agent("a")
    scheduler.enqueue(entry("k1", affinity="x"))
    scheduler.assign()
    pinned = entry("k2", affinity="x")
    scheduler.enqueue(pinned)
    assert scheduler.assign() == []
    assert len(scheduler) == 1
    assert scheduler.discard(pinned)
    assert not scheduler.discard(pinned)
    scheduler.release("a")
    assert scheduler.assign() == []
    assert len(scheduler) == 0


def test_removed_agent_gives_back_its_pinned_tasks():
    scheduler = PoolScheduler("p")
    scheduler.add_agent("a")
    scheduler.enqueue(entry("k1", affinity="x"))
    scheduler.assign()
    scheduler.enqueue(entry("k2", affinity="x"))
    scheduler.assign()
    scheduler.remove_agent("a")
    assert len(scheduler) == 1
    scheduler.add_agent("b")
    assert flat(scheduler.assign()) == {"b": ["k2"]}
    assert len(scheduler) == 0


def test_full_queue_fails_fast_with_a_retry_hint():
    scheduler = PoolScheduler("p", max_queue=3)
    for i in range(3):
        scheduler.enqueue(entry(f"t{i}"))
    with pytest.raises(OverloadedError) as raised:
        scheduler.enqueue(entry("t3"))
    assert raised.value.retry_after > 0
    assert "pool 'p' is overloaded" in str(raised.value)
    with pytest.raises(OverloadedError):
        scheduler.check_room(1)


def test_retries_wait_for_their_backoff_on_the_injected_clock():
    clock = FakeClock()
    scheduler = PoolScheduler("p", clock=clock)
    scheduler.add_agent("a")
    retry = entry("retry")
    retry.not_before = clock.now + 5
    scheduler.requeue(retry)
    assert scheduler.assign() == []
    assert scheduler.next_retry_at() == 105.0
    clock.now += 5
    assert flat(scheduler.assign()) == {"a": ["retry"]}


def test_agents_that_stop_accepting_get_no_new_work():
    scheduler = PoolScheduler("p")
    scheduler.add_agent("a")
    scheduler.set_accepting("a", False)
    scheduler.enqueue(entry("t"))
    assert scheduler.assign() == []


def test_tasks_beyond_an_agents_concurrency_count_against_the_queue_bound():
    # The burst from the review: one agent of concurrency 100, max_queue 50, quick tasks
    # (batching on). Only concurrency + max_queue tasks may ever be admitted.
    scheduler = PoolScheduler("p", max_queue=50, max_batch=64, target_batch_seconds=0.002)
    scheduler.add_agent("a", concurrency=100)
    for _ in range(20):
        scheduler.observe_handle_seconds(0.00001)  # quick: batches of 64
    assert scheduler.batch_size() == 64
    admitted = 0
    for i in range(750):
        try:
            scheduler.enqueue(entry(f"t{i}"))
        except OverloadedError:
            continue
        admitted += 1
        scheduler.assign()
    assert admitted == 150
    stats = scheduler.statistics()
    assert (stats.inflight, stats.queued) == (100, 50)
    scheduler.release("a", 100)  # a hundred ended: the prefetched fifty now run, room for 100
    stats = scheduler.statistics()
    assert (stats.inflight, stats.queued) == (50, 0)
    scheduler.check_room(50)
    with pytest.raises(OverloadedError):
        scheduler.check_room(51 + 50)


def test_reservations_hold_room_until_the_accept_is_admitted_or_given_back():
    scheduler = PoolScheduler("p", max_queue=3)
    scheduler.reserve(2)
    with pytest.raises(OverloadedError):
        scheduler.reserve(2)
    first = entry("t0")
    scheduler.admit(first)
    assert (len(scheduler), scheduler.backlog()) == (1, 2)  # one queued, one still reserved
    scheduler.unreserve(1)
    scheduler.reserve(2)
    assert scheduler.backlog() == 3
    with pytest.raises(OverloadedError):
        scheduler.reserve(1)


def test_retry_after_follows_the_measured_drain_rate():
    clock = FakeClock()
    scheduler = PoolScheduler("p", max_queue=50, clock=clock)
    scheduler.add_agent("a")
    assert scheduler.retry_after_hint() == 1.0  # nothing measured yet
    for i in range(50):
        scheduler.enqueue(entry(f"t{i}"))
    # Tasks of 2 s on one agent: one completion every 2 s.
    for _ in range(4):
        scheduler.assign()
        clock.now += 2.0
        scheduler.observe_handle_seconds(2.0)
        scheduler.release("a")
    # 0.5 tasks/s and a backlog of 46: a tenth (4.6 tasks) drains in about 9 s, not 0.1 s.
    assert scheduler.drain_rate() == pytest.approx(0.5)
    assert scheduler.retry_after_hint() == pytest.approx(4.6 / 0.5, rel=0.05)
    with pytest.raises(OverloadedError) as refused:
        scheduler.check_room(10)
    assert refused.value.retry_after == pytest.approx(9.2, rel=0.05)
