"""Limits inside one server process: tenants' rates and streams, and all streams.

All are kept per process. `serve --workers N` runs N processes and the
kernel spreads connections over them, so a tenant can reach up to N times its
rate and hold up to N times its streams machine-wide; operators who run
workers set the limits divided by N. Sharing the buckets between processes
would put a lock or a write on every call's path for little gain.

The rate is a token bucket of hashes. It refills at `hashes_per_second` up to
`burst_hashes` (one second's worth unless set). A batch of n hashes is let
through when the bucket holds min(n, burst) tokens, and takes n: a batch
larger than the burst empties the bucket into debt rather than never passing,
so any batch within the tenant's largest batch can be sent, and the rate
holds on average. A refused batch takes nothing and is told when enough
tokens will be there. Every request costs at least one token, so a flood of
empty batches is limited too.

Tokens measure the server's work, not the count of hashes: `tokens_for`
charges an exact hash (MD5, SHA-1, SHA-256) one token and a PDQ hash
`PDQ_TOKEN_WEIGHT` (1,000). An exact hash is one probe of a sorted table; a
PDQ hash is a near-duplicate search that probes 272 index buckets and
verifies every candidate in them, some 400 hashes a second at 20 million
known against millions of exact hashes (benchmarks/pdq/RESULTS.md). Charged
one token each, PDQ hashes would let a tenant take a thousand times the
share of the server that its rate was meant to grant. The weight also slows
down a tenant who probes a listed PDQ hash bit by bit through the exact
distances of near matches (docs/security.md).

Apart from tenants, `OpenStreams` caps the streams the whole process holds
open. Each open stream holds one of the gRPC server's handler threads for
its whole life, idle or not, so without a cap 16 open streams (the default
threads; four tenants at their default of four streams each, or anyone on a
server without tenants) would leave Check, GetInfo and the health probes
queued behind them forever. `open_stream_limit` keeps a reserve of threads
from streams for those calls; like the threads, the cap is per process.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from hashcheck._algorithms import Algorithm
from hashcheck_server.errors import OverLimit
from hashcheck_server.tenants import Tenant

__all__ = [
    "PDQ_TOKEN_WEIGHT",
    "OpenStreams",
    "StreamSlots",
    "TokenBucket",
    "TokenBuckets",
    "open_stream_limit",
    "tokens_for",
]

#: Tokens a PDQ hash takes from a tenant's bucket; an exact hash takes one.
#: A near-duplicate search costs roughly a thousand exact lookups (the module
#: docstring says why it is weighted at all).
PDQ_TOKEN_WEIGHT = 1_000

_TOKEN_WEIGHTS = {Algorithm.PDQ: PDQ_TOKEN_WEIGHT}

#: Handler threads that streams never take, so that unary calls and health
#: probes are answered while the most streams are open: a quarter of the
#: threads, and never fewer than this.
_MIN_RESERVED_THREADS = 2


def tokens_for(algorithm: Algorithm, count: int) -> int:
    """The tokens `count` hashes of `algorithm` take from a tenant's bucket."""
    return count * _TOKEN_WEIGHTS.get(algorithm, 1)


def open_stream_limit(threads: int, requested: int | None = None) -> int:
    """The most streams a process with `threads` handler threads may hold open.

    `requested` None: the threads less a reserve of a quarter of them (at
    least two), and at least one stream. Raises ValueError when `requested`,
    or the threads, would leave no thread for unary calls and health.
    """
    if threads < 2:
        raise ValueError(
            f"{threads} handler thread(s) cannot serve a stream and a health "
            "probe at once; give at least 2 threads."
        )
    if requested is None:
        reserve = max(_MIN_RESERVED_THREADS, threads // 4)
        return max(threads - reserve, 1)
    if not 1 <= requested < threads:
        raise ValueError(
            f"{requested} open streams on {threads} handler threads: allow from "
            f"1 to {threads - 1}, so that unary calls and health probes still "
            "find a free thread."
        )
    return requested


class TokenBucket:
    """Hashes per second with a burst; thread-safe.

    bucket = TokenBucket(hashes_per_second=1000, burst_hashes=1000)
    bucket.take(200)  # raises OverLimit with a retry delay when empty
    bucket.charge(Algorithm.PDQ, 2)  # 2,000 tokens: see tokens_for
    """

    def __init__(
        self,
        hashes_per_second: float,
        burst_hashes: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.hashes_per_second = hashes_per_second
        self.burst_hashes = max(burst_hashes, 1.0)
        self._clock = clock
        self._tokens = self.burst_hashes
        self._updated = clock()
        self._lock = threading.Lock()

    def charge(self, algorithm: Algorithm, count: int) -> None:
        """Take the tokens of `count` hashes of `algorithm` (see `tokens_for`)."""
        try:
            self.take(tokens_for(algorithm, count))
        except OverLimit as error:
            if algorithm not in _TOKEN_WEIGHTS:
                raise
            weight = _TOKEN_WEIGHTS[algorithm]
            raise OverLimit(
                f"{error} A {algorithm.value} hash counts as {weight:,} hashes "
                "against this rate, for the search it costs.",
                retry_after_seconds=error.retry_after_seconds,
            ) from None

    def take(self, hashes: int) -> None:
        """Take `hashes` tokens, or raise OverLimit saying when they will be there."""
        cost = max(hashes, 1)
        needed = min(cost, self.burst_hashes)
        with self._lock:
            now = self._clock()
            elapsed = now - self._updated
            self._updated = now
            self._tokens = min(
                self.burst_hashes, self._tokens + elapsed * self.hashes_per_second
            )
            if self._tokens >= needed:
                self._tokens -= cost
                return
            wait_seconds = (needed - self._tokens) / self.hashes_per_second
        raise OverLimit(
            f"This key may check {self.hashes_per_second:g} hashes a second; "
            f"send this batch again in {wait_seconds:.3g} s.",
            retry_after_seconds=wait_seconds,
        )


class TokenBuckets:
    """One bucket per rate-limited tenant, made again when its limits change."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._buckets: dict[str, tuple[tuple[float, float], TokenBucket]] = {}
        self._lock = threading.Lock()

    def bucket_for(self, tenant: Tenant) -> TokenBucket | None:
        limits = tenant.limits
        rate = limits.hashes_per_second
        if not rate:
            return None
        shape = (rate, float(limits.burst_hashes or rate))
        with self._lock:
            held = self._buckets.get(tenant.name)
            if held is None or held[0] != shape:
                held = (shape, TokenBucket(*shape, clock=self._clock))
                self._buckets[tenant.name] = held
            return held[1]


class StreamSlots:
    """How many streams each tenant holds open in this process."""

    def __init__(self) -> None:
        self._open: dict[str, int] = {}
        self._lock = threading.Lock()

    def open_count(self, name: str) -> int:
        with self._lock:
            return self._open.get(name, 0)

    def acquire(self, tenant: Tenant) -> None:
        """Take one of the tenant's stream slots, or raise OverLimit."""
        limit = tenant.limits.max_streams
        with self._lock:
            count = self._open.get(tenant.name, 0)
            if limit is not None and count >= limit:
                raise OverLimit(
                    f"This key holds {count} open streams, its most; close one "
                    "before opening another."
                )
            self._open[tenant.name] = count + 1

    def release(self, tenant: Tenant) -> None:
        with self._lock:
            self._open[tenant.name] -= 1

    @contextmanager
    def slot(self, tenant: Tenant) -> Iterator[None]:
        """Hold one of the tenant's stream slots for the block (see `acquire`)."""
        self.acquire(tenant)
        try:
            yield
        finally:
            self.release(tenant)


class OpenStreams:
    """Streams open in this process, for every caller together, up to a limit.

    streams = OpenStreams(open_stream_limit(threads=16))  # 12
    with streams.slot():  # raises OverLimit when 12 are open
        ...
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._open = 0
        self._lock = threading.Lock()

    @property
    def open_count(self) -> int:
        with self._lock:
            return self._open

    @contextmanager
    def slot(self) -> Iterator[None]:
        """Hold one of the process's stream slots for the block, or raise OverLimit."""
        with self._lock:
            if self._open >= self.limit:
                raise OverLimit(
                    f"This server holds {self.limit} open streams, its most; "
                    "retry the stream later, or send the batches with Check."
                )
            self._open += 1
        try:
            yield
        finally:
            with self._lock:
                self._open -= 1
