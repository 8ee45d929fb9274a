"""Which generation the server answers from, and the switch to the next one.

The server holds exactly one current Generation. A request leases it for the
few milliseconds a batch takes, so a switch never pulls the arrays from under a
running lookup:

- a watcher thread polls the store's generation record (one tiny read
  transaction per poll) and, when the number changed, maps the new generation
  off the request path;
- it then swaps the current reference in one assignment under a lock; new
  requests lease the new generation at once;
- the old generation is retired: its read transaction ends when its last
  lease is returned, and from then on LMDB may reuse its pages.

Lock order: `GenerationKeeper._lock` is only ever taken alone, and
`_LeasedGeneration._lock` never while holding it for longer than a counter
update, so the two cannot deadlock.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from hashcheck_server import layout
from hashcheck_server.errors import NotReady
from hashcheck_server.generation import Generation

__all__ = ["GenerationKeeper", "log_switch"]

logger = logging.getLogger(__name__)


def log_switch(generation: Generation, seconds: float, source: object) -> None:
    """The one log line, and event, of a server switching generation."""
    logger.info(
        "serving generation %d (committed %s, digest %s) from %s, mapped in %.3f s",
        generation.number,
        time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(generation.committed_at)),
        generation.digest or "none",
        source,
        seconds,
        extra={
            "event": "generation_switch",
            "generation": generation.number,
            "digest": generation.digest,
        },
    )


class _LeasedGeneration:
    """A generation and the count of requests using it."""

    def __init__(
        self, generation: Generation, on_closed: Callable[[], None] | None = None
    ) -> None:
        self.generation = generation
        self._on_closed = on_closed
        self._lock = threading.Lock()
        self._leases = 0
        self._retired = False

    def acquire(self) -> None:
        with self._lock:
            self._leases += 1

    def release(self) -> None:
        with self._lock:
            self._leases -= 1
            close_now = self._retired and self._leases == 0
        if close_now:
            self._close()

    def retire(self) -> None:
        with self._lock:
            self._retired = True
            close_now = self._leases == 0
        if close_now:
            self._close()

    def _close(self) -> None:
        self.generation.close()
        if self._on_closed is not None:
            self._on_closed()


class GenerationKeeper:
    """Serves the newest committed generation of a data directory.

    keeper = GenerationKeeper(environment)
    keeper.start_watching(interval_seconds=1.0)
    with keeper.lease() as generation:
        hits = generation.check(Algorithm.MD5, batch)

    `environment` is None only in subclasses that open environments of
    their own (hashcheck_server.follow.SnapshotFollower).
    """

    def __init__(
        self,
        environment: layout.Environment | None,
        *,
        on_switch: Callable[[Generation], None] | None = None,
    ) -> None:
        self._environment = environment
        self._on_switch = on_switch
        self._lock = threading.Lock()
        self._current: _LeasedGeneration | None = None
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None

    @property
    def is_ready(self) -> bool:
        return self._current is not None

    @property
    def generation_number(self) -> int | None:
        current = self._current
        return None if current is None else current.generation.number

    def load_current(self) -> Generation:
        """Map the committed generation now, if it is not the one served."""
        committed = self._committed_number()
        current = self._current
        if current is not None and current.generation.number == committed:
            return current.generation

        assert self._environment is not None, "only followers have no environment"
        started = time.perf_counter()
        generation = Generation.load(self._environment)
        self._install(generation)
        log_switch(generation, time.perf_counter() - started, self._environment.path)
        return generation

    @contextmanager
    def lease(self) -> Iterator[Generation]:
        """The current generation, kept open until the block ends."""
        with self._lock:
            current = self._current
            if current is None:
                raise NotReady("No generation is loaded yet; retry in a moment.")
            current.acquire()
        try:
            yield current.generation
        finally:
            current.release()

    def start_watching(self, interval_seconds: float = 1.0) -> None:
        """Poll for new generations in a daemon thread until stop()."""
        self._watcher = threading.Thread(
            target=self._watch,
            args=(interval_seconds,),
            name="generation-watcher",
            daemon=True,
        )
        self._watcher.start()

    def stop(self) -> None:
        """Stop watching and close the current generation once it is unused."""
        self._stop.set()
        if self._watcher is not None:
            self._watcher.join()
        with self._lock:
            current, self._current = self._current, None
        if current is not None:
            current.retire()

    def _watch(self, interval_seconds: float) -> None:
        while not self._stop.wait(interval_seconds):
            try:
                self.load_current()
            except NotReady:
                # Nothing to serve yet (a follower waiting for its first
                # snapshot): health stays NOT_SERVING until there is.
                continue
            except Exception:
                # The served generation stays valid whatever went wrong with
                # the next one: say why, and try again at the next poll.
                logger.exception(
                    "cannot map the next generation; still serving %s",
                    self.generation_number,
                )

    def _committed_number(self) -> int:
        assert self._environment is not None, "only followers have no environment"
        with self._environment.read() as transaction:
            return layout.read_generation_record(self._environment, transaction).number

    def _install(
        self, generation: Generation, on_closed: Callable[[], None] | None = None
    ) -> None:
        """Serve `generation` from now on; `on_closed` runs once it is unused."""
        leased = _LeasedGeneration(generation, on_closed)
        with self._lock:
            previous, self._current = self._current, leased
        if previous is not None:
            previous.retire()
        if self._on_switch is not None:
            self._on_switch(generation)
