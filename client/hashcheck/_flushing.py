"""Sending partial batches in time when the input arrives slowly.

Fast input is sent in full batches, but a hash that arrives slowly must not
wait for thousands of others: `tail -f uploads | hashcheck check -`, a
`check_stream` over a queue of uploads, a scan held up by one large file.
Every batcher (`FileScan`, `read_hex_batches`, `iter_batches`,
`aiter_batches`) sends what it holds once

- no new input has arrived for `FLUSH_AFTER_IDLE_SECONDS`, or
- the oldest input it holds has waited `FLUSH_AFTER_WAITING_SECONDS`,

as one `FlushTimer` decides. To notice either while the input blocks, the
batcher never reads a blocking input itself: the input is read elsewhere (a
thread pool for a scan, a `BackgroundPull` thread, an `AsyncBackgroundPull`
task) and the batcher waits for it with the timeout the timer gives. A wait
that times out is the batcher's chance to send.

A fast input costs one hand-over between threads per pull (up to 16 reads of
lines, or a batch of hashes), never one per hash: each hand-over wakes a
thread, which costs tens of microseconds on a busy machine.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import itertools
import queue
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Generic, TypeVar

__all__ = [
    "FLUSH_AFTER_IDLE_SECONDS",
    "FLUSH_AFTER_WAITING_SECONDS",
    "AsyncBackgroundPull",
    "BackgroundPull",
    "FlushTimer",
    "ReadElsewhere",
    "read_ahead",
]

T = TypeVar("T")

FLUSH_AFTER_IDLE_SECONDS = 0.2
FLUSH_AFTER_WAITING_SECONDS = 0.5


class FlushTimer:
    """When a batcher should send the partial batch it holds.

    The batcher waits for more input at most `wait_seconds()`. After each
    arrival and each wait that timed out it asks `is_due` with the number of
    items it holds, and calls `sent` whenever it has sent them all.
    """

    def __init__(
        self,
        idle_seconds: float = FLUSH_AFTER_IDLE_SECONDS,
        longest_wait_seconds: float = FLUSH_AFTER_WAITING_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._idle_seconds = idle_seconds
        self._longest_wait_seconds = longest_wait_seconds
        self._clock = clock
        self._held = 0
        self._first_held_at = 0.0
        self._last_arrival_at = 0.0

    def is_due(self, held: int) -> bool:
        """Whether to send the `held` items now; a changed count is an arrival."""
        now = self._clock()
        if held != self._held:
            if not self._held:
                self._first_held_at = now
            self._held = held
            self._last_arrival_at = now
        return held > 0 and now >= self._due_at()

    def sent(self) -> None:
        self._held = 0

    def wait_seconds(self) -> float:
        """How long to wait for more input before asking `is_due` again."""
        if not self._held:
            return self._idle_seconds
        return max(0.0, self._due_at() - self._clock())

    def _due_at(self) -> float:
        idle_at = self._last_arrival_at + self._idle_seconds
        return min(idle_at, self._first_held_at + self._longest_wait_seconds)


@dataclass
class _Arrivals(Generic[T]):
    """The items one pull has read so far, and how many of them were taken."""

    items: list[T] = field(default_factory=list)
    taken: int = 0

    def take_new(self) -> list[T]:
        """The items read since the last take."""
        arrived = len(self.items)
        taken, self.taken = self.taken, arrived
        return self.items[taken:arrived]

    def take_rest(self) -> list[T]:
        """The items not taken yet, once nothing more is read into them."""
        return self.items[self.taken :] if self.taken else self.items


@dataclass
class _Pull(Generic[T]):
    """One request to the reading thread: up to `count` items."""

    count: int
    arrivals: _Arrivals[T] = field(default_factory=_Arrivals)
    #: Set to whether the iterator is exhausted, once the pull is over.
    exhausted: concurrent.futures.Future[bool] = field(
        default_factory=concurrent.futures.Future
    )


class BackgroundPull(Generic[T]):
    """An iterator read on a thread of its own, so that its reader can stop waiting.

    `start(count)` asks for up to `count` more items, unless a pull is still
    running; `take(timeout)` waits at most `timeout` seconds for the pull and
    returns the items read since the last take: all of them once the pull is
    over, else those read so far (maybe none). `ended` turns true once the
    iterator is exhausted or has raised; `raise_if_failed` then raises what
    it raised, so that the items read before it can be used first.

    A pull is over once it has `count` items, or once it has some and has
    run for `_PULL_RETURNS_AFTER_SECONDS`: a fast input fills it at once,
    and the first item of a slow one is handed over as soon as it comes.

    Nothing is read beyond what was asked for, so a caller that asks only
    when it has room keeps its input's backpressure. The thread is a daemon:
    it may be blocked for good in a read (a terminal, `tail -f`) when the
    process exits.
    """

    def __init__(self, source: Iterator[T]) -> None:
        self._source = source
        self._requests: queue.SimpleQueue[_Pull[T] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._pull: _Pull[T] | None = None
        self._failure: BaseException | None = None
        self.ended = False

    def start(self, count: int) -> None:
        if self._pull is not None or self.ended:
            return
        self._pull = _Pull(count)
        self._requests.put(self._pull)
        if self._thread is None:
            self._thread = threading.Thread(
                target=_serve_pulls,
                args=(self._source, self._requests),
                name="hashcheck-input",
                daemon=True,
            )
            self._thread.start()

    def take(self, timeout: float | None) -> list[T]:
        pull = self._pull
        if pull is None:
            return []
        concurrent.futures.wait([pull.exhausted], timeout=timeout)
        if not pull.exhausted.done():
            return pull.arrivals.take_new()

        self._pull = None
        self._failure = pull.exhausted.exception()
        self.ended = self._failure is not None or pull.exhausted.result()
        return pull.arrivals.take_rest()

    def raise_if_failed(self) -> None:
        if self._failure is not None:
            raise self._failure

    def close(self) -> None:
        """Let the thread end once its current pull is over."""
        self._requests.put(None)


# A pull that has items and has run this long is handed over as it is.
_PULL_RETURNS_AFTER_SECONDS = 0.05


def _serve_pulls(
    source: Iterator[T], requests: queue.SimpleQueue[_Pull[T] | None]
) -> None:
    """The reading thread: each pull asked for, until the source ends or fails."""
    while (pull := requests.get()) is not None:
        try:
            exhausted = _fill(source, pull.arrivals.items, pull.count)
        except BaseException as error:
            pull.exhausted.set_exception(error)
            return
        pull.exhausted.set_result(exhausted)
        if exhausted:
            return


def _fill(source: Iterator[T], items: list[T], count: int) -> bool:
    """Read up to `count` items into `items`; whether `source` is exhausted.

    Reads in steps of 1, 2, 4, ... items, each one `extend` in C, and stops
    early after a step once the pull has run long enough: the time is looked
    at once a step, not once an item.
    """
    started = time.monotonic()
    step = 1
    while (wanted := min(step, count - len(items))) > 0:
        had = len(items)
        # `extend` puts each item in place before the list's length counts
        # it, so `take_new` may slice the list meanwhile, up to the length it
        # saw, without a lock.
        items.extend(itertools.islice(source, wanted))
        if len(items) - had < wanted:
            return True
        if time.monotonic() - started >= _PULL_RETURNS_AFTER_SECONDS:
            return False
        step *= 2
    return False


class ReadElsewhere(Iterator[T]):
    """An iterator whose blocking reads happen on a thread of its own.

    The thread that iterates it only ever waits for that thread (as
    `read_ahead` and `BackgroundPull` do), so a consumer that stops early may
    leave it waiting: unlike a thread inside a read of stdin, it holds
    nothing that the interpreter's exit needs.
    """

    def __init__(self, items: Iterator[T]) -> None:
        self._items = items

    def __next__(self) -> T:
        return next(self._items)


def read_ahead(
    source: Iterator[T], timer: FlushTimer, ahead: int = 16
) -> Iterator[T | None]:
    """Each item of `source`, read up to `ahead` items ahead on another thread.

    Yields None whenever `timer.wait_seconds()` passes with no item: the
    caller's chance to send what it holds. Items are handed over `ahead` at
    a time while they come fast, since each hand-over wakes a thread. What
    `source` raises is raised after the items it gave before.
    """
    reads = BackgroundPull(source)
    try:
        reads.start(ahead)
        while not reads.ended:
            arrived = reads.take(timer.wait_seconds())
            # Read the next ones while the caller handles these.
            reads.start(ahead)
            if not arrived and not reads.ended:
                yield None
            yield from arrived
        reads.raise_if_failed()
    finally:
        reads.close()


@dataclass
class _AsyncPull(Generic[T]):
    arrivals: _Arrivals[T]
    task: asyncio.Task[bool]


class AsyncBackgroundPull(Generic[T]):
    """`BackgroundPull` for an async iterator, read by a task of its own."""

    def __init__(self, source: AsyncIterator[T]) -> None:
        self._source = source
        self._pull: _AsyncPull[T] | None = None
        self._failure: BaseException | None = None
        self.ended = False

    def start(self, count: int) -> None:
        if self._pull is not None or self.ended:
            return
        arrivals = _Arrivals[T]()
        task = asyncio.ensure_future(_afill(self._source, arrivals.items, count))
        self._pull = _AsyncPull(arrivals, task)

    async def take(self, timeout: float | None) -> list[T]:
        pull = self._pull
        if pull is None:
            return []
        await asyncio.wait([pull.task], timeout=timeout)
        if not pull.task.done():
            return pull.arrivals.take_new()

        self._pull = None
        self._failure = pull.task.exception()
        self.ended = self._failure is not None or pull.task.result()
        return pull.arrivals.take_rest()

    def raise_if_failed(self) -> None:
        if self._failure is not None:
            raise self._failure

    async def aclose(self) -> None:
        """Stop a pull still running."""
        if self._pull is None:
            return
        self._pull.task.cancel()
        # Its outcome is moot once the batcher is closed: collect it unseen.
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._pull.task


async def _afill(source: AsyncIterator[T], items: list[T], count: int) -> bool:
    """`_fill` for an async iterator, which costs an await per item anyway."""
    started = time.monotonic()
    while len(items) < count:
        try:
            items.append(await anext(source))
        except StopAsyncIteration:
            return True
        if time.monotonic() - started >= _PULL_RETURNS_AFTER_SECONDS:
            return False
    return False
