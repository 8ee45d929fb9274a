"""Read-ahead for a stream: answer its next requests while earlier replies wait.

A hit's reply may leave the server only once the hit is durable in the audit,
and that fsync costs milliseconds, as long as looking up 100,000 hashes.
Answered in the stream's own thread, one batch after the other, a stream
would spend half its time waiting for the disk. `ReadAhead` runs `prepare`
on each request in a thread of its own, up to `depth` requests ahead of the
replies, and hands the prepared answers back in request order; the stream's
thread waits for each answer's audit and sends it, while the next lookups run.

Its thread reads the requests whatever the replies are doing, so a client
that waits for a reply before it sends more is never deadlocked. Running
ahead is bounded by `depth` prepared answers, plus the one in hand.

An error raised while reading or preparing ends the read-ahead: the answers
prepared before it are handed back first, then the error is raised in the
stream's thread, as if it had happened there.
"""

from __future__ import annotations

import contextvars
import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Generic, TypeVar

__all__ = ["ReadAhead"]

RequestT = TypeVar("RequestT")
AnswerT = TypeVar("AnswerT")

#: How often a read-ahead blocked on a full queue looks whether it was stopped.
_STOP_POLL_SECONDS = 0.1


@dataclass(frozen=True)
class _Failed:
    error: BaseException


class _End:
    pass


_END = _End()


class ReadAhead(Generic[RequestT, AnswerT]):
    """Prepares a stream's requests ahead of its replies; iterate for the answers.

    with ReadAhead(requests, prepare, depth=4) as answers:
        for answer in answers:
            yield finish(answer)

    `prepare` runs in a copy of the creating thread's context, so it sees
    the same context variables (the caller of the call, for one).
    """

    def __init__(
        self,
        requests: Iterator[RequestT],
        prepare: Callable[[RequestT], AnswerT],
        *,
        depth: int,
        name: str = "read-ahead",
    ) -> None:
        self._requests = requests
        self._prepare = prepare
        self._prepared: queue.Queue[AnswerT | _Failed | _End] = queue.Queue(depth)
        self._is_stopped = threading.Event()
        context = contextvars.copy_context()
        self._thread = threading.Thread(
            target=context.run, args=(self._read,), name=name, daemon=True
        )

    def __enter__(self) -> ReadAhead[RequestT, AnswerT]:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        # The thread ends by itself once the requests end, which they do when
        # the call ends; it only must not wait for room that never comes.
        self._is_stopped.set()

    def __iter__(self) -> Iterator[AnswerT]:
        while True:
            item = self._prepared.get()
            if isinstance(item, _End):
                return
            if isinstance(item, _Failed):
                raise item.error
            yield item

    def _read(self) -> None:
        """The read-ahead thread: prepare each request, hand it over in order."""
        try:
            for request in self._requests:
                if not self._hand_over(self._prepare(request)):
                    return
        except BaseException as error:
            self._hand_over(_Failed(error))
            return
        self._hand_over(_END)

    def _hand_over(self, item: AnswerT | _Failed | _End) -> bool:
        """Queue an item, waiting for room; False once the stream stopped."""
        while not self._is_stopped.is_set():
            try:
                self._prepared.put(item, timeout=_STOP_POLL_SECONDS)
                return True
            except queue.Full:
                continue
        return False
