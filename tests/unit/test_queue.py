from hive_ray._queue import PriorityTaskQueue
from hive_ray._task import TaskEntry


def entry(name: str, priority: int = 0) -> TaskEntry:
    return TaskEntry(task_id=name, pool="p", agent_type="echo", payload=None, priority=priority)


def drain(queue: PriorityTaskQueue) -> list[str]:
    out = []
    while len(queue):
        out.append(queue.pop()[0].task_id)
    return out


def test_higher_priority_first_then_submission_order():
    queue = PriorityTaskQueue()
    for name, priority in [("a", 0), ("b", 5), ("c", 0), ("d", 5), ("e", -1)]:
        queue.push(entry(name, priority))
    assert drain(queue) == ["b", "d", "a", "c", "e"]


def test_discard_is_lazy_and_exact():
    queue = PriorityTaskQueue()
    items = [entry(str(i)) for i in range(5)]
    for item in items:
        queue.push(item)
    assert queue.discard(items[0]) and queue.discard(items[3])
    assert not queue.discard(items[3])  # already gone
    assert len(queue) == 3
    assert drain(queue) == ["1", "2", "4"]
    assert queue.peek_key() is None


def test_redelivered_entry_keeps_its_place_in_line():
    queue = PriorityTaskQueue()
    first, second = entry("first"), entry("second")
    queue.push(first)
    queue.push(second)
    popped, sequence = queue.pop()
    queue.push(popped, sequence=sequence)  # it comes back before 'second'
    assert drain(queue) == ["first", "second"]


def test_many_cancellations_do_not_grow_the_heap_without_bound():
    queue = PriorityTaskQueue()
    items = [entry(str(i)) for i in range(10_000)]
    for item in items:
        queue.push(item)
    for item in items[:9_990]:
        queue.discard(item)
    assert len(queue) == 10
    assert len(queue._heap) < 5_000
