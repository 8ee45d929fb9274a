"""When partial batches go out (FlushTimer) and how slow input is read meanwhile."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from hashcheck._flushing import BackgroundPull, FlushTimer, read_ahead


class _Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> _Clock:
    return _Clock()


@pytest.fixture
def timer(clock: _Clock) -> FlushTimer:
    # Binary fractions, so that sums of clock steps are exact.
    return FlushTimer(idle_seconds=0.25, longest_wait_seconds=0.5, clock=clock)


def test_flush_timer_due_once_idle(clock: _Clock, timer: FlushTimer) -> None:
    assert not timer.is_due(3)
    assert timer.wait_seconds() == 0.25

    clock.now += 0.125
    assert not timer.is_due(3)
    clock.now += 0.125
    assert timer.is_due(3)


def test_flush_timer_arrival_restarts_idle_wait(
    clock: _Clock, timer: FlushTimer
) -> None:
    timer.is_due(1)
    clock.now += 0.125

    assert not timer.is_due(2)
    assert timer.wait_seconds() == 0.25


def test_flush_timer_due_after_longest_wait_despite_arrivals(
    clock: _Clock, timer: FlushTimer
) -> None:
    timer.is_due(1)
    for held in range(2, 5):
        clock.now += 0.125
        assert not timer.is_due(held)

    assert timer.wait_seconds() == 0.125
    clock.now += 0.125
    assert timer.is_due(5)


def test_flush_timer_sent_starts_over(clock: _Clock, timer: FlushTimer) -> None:
    timer.is_due(4)
    clock.now += 0.375
    timer.sent()

    assert timer.wait_seconds() == 0.25
    assert not timer.is_due(1)
    clock.now += 0.25
    assert timer.is_due(1)


def test_flush_timer_nothing_held_is_never_due(
    clock: _Clock, timer: FlushTimer
) -> None:
    clock.now += 10

    assert not timer.is_due(0)
    assert timer.wait_seconds() == 0.25


def _slow_source(first: list[str], release: threading.Event) -> Iterator[str]:
    """`first`, then nothing until `release` is set, then one last item."""
    yield from first
    release.wait(10)
    yield "last"


def test_background_pull_hands_over_what_came_while_the_source_blocks() -> None:
    release = threading.Event()
    pull = BackgroundPull(_slow_source(["a", "b"], release))

    pull.start(10)
    arrived: list[str] = []
    deadline = time.monotonic() + 5
    while len(arrived) < 2 and time.monotonic() < deadline:
        arrived += pull.take(0.1)

    assert arrived == ["a", "b"]
    assert not pull.ended

    release.set()
    assert pull.take(5.0) == ["last"]
    pull.start(10)
    assert pull.take(5.0) == []
    assert pull.ended
    pull.raise_if_failed()
    pull.close()


def test_background_pull_reads_no_more_than_asked() -> None:
    pulled = 0

    def counted() -> Iterator[int]:
        nonlocal pulled
        for number in range(100):
            pulled += 1
            yield number

    pull = BackgroundPull(counted())
    pull.start(5)

    assert pull.take(5.0) == [0, 1, 2, 3, 4]
    time.sleep(0.05)
    assert pulled == 5
    pull.close()


def test_background_pull_failure_raised_after_items_before_it() -> None:
    def failing() -> Iterator[int]:
        yield 1
        yield 2
        raise OSError("the input went away")

    pull = BackgroundPull(failing())
    pull.start(10)

    assert pull.take(5.0) == [1, 2]
    assert pull.ended
    with pytest.raises(OSError, match="went away"):
        pull.raise_if_failed()


def test_read_ahead_marks_waits_with_none() -> None:
    release = threading.Event()
    timer = FlushTimer(idle_seconds=0.05)
    items = read_ahead(_slow_source(["a"], release), timer)

    assert next(items) == "a"
    assert next(items) is None
    release.set()
    assert [item for item in items if item is not None] == ["last"]
