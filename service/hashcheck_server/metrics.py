"""Prometheus metrics of the server.

Names follow Prometheus conventions: the `hashcheck_` prefix, base units
(seconds, bytes), `_total` on counters. Labels stay few and bounded: method,
gRPC code, algorithm, list, tenant. No label ever holds a hash.

Every metric is registered on a registry passed in, so tests get a fresh one
and several servers can live in one process.

Under `serve --workers N` each worker writes its samples to files and the
supervisor serves their aggregate (prometheus_client's multi-process mode,
see `MultiProcessMetrics`). Gauges say how workers combine: `livemax` for
what the newest worker serves (generation, table size), `livesum` for what
adds up (streams, backlog); "live" drops the files of workers that died.
The generation's age is computed when scraped, from its commit time.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from hashcheck_server.generation import Generation

__all__ = ["MultiProcessMetrics", "ServerMetrics"]

_INFO_NAME = "hashcheck_generation_info"
_COMMITTED_NAME = "hashcheck_generation_committed_timestamp_seconds"
_AGE_NAME = "hashcheck_generation_age_seconds"
_AGE_HELP = "Seconds since the served generation was committed."

#: From a 1-hash unary call (~100 µs) to a 100,000-hash batch under load.
_LATENCY_BUCKETS_SECONDS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
)
_BATCH_BUCKETS_HASHES = (1, 10, 100, 1_000, 10_000, 100_000, 1_000_000)


class ServerMetrics:
    """The metrics one server process records."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "hashcheck_requests",
            "Calls (and stream messages) answered, by method and gRPC status code.",
            ["method", "code"],
            registry=registry,
        )
        self.request_seconds = Histogram(
            "hashcheck_request_duration_seconds",
            "Time to answer one call or one stream message.",
            ["method"],
            buckets=_LATENCY_BUCKETS_SECONDS,
            registry=registry,
        )
        self.batch_hashes = Histogram(
            "hashcheck_batch_hashes",
            "Hashes per checked batch.",
            buckets=_BATCH_BUCKETS_HASHES,
            registry=registry,
        )
        self.hashes_checked = Counter(
            "hashcheck_hashes_checked",
            "Hashes checked, by algorithm.",
            ["algorithm"],
            registry=registry,
        )
        self.hits = Counter(
            "hashcheck_hits",
            "Hits, by algorithm and by list (a hash on two lists counts for each).",
            ["algorithm", "list"],
            registry=registry,
        )
        self.table_hashes = Gauge(
            "hashcheck_table_hashes",
            "Live hashes in the served generation, by algorithm.",
            ["algorithm"],
            registry=registry,
            multiprocess_mode="livemax",
        )
        self.generation = Gauge(
            "hashcheck_generation",
            "The generation number now served.",
            registry=registry,
            multiprocess_mode="livemax",
        )
        self.generation_committed = Gauge(
            _COMMITTED_NAME,
            "When the served generation was committed (Unix time).",
            registry=registry,
            multiprocess_mode="livemax",
        )
        self.generation_info = Gauge(
            _INFO_NAME,
            "1 for the content digest of the generation now served.",
            ["digest"],
            registry=registry,
            multiprocess_mode="livemax",
        )
        self.refused_calls = Counter(
            "hashcheck_refused_calls",
            "Calls refused with an error status, by reason.",
            ["reason"],
            registry=registry,
        )
        self.audit_backlog = Gauge(
            "hashcheck_audit_backlog",
            "Audit records accepted but not yet written durably.",
            registry=registry,
            multiprocess_mode="livesum",
        )
        # Labelled by tenant name: bounded by the tenants the hotline admits.
        self.tenant_hashes_checked = Counter(
            "hashcheck_tenant_hashes_checked",
            "Hashes checked, by tenant.",
            ["tenant"],
            registry=registry,
        )
        self.tenant_hits = Counter(
            "hashcheck_tenant_hits",
            "Hits reported (and audited), by tenant.",
            ["tenant"],
            registry=registry,
        )
        self._committed_at: float | None = None
        self._digest: str | None = None
        registry.register(_GenerationAge(lambda: self._committed_at))
        self.active_streams = Gauge(
            "hashcheck_active_streams",
            "Streaming checks now open.",
            registry=registry,
            multiprocess_mode="livesum",
        )

    def record_switch(self, generation: Generation) -> None:
        """Describe the generation just switched to."""
        self.generation.set(generation.number)
        self.generation_committed.set(generation.committed_at)
        self._committed_at = generation.committed_at
        for algorithm in generation.algorithms:
            self.table_hashes.labels(algorithm.value).set(
                generation.hash_count(algorithm)
            )
        self._show_digest(generation.digest or "none")

    def _show_digest(self, digest: str) -> None:
        """Keep one info series: the digest served now."""
        previous, self._digest = self._digest, digest
        if previous is not None and previous != digest:
            # In multi-process mode the sample lives on in this worker's file
            # after remove(); its 0 tells the supervisor to leave it out.
            self.generation_info.labels(previous).set(0)
            self.generation_info.remove(previous)
        self.generation_info.labels(digest).set(1)


class _GenerationAge(Collector):
    """hashcheck_generation_age_seconds, computed at scrape time."""

    def __init__(self, committed_at: Callable[[], float | None]) -> None:
        self._committed_at = committed_at

    def describe(self) -> Iterable[Metric]:
        return [GaugeMetricFamily(_AGE_NAME, _AGE_HELP)]

    def collect(self) -> Iterable[Metric]:
        family = GaugeMetricFamily(_AGE_NAME, _AGE_HELP)
        committed_at = self._committed_at()
        if committed_at is not None:
            family.add_metric([], max(0.0, time.time() - committed_at))
        return [family]


class MultiProcessMetrics(Collector):
    """What the supervisor of `serve --workers N` serves: the workers' sum.

    On top of prometheus_client's aggregation it drops info series that a
    worker has left behind (value 0) and adds the generation's age.
    """

    def __init__(self, directory: str) -> None:
        self._workers = MultiProcessCollector(None, path=directory)  # type: ignore[no-untyped-call]

    def collect(self) -> Iterable[Metric]:
        families = list(self._workers.collect())  # type: ignore[no-untyped-call]
        committed = [
            sample.value
            for family in families
            if family.name == _COMMITTED_NAME
            for sample in family.samples
        ]
        for family in families:
            if family.name == _INFO_NAME:
                family.samples = [s for s in family.samples if s.value]
            yield family
        yield from _GenerationAge(lambda: max(committed, default=None)).collect()
