"""A search's candidates compared two at a time give what one at a time gives, in order, and
stop where one at a time would (index_store/search_threads.py)."""

from __future__ import annotations

import threading
import time

import pytest

from index_store import search_threads
from index_store.search_threads import in_order


@pytest.fixture(params=[1, 2], ids=["one thread", "two threads"])
def threads(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> int:
    monkeypatch.setattr(search_threads, "THREADS", request.param)
    return int(request.param)


def slow_square(n: int) -> int:
    time.sleep(0.002 * (n % 3))  # later items finish before earlier ones now and then
    return n * n


def test_results_come_in_the_items_order(threads: int) -> None:
    assert in_order(slow_square, list(range(12))) == [n * n for n in range(12)]


def test_it_ends_after_the_first_result_that_is_enough(threads: int) -> None:
    seen: list[int] = []

    def enough(item: int, result: int) -> bool:
        seen.append(item)
        return result >= 16

    assert in_order(slow_square, list(range(12)), enough) == [0, 1, 4, 9, 16]
    assert seen == [0, 1, 2, 3, 4]  # shown in order, none past the one that was enough


def test_items_not_started_when_it_ends_never_are(threads: int) -> None:
    started: list[int] = []
    lock = threading.Lock()

    def work(n: int) -> int:
        with lock:
            started.append(n)
        time.sleep(0.01)
        return n

    assert in_order(work, list(range(20)), lambda item, _: item == 0) == [0]
    time.sleep(0.05)  # anything still queued would have started by now
    # The first; what ran beside it; what each worker took up before the caller, woken by the
    # first result, cancelled the rest.
    assert len(started) <= 2 * threads


def test_two_threads_really_run_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(search_threads, "THREADS", 2)
    both = threading.Barrier(2, timeout=5)

    def meet(n: int) -> int:
        both.wait()  # raises BrokenBarrierError unless two items run together
        return n

    assert in_order(meet, [1, 2]) == [1, 2]


def test_what_the_work_raises_reaches_the_caller(threads: int) -> None:
    def fails_on_three(n: int) -> int:
        if n == 3:
            raise ValueError("three")
        return n

    with pytest.raises(ValueError, match="three"):
        in_order(fails_on_three, list(range(6)))
