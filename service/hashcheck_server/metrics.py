"""Prometheus metrics of the server.

Names follow Prometheus conventions: the `hashcheck_` prefix, base units
(seconds, bytes), `_total` on counters. Labels stay few and bounded: method,
gRPC code, algorithm, list. No label ever holds a hash.

Every metric is registered on a registry passed in, so tests get a fresh one
and several servers can live in one process.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["ServerMetrics"]

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
            multiprocess_mode="max",
        )
        self.generation = Gauge(
            "hashcheck_generation",
            "The generation number now served.",
            registry=registry,
            multiprocess_mode="max",
        )
        self.generation_committed = Gauge(
            "hashcheck_generation_committed_timestamp_seconds",
            "When the served generation was committed (Unix time).",
            registry=registry,
            multiprocess_mode="max",
        )
        self.active_streams = Gauge(
            "hashcheck_active_streams",
            "Streaming checks now open.",
            registry=registry,
            multiprocess_mode="livesum",
        )
