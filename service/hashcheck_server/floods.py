"""Flood detection: a hash that suddenly hits for many tenants is put on hold by itself.

`serve --quarantine-tenants N --quarantine-window SECONDS` (defaults: 5
tenants within 3600 s; 0 turns it off). A hash that hits for N different
tenants within the window floods: the server writes it to the store's
quarantine (hashcheck_server.quarantine) in one write transaction that also
commits a new generation, so every worker on the directory stops reporting
it within its reload interval (replicas with the next snapshot). It is logged
at WARNING, with its algorithm and hash (a listed hash, never a miss), and
counted in `hashcheck_quarantined_hashes_total`; the held count of the served
generation is `hashcheck_quarantine_held_hashes`. An operator then releases
it (`hashcheck-server quarantine release`) or removes it (`remove`).

Why per tenant and within a window: a listed image is seldom uploaded to
many companies within the same hour, while a benign file that reached a
list by mistake (a web platform's default image) hits for nearly every
hosting company the moment that list goes live, which is what happened when
one hotline enabled an extra category by mistake.

What is counted, and where (`FloodWatch`):

- only hits, never misses: each hit is noted with the tenant it was reported
  to. PDQ hits count only at distance 0, where the caller's hash is the
  listed hash itself, since that is the hash a hold can name;
- in the memory of each server process. Under `serve --workers N` each
  worker counts the tenants it served, and a flood must reach the threshold
  within one worker (a tenant's connection stays with one worker, so with
  many workers lower the threshold). A counter shared by the workers of a
  machine, or by replicas, is a later improvement;
- bounded: at most `MAX_TRACKED_HASHES` hashes, the least recently hit
  dropped first, and sightings older than the window expire. Each hash keeps
  fewer than N tenants, since at N it floods;
- companies only. The hotline's own operator tenants are not counted (they
  look up hashes for their work), and without tenants (a server open on
  loopback, or behind a proxy that authenticates, with `--insecure-no-auth`)
  nothing is counted: peer addresses there are the loopback or the proxy,
  and say nothing about how many companies a hash hit for.

A hash that was ever held, released or removed is not counted again: the
operator's decision stands.
"""

from __future__ import annotations

import collections
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge

from hashcheck._algorithms import Algorithm
from hashcheck_server import layout
from hashcheck_server.caller import Caller
from hashcheck_server.generation import Generation, TableHits
from hashcheck_server.quarantine import Flood, hold

__all__ = [
    "MAX_TRACKED_HASHES",
    "FloodWatch",
    "QuarantineGuard",
    "QuarantineMetrics",
    "QuarantinePolicy",
]

logger = logging.getLogger(__name__)

#: Hashes counted at once per process: about 400 bytes each with four tenants
#: seen, so some 40 MB when full (only hashes hit within the window count).
MAX_TRACKED_HASHES = 100_000

_Key = tuple[Algorithm, bytes]


@dataclass(frozen=True)
class QuarantinePolicy:
    """When a hash floods: `tenants` different tenants within `window_seconds`."""

    tenants: int = 5
    window_seconds: float = 3600.0

    @property
    def is_enabled(self) -> bool:
        return self.tenants > 0 and self.window_seconds > 0


class FloodWatch:
    """Which tenants each hit hash hit for lately; says when one floods.

        watch = FloodWatch(QuarantinePolicy(tenants=3, window_seconds=60))
        floods = watch.note("acme", Algorithm.MD5, [digest])

    Thread-safe. A hash is reported once; afterwards it is not counted again.
    """

    def __init__(
        self,
        policy: QuarantinePolicy,
        *,
        max_hashes: int = MAX_TRACKED_HASHES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._policy = policy
        self._max_hashes = max_hashes
        self._clock = clock
        self._lock = threading.Lock()
        #: Per hash, tenant -> when it last hit for that tenant; the least
        #: recently hit hash first.
        self._sightings: collections.OrderedDict[_Key, dict[str, float]] = (
            collections.OrderedDict()
        )
        #: Hashes reported or decided, no longer counted (bounded alike).
        self._settled: collections.OrderedDict[_Key, None] = collections.OrderedDict()

    @property
    def tracked(self) -> int:
        """How many hashes are being counted."""
        return len(self._sightings)

    def note(
        self, tenant: str, algorithm: Algorithm, digests: Iterable[bytes]
    ) -> list[Flood]:
        """Note hits reported to `tenant`; the hashes that flood with them."""
        now = self._clock()
        floods = []
        with self._lock:
            self._expire(now)
            for digest in digests:
                key = (algorithm, digest)
                if key in self._settled:
                    continue
                tenants = self._count(key, tenant, now)
                if tenants is not None:
                    floods.append(Flood(algorithm, digest, tenants))
        return floods

    def reopen(self, algorithm: Algorithm, digest: bytes) -> None:
        """Count a reported hash afresh: holding it failed."""
        with self._lock:
            self._settled.pop((algorithm, digest), None)

    def _count(self, key: _Key, tenant: str, now: float) -> int | None:
        """Add a sighting; the number of tenants if the hash floods now."""
        sightings = self._sightings.pop(key, {})
        sightings[tenant] = now
        threshold = self._policy.tenants
        if len(sightings) >= threshold:
            cutoff = now - self._policy.window_seconds
            sightings = {t: at for t, at in sightings.items() if at >= cutoff}
        if len(sightings) >= threshold:
            self._settle(key)
            return len(sightings)

        # Re-inserted at the end: the most recently hit hash.
        self._sightings[key] = sightings
        if len(self._sightings) > self._max_hashes:
            self._sightings.popitem(last=False)
        return None

    def _expire(self, now: float) -> None:
        """Drop hashes whose latest sighting is older than the window."""
        cutoff = now - self._policy.window_seconds
        while self._sightings:
            oldest = next(iter(self._sightings.values()))
            if max(oldest.values()) >= cutoff:
                return
            self._sightings.popitem(last=False)

    def _settle(self, key: _Key) -> None:
        self._settled[key] = None
        self._settled.move_to_end(key)
        if len(self._settled) > self._max_hashes:
            self._settled.popitem(last=False)


class QuarantineMetrics:
    """The quarantine's metrics, on the server's registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.quarantined = Counter(
            "hashcheck_quarantined_hashes",
            "Hashes this server put on hold because they hit for many tenants.",
            registry=registry,
        )
        self.held = Gauge(
            "hashcheck_quarantine_held_hashes",
            "Hashes on hold in the served generation, waiting for an operator.",
            registry=registry,
            multiprocess_mode="livemax",
        )

    def record_switch(self, generation: Generation) -> None:
        self.held.set(generation.held_count)


class QuarantineGuard:
    """Counts the hits a server reports and holds the hashes that flood.

    The servicer calls `observe` after a reply's hits are audited. Holding
    writes to the store, which may wait behind an import's write
    transaction, so it happens on a thread of its own, never on a request.
    """

    def __init__(
        self,
        environment: layout.Environment,
        policy: QuarantinePolicy,
        metrics: QuarantineMetrics,
        watch: FloodWatch | None = None,
    ) -> None:
        self._environment = environment
        self._policy = policy
        self._metrics = metrics
        self._watch = watch or FloodWatch(policy)
        self._floods: queue.SimpleQueue[Flood | None] = queue.SimpleQueue()
        self._thread = threading.Thread(
            target=self._hold_floods, name="quarantine", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Finish the holds already queued, then stop."""
        if self._thread.is_alive():
            self._floods.put(None)
            self._thread.join()

    def observe(
        self,
        caller: Caller | None,
        algorithm: Algorithm,
        batch: bytes,
        hits: TableHits,
    ) -> None:
        """Note a reply's hits; queue a hold for each hash that floods."""
        tenant = caller.tenant if caller is not None else None
        if tenant is None or tenant.operator or not hits.count:
            return
        digests = _listed_hashes(algorithm, batch, hits)
        for flood in self._watch.note(tenant.name, algorithm, digests):
            self._floods.put(flood)

    def _hold_floods(self) -> None:
        while (flood := self._floods.get()) is not None:
            try:
                generation = hold(self._environment, flood, self._policy.window_seconds)
            except Exception:
                # Not held: counting starts afresh, so that a flood that goes
                # on is tried again.
                logger.exception(
                    "cannot put a flooding %s hash on hold", flood.algorithm.value
                )
                self._watch.reopen(flood.algorithm, flood.hash)
                continue
            if generation is not None:
                self._report(flood, generation)

    def _report(self, flood: Flood, generation: int) -> None:
        self._metrics.quarantined.inc()
        logger.warning(
            "quarantined %s hash %s: it hit for %d tenants within %g s; from "
            "generation %d it gives no hits until an operator releases it "
            "(hashcheck-server quarantine release) or removes it",
            flood.algorithm.value,
            flood.hash.hex(),
            flood.tenants,
            self._policy.window_seconds,
            generation,
            extra={
                "event": "hash_quarantined",
                "algorithm": flood.algorithm.value,
                "hash": flood.hash.hex(),
                "tenants": flood.tenants,
                "generation": generation,
            },
        )


def _listed_hashes(algorithm: Algorithm, batch: bytes, hits: TableHits) -> set[bytes]:
    """The distinct hashes of a reply's hits that are themselves on a list."""
    positions = hits.positions
    if algorithm is Algorithm.PDQ:
        positions = positions[hits.distances == 0]
    width = algorithm.width
    return {
        batch[position * width : (position + 1) * width]
        for position in np.unique(positions).tolist()
    }
