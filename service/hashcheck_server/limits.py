"""Per-tenant limits inside one server process: a rate of hashes, open streams.

Both are kept per process. `serve --workers N` runs N processes and the
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
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from hashcheck_server.errors import OverLimit
from hashcheck_server.tenants import Tenant

__all__ = ["StreamSlots", "TokenBucket", "TokenBuckets"]


class TokenBucket:
    """Hashes per second with a burst; thread-safe.

    bucket = TokenBucket(hashes_per_second=1000, burst_hashes=1000)
    bucket.take(200)  # raises OverLimit with a retry delay when empty
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
