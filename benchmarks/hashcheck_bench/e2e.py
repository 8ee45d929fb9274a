"""End to end: throughput, latency and memory of one running server.

Throughput: every load client sends the whole query set `rounds` times per
pass, over its own connection to its own worker (clients are spread over the
workers round-robin). A pass lasts from the first client's start to the last
one's end. Server CPU per pass is read from /proc, to tell a server that is
busy from one that waits for its clients.

Latency: unary Checks of 1,000 hashes, one at a time from this process, on
an idle server; then again while the load clients send a steady stream at
half the server's measured peak.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass

import grpc
import numpy as np

from hashcheck.v1 import hashcheck_pb2, hashcheck_pb2_grpc
from hashcheck_bench.data import WIDTH, Workload, split_batches
from hashcheck_bench.load import Connect, Job, JobResult, LoadPool
from hashcheck_bench.measure import Pass, Skipped, Throughput, measure_throughput
from hashcheck_bench.procs import cpu_seconds
from hashcheck_bench.servers import ServerHandle

__all__ = [
    "Latency",
    "LoadPlan",
    "connect_pool",
    "measure_latency",
    "measure_loaded_latency",
    "measure_rate",
    "measure_sdk",
]

#: Hashes each stream keeps unanswered; enough to cover a round trip and the
#: server's work on the batch before, without queueing much.
_HASHES_IN_FLIGHT = 400_000
_LATENCY_BATCH = 1000
_LATENCY_WARMUP_CALLS = 50
#: Seeds random 128-bit hashes: a collision with the table is not expected.
_MISSES_SEED = 404


@dataclass(frozen=True)
class LoadPlan:
    """How much each measurement sends."""

    passes: int
    #: Times each client sends the whole query set in one run.
    rounds: int
    #: Hits in one copy of the query set.
    expected_hits: int
    #: Short runs are repeated within a pass up to this long.
    min_pass_seconds: float = 1.0


@dataclass(frozen=True)
class Latency:
    """Unary call latencies in milliseconds, and the load they were taken under."""

    calls: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    #: Hashes a second the load clients sent meanwhile (0 when idle).
    load_mhash_per_second: float = 0.0
    load_target_mhash_per_second: float = 0.0


def in_flight_for(batch: int) -> int:
    return max(2, min(32, _HASHES_IN_FLIGHT // batch))


def connect_pool(pool: LoadPool, server: ServerHandle, sdk: bool = False) -> None:
    """Connect each client to its worker, round-robin over the serving pids."""
    pids = server.serving_pids
    orders: list[Connect | Job | None] = [
        Connect(server.port, pids[k % len(pids)], tuple(pids), sdk)
        for k in range(pool.size)
    ]
    pool.run(list(orders))


def measure_rate(
    pool: LoadPool, server: ServerHandle, job: Job, plan: LoadPlan
) -> Throughput:
    """Passes of `job` sent by every client at once."""
    expected = plan.expected_hits * plan.rounds * pool.size

    def run_pass() -> Pass:
        return _timed_pass(pool, server, job)

    return measure_throughput(
        run_pass, plan.passes, expected, "", plan.min_pass_seconds
    )


def _timed_pass(pool: LoadPool, server: ServerHandle, job: Job) -> Pass:
    server_cpu_before = cpu_seconds(server.serving_pids)
    results: list[JobResult] = pool.broadcast(job)
    server_cpu = cpu_seconds(server.serving_pids) - server_cpu_before
    seconds = max(r.finished for r in results) - min(r.started for r in results)
    return Pass(
        seconds=seconds,
        hashes=sum(r.hashes for r in results),
        hits=sum(r.hits for r in results),
        extra={
            "server_cpu_seconds": server_cpu,
            "client_cpu_seconds": sum(r.cpu_seconds for r in results),
        },
    )


def measure_sdk(
    pool: LoadPool, server: ServerHandle, plan: LoadPlan, batch_sizes: list[int]
) -> dict[str, Throughput | Skipped]:
    """The SDK's streaming calls, with its default number of batches in flight."""
    try:
        import hashcheck

        hashcheck.Client  # noqa: B018 - fails early when the SDK lacks it
    except (ImportError, AttributeError) as missing:
        reason = f"hashcheck.Client is not available ({missing})"
        return {"sdk": Skipped(reason)}

    connect_pool(pool, server, sdk=True)
    found: dict[str, Throughput | Skipped] = {}
    for batch in batch_sizes:
        job = Job("sdk_batches", batch, in_flight=0, rounds=plan.rounds)
        found[f"batches.b{batch}"] = measure_rate(pool, server, job, plan)
    # check_stream takes one Python object per hash; its default batch size.
    job = Job("sdk_stream", 0, in_flight=0, rounds=1)
    one_round = dataclasses.replace(plan, rounds=1)
    found["stream.default"] = measure_rate(pool, server, job, one_round)
    return found


def measure_latency(
    server: ServerHandle,
    workload: Workload,
    calls: int,
    load_seconds: float = 0.0,
    *,
    misses_only: bool = False,
) -> Latency:
    """Sequential unary Checks of 1,000 hashes; see the module docstring.

    The queries are the workload's (0.1% hits: most calls carry one hit,
    whose audit entry is synced to disk before the reply), or with
    `misses_only` fresh random hashes, as most calls of a real platform are.
    """
    packed = workload.packed_queries
    if misses_only:
        rng = np.random.default_rng(_MISSES_SEED)
        packed = rng.integers(0, 256, size=len(packed), dtype=np.uint8).tobytes()
    batches = split_batches(packed, _LATENCY_BATCH)
    requests = [
        hashcheck_pb2.CheckRequest(algorithm=hashcheck_pb2.ALGORITHM_MD5, hashes=b)
        for b in batches
        if len(b) == _LATENCY_BATCH * WIDTH
    ]
    with grpc.insecure_channel(server.target) as channel:
        stub = hashcheck_pb2_grpc.HashCheckStub(channel)
        for k in range(_LATENCY_WARMUP_CALLS):
            stub.Check(requests[k % len(requests)], timeout=10.0, wait_for_ready=True)
        deadline = time.monotonic() + (load_seconds or 3600.0)
        samples = _sample(stub, requests, calls, deadline)
    milliseconds = np.array(samples) * 1000
    return Latency(
        calls=len(samples),
        p50_ms=float(np.percentile(milliseconds, 50)),
        p90_ms=float(np.percentile(milliseconds, 90)),
        p99_ms=float(np.percentile(milliseconds, 99)),
        max_ms=float(milliseconds.max()),
    )


def _sample(
    stub: hashcheck_pb2_grpc.HashCheckStub,
    requests: list[hashcheck_pb2.CheckRequest],
    calls: int,
    deadline: float,
) -> list[float]:
    samples = []
    for k in range(calls):
        if time.monotonic() > deadline:
            break
        started = time.perf_counter()
        stub.Check(requests[k % len(requests)], timeout=10.0)
        samples.append(time.perf_counter() - started)
    return samples


def measure_loaded_latency(
    pool: LoadPool,
    server: ServerHandle,
    workload: Workload,
    calls: int,
    peak_mhash_per_second: float,
) -> Latency:
    """Latency while the load clients stream half the peak, steadily."""
    target = peak_mhash_per_second * 1e6 / 2
    # Long enough for the sampled calls at a few milliseconds each.
    seconds = 2.0 + calls * 0.004
    job = Job(
        "paced",
        10_000,
        in_flight=in_flight_for(10_000),
        rate=target / pool.size,
        seconds=seconds + 1.0,
    )
    connect_pool(pool, server)
    waiting = pool.submit([job] * pool.size)
    time.sleep(1.0)
    try:
        latency = measure_latency(server, workload, calls, load_seconds=seconds - 1.0)
    finally:
        results: list[JobResult] = pool.collect(waiting)
    span = max(r.finished for r in results) - min(r.started for r in results)
    sent = sum(r.hashes for r in results) / span / 1e6
    return Latency(
        latency.calls,
        latency.p50_ms,
        latency.p90_ms,
        latency.p99_ms,
        latency.max_ms,
        load_mhash_per_second=sent,
        load_target_mhash_per_second=target / 1e6,
    )
