"""The order of a run, per table size, and what it keeps of each step.

Per size: make the data; import it with `hashcheck-server import` (timed);
measure the disk; the in-process figures (probe, core, set); the peers
(Redis, PostgreSQL); the echo ceiling; each server configuration (1 and 2
workers: throughput, SDK, memory, latency); and cold start. A step that fails
is recorded as skipped with its reason and the run goes on, so one broken
part never costs the rest of a long run.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import shutil
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import numpy as np

from hashcheck_bench import core, e2e, peers, servers
from hashcheck_bench.data import WIDTH, Workload, make_workload, write_hex_lines
from hashcheck_bench.load import Job, Load, LoadPool
from hashcheck_bench.machine import describe_machine, load_average, others_cpu_cores
from hashcheck_bench.measure import Skipped, Throughput
from hashcheck_bench.procs import MemoryUse, memory_use
from hashcheck_bench.profiling import Profile, profile_worker

__all__ = ["RunConfig", "RunResults", "SizeResults", "run"]

logger = logging.getLogger("hashcheck_bench")

T = TypeVar("T")

#: The issue's workload: one million queries, 0.1% of them hits.
HIT_FRACTION = 0.001

#: The largest table the peers (Python set, Redis, PostgreSQL) are built for.
#: The issue compares against them at 1.4M and 20M; at 100M a set of bytes
#: objects takes some 10 GiB and Redis some 8 GiB beside our own store on a
#: 24 GiB machine, and the 100M table answers only whether our per-hash cost
#: holds (the scaling targets), so the peers are skipped there.
PEERS_MAX_SIZE = 20_000_000


@dataclass(frozen=True)
class RunConfig:
    sizes: list[int]
    passes: int
    work: Path
    out: Path
    redis: str
    postgres: str
    quick: bool = False
    keep_work: bool = False
    queries: int = 1_000_000
    seed: int = 20261203
    #: Times each load client sends the query set in one end-to-end pass.
    rounds: int = 2
    latency_calls: int = 2000
    #: Measurements whose run is shorter repeat it within each pass.
    min_pass_seconds: float = 1.0
    cold_start_passes: int = 3
    e2e_batch_sizes: tuple[int, ...] = (1000, 10_000, 100_000)
    core_batch_sizes: tuple[int, ...] = (10_000, 100_000)
    worker_counts: tuple[int, ...] = (1, 2)
    #: Worker configurations sampled with py-spy, and for how long.
    profiled: tuple[str, ...] = ("w1",)
    profile_seconds: float = 5.0
    load_clients: int = 2


@dataclass
class MemoryFigures:
    raw_bytes: int = 0
    disk_bytes: int | None = None
    disk_apparent_bytes: int | None = None
    #: Per server configuration ("w1", "w2"): each serving worker, after serving.
    workers: dict[str, list[MemoryUse]] = field(default_factory=dict)
    #: A supervisor process that forks the workers, if there is one.
    supervisors: dict[str, MemoryUse] = field(default_factory=dict)
    set_bytes: int | None = None
    redis_used_bytes: int | None = None
    postgres_relation_bytes: int | None = None


@dataclass
class SizeResults:
    size: int
    queries: int
    expected_hits: int
    rates: dict[str, Throughput | Skipped] = field(default_factory=dict)
    latency: dict[str, e2e.Latency | Skipped] = field(default_factory=dict)
    memory: MemoryFigures = field(default_factory=MemoryFigures)
    servers: dict[str, str] = field(default_factory=dict)
    import_seconds: float | Skipped = Skipped("not run")
    import_how: str = ""
    cold_start_seconds: list[float] | Skipped = Skipped("not run")
    #: Issue 5: a delta of DELTA_HASHES new hashes under a running server.
    delta: servers.DeltaTiming | Skipped = Skipped("not run")
    #: py-spy samples of one worker under streaming load, by "w1.b10000".
    profiles: dict[str, Profile | Skipped] = field(default_factory=dict)
    #: Seconds spent building each peer, for the record.
    setup_seconds: dict[str, float] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    load_average: dict[str, list[float]] = field(default_factory=dict)
    #: Cores busy with other work while this benchmark paused, per moment.
    others_cpu_cores: dict[str, float] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)


@dataclass
class RunResults:
    config: RunConfig
    machine: dict[str, object]
    sizes: list[SizeResults] = field(default_factory=list)
    seconds: float = 0.0


def run(config: RunConfig, root: Path) -> RunResults:
    started = time.monotonic()
    results = RunResults(config, describe_machine(root))
    config.work.mkdir(parents=True, exist_ok=True)
    # Logs of an earlier run would be mistaken for this one's.
    shutil.rmtree(config.work / "logs", ignore_errors=True)
    pool = LoadPool(config.load_clients)
    try:
        for size in config.sizes:
            results.sizes.append(_run_size(size, config, pool))
    finally:
        pool.close()
    results.machine["load_average_at_end"] = load_average()
    results.machine["others_cpu_cores_at_end"] = others_cpu_cores()
    results.seconds = time.monotonic() - started
    return results


def _attempt(sized: SizeResults, step: str, action: Callable[[], T]) -> T | Skipped:
    """Run one step; a failure becomes a Skipped that says why."""
    logger.info("%s: %s", _millions(sized.size), step)
    started = time.monotonic()
    try:
        result = action()
    except Exception as error:
        logger.error("%s failed:\n%s", step, traceback.format_exc())
        reason = _one_line(f"{type(error).__name__}: {error}")
        sized.skipped[step] = reason
        return Skipped(reason)
    logger.info("%s done in %.1f s", step, time.monotonic() - started)
    return result


def _one_line(text: str, limit: int = 400) -> str:
    flat = " | ".join(
        line.strip() for line in text.strip().splitlines() if line.strip()
    )
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def _millions(size: int) -> str:
    return f"{size / 1e6:g}M"


def _run_size(size: int, config: RunConfig, pool: LoadPool) -> SizeResults:
    """Every measurement at one size; what fails is recorded, not raised."""
    workload = make_workload(size, config.queries, HIT_FRACTION, config.seed)
    sized = SizeResults(size, config.queries, workload.expected_hits)
    store = config.work / f"store-{size}"
    try:
        _measure_size(sized, workload, store, config, pool)
    except Exception as error:
        logger.error("%s stopped:\n%s", _millions(size), traceback.format_exc())
        sized.skipped["the rest of this size"] = _one_line(f"{error!r}")
    finally:
        if not config.keep_work:
            shutil.rmtree(store, ignore_errors=True)
    return sized


def _measure_size(
    sized: SizeResults,
    workload: Workload,
    store: Path,
    config: RunConfig,
    pool: LoadPool,
) -> None:
    size = sized.size
    sized.load_average["start"] = load_average()
    sized.others_cpu_cores["start"] = others_cpu_cores()
    sized.memory.raw_bytes = size * WIDTH
    logs = config.work / "logs"

    _import_store(sized, workload, store, config)
    _measure_disk(sized, store)
    _measure_in_process(sized, workload, store, config)
    _measure_peers(sized, workload, config)

    queries_path = config.work / f"queries-{size}.npy"
    np.save(queries_path, workload.queries)
    pool.broadcast(Load(str(queries_path)))
    plan = e2e.LoadPlan(
        config.passes, config.rounds, workload.expected_hits, config.min_pass_seconds
    )
    _settle_disk()
    _measure_echo(sized, pool, plan, logs, workload, config)
    if store.exists():
        for workers in config.worker_counts:
            _settle_disk()
            _measure_server(sized, workers, store, pool, workload, plan, config)
        _measure_cold_start(sized, store, config, logs)
        # Last: it adds a list to the store.
        _measure_delta(sized, store, config, logs)

    sized.load_average["end"] = load_average()
    sized.others_cpu_cores["end"] = others_cpu_cores()
    queries_path.unlink(missing_ok=True)


def _settle_disk() -> None:
    """Write back what earlier steps left dirty before a server is measured.

    PostgreSQL runs with fsync off and Redis loads gigabytes: their pages
    reach the disk in the background for a while, and on ext4 every fsync
    then waits for that writeback. HashCheck fsyncs each hit's audit entry
    before the reply, so without this it would be measured under the
    peers' writeback rather than its own.
    """
    started = time.monotonic()
    os.sync()
    logger.info("disk settled (sync) in %.1f s", time.monotonic() - started)


def _import_store(
    sized: SizeResults, workload: Workload, store: Path, config: RunConfig
) -> None:
    shutil.rmtree(store, ignore_errors=True)
    hex_file = config.work / f"hashes-{sized.size}.txt"
    write_hex_lines(workload.table, hex_file)
    try:
        log = config.work / "logs" / f"import-{sized.size}.log"
        sized.import_seconds = _attempt(
            sized, "import", lambda: servers.run_import(store, hex_file, log)
        )
    finally:
        hex_file.unlink(missing_ok=True)
    sized.import_how = "hashcheck-server import, one pass"
    if isinstance(sized.import_seconds, Skipped):
        # Without the CLI, build the store with the same importer in-process,
        # so the rest of the run still measures the real format.
        shutil.rmtree(store, ignore_errors=True)
        _attempt(
            sized, "import in-process", lambda: _import_in_process(store, workload)
        )
        sized.import_how = "CLI failed; store built in-process (not timed)"


def _import_in_process(store: Path, workload: Workload) -> None:
    from hashcheck._algorithms import Algorithm
    from hashcheck_server.store import Entries, HashStore

    entries = Entries.graded_alike(Algorithm.MD5, workload.table, "")
    with HashStore.open(store, create=True) as hash_store:
        hash_store.import_entries("bench", [entries])


def _measure_disk(sized: SizeResults, store: Path) -> None:
    if not store.exists():
        return
    files = [p for p in store.rglob("*") if p.is_file()]
    sized.memory.disk_bytes = sum(p.stat().st_blocks * 512 for p in files)
    sized.memory.disk_apparent_bytes = sum(p.stat().st_size for p in files)


def _measure_in_process(
    sized: SizeResults, workload: Workload, store: Path, config: RunConfig
) -> None:
    sized.rates["probe"] = _attempt(
        sized,
        "memory probe",
        lambda: core.measure_probe(
            workload, config.passes, config.seed, config.min_pass_seconds
        ),
    )
    if store.exists():
        batches = list(config.core_batch_sizes)
        found = _attempt(
            sized,
            "lookup core",
            lambda: core.measure_core(
                store, workload, batches, config.passes, config.min_pass_seconds
            ),
        )
        if isinstance(found, Skipped):
            sized.rates["core.find.b10000"] = found
        else:
            sized.rates.update(found)

    if sized.size > PEERS_MAX_SIZE:
        sized.rates["set.prebuilt"] = Skipped(_PEERS_SKIPPED)
        return
    peer = _attempt(sized, "python set build", lambda: core.SetPeer(workload))
    if isinstance(peer, Skipped):
        sized.rates["set.prebuilt"] = peer
        return
    sized.setup_seconds["set_build"] = peer.build_seconds
    sized.memory.set_bytes = peer.memory_bytes
    found_set = _attempt(
        sized,
        "python set",
        lambda: peer.measure(workload, config.passes, config.min_pass_seconds),
    )
    if isinstance(found_set, Skipped):
        sized.rates["set.prebuilt"] = found_set
    else:
        sized.rates.update(found_set)


_PEERS_SKIPPED = "not built above 20M hashes (runner.PEERS_MAX_SIZE says why)"


def _measure_peers(sized: SizeResults, workload: Workload, config: RunConfig) -> None:
    if sized.size > PEERS_MAX_SIZE:
        sized.rates["redis"] = Skipped(_PEERS_SKIPPED)
        sized.rates["postgres"] = Skipped(_PEERS_SKIPPED)
        return
    redis_result = _attempt(
        sized,
        "redis",
        lambda: peers.measure_redis(config.redis, workload, config.passes),
    )
    if isinstance(redis_result, Skipped):
        sized.rates["redis"] = redis_result
    else:
        sized.rates["redis"] = redis_result.throughput
        sized.memory.redis_used_bytes = redis_result.memory_bytes
        sized.setup_seconds["redis_load"] = redis_result.load_seconds
        sized.versions["redis"] = redis_result.version

    pg_result = _attempt(
        sized,
        "postgres",
        lambda: peers.measure_postgres(config.postgres, workload, config.passes),
    )
    if isinstance(pg_result, Skipped):
        sized.rates["postgres"] = pg_result
    else:
        sized.rates["postgres"] = pg_result.throughput
        sized.memory.postgres_relation_bytes = pg_result.memory_bytes
        sized.setup_seconds["postgres_load"] = pg_result.load_seconds
        sized.versions["postgres"] = pg_result.version


def _measure_echo(
    sized: SizeResults,
    pool: LoadPool,
    plan: e2e.LoadPlan,
    logs: Path,
    workload: Workload,
    config: RunConfig,
) -> None:
    """The echo servicer at 100k (the ceiling) and 10k (gRPC's cost a message).

    Also its unary latency, one process: what gRPC alone takes for a call.
    """

    def measure() -> dict[str, Throughput]:
        handle = servers.start_echo(2, logs)
        try:
            e2e.connect_pool(pool, handle)
            no_hits = dataclasses.replace(plan, expected_hits=0)
            found = {}
            for batch in (100_000, 10_000):
                job = Job("stream", batch, e2e.in_flight_for(batch), plan.rounds)
                found[f"echo.stream.b{batch}"] = e2e.measure_rate(
                    pool, handle, job, no_hits
                )
            return found
        finally:
            handle.stop()

    found = _attempt(sized, "echo ceiling", measure)
    if isinstance(found, Skipped):
        sized.rates["echo.stream.b100000"] = found
    else:
        sized.rates.update(found)

    def measure_latency() -> e2e.Latency:
        handle = servers.start_echo(1, logs)
        try:
            return e2e.measure_latency(handle, workload, config.latency_calls)
        finally:
            handle.stop()

    sized.latency["echo.idle"] = _attempt(sized, "echo latency", measure_latency)


def _measure_server(
    sized: SizeResults,
    workers: int,
    store: Path,
    pool: LoadPool,
    workload: Workload,
    plan: e2e.LoadPlan,
    config: RunConfig,
) -> None:
    key = f"w{workers}"
    handle = _attempt(
        sized,
        f"start server, {workers} worker(s)",
        lambda: servers.start_hashcheck_server(store, workers, config.work / "logs"),
    )
    if isinstance(handle, Skipped):
        sized.servers[key] = f"not started: {handle.reason}"
        return
    sized.servers[key] = handle.label
    if handle.workers_option:
        sized.servers[f"{key} --workers"] = handle.workers_option
    try:
        _measure_running_server(sized, key, handle, pool, workload, plan, config)
    finally:
        handle.stop()


def _measure_running_server(
    sized: SizeResults,
    key: str,
    handle: servers.ServerHandle,
    pool: LoadPool,
    workload: Workload,
    plan: e2e.LoadPlan,
    config: RunConfig,
) -> None:
    _attempt(sized, f"{key} connect", lambda: e2e.connect_pool(pool, handle))
    for mode in ("unary", "stream"):
        for batch in config.e2e_batch_sizes:
            job = Job(mode, batch, e2e.in_flight_for(batch), plan.rounds)
            name = f"e2e.{key}.{mode}.b{batch}"
            sized.rates[name] = _attempt(
                sized,
                name,
                functools.partial(e2e.measure_rate, pool, handle, job, plan),
            )
    _record_server_memory(sized, key, handle)
    if key in config.profiled:
        _profile(sized, key, handle, pool, config)

    sdk = _attempt(
        sized,
        f"{key} sdk",
        lambda: e2e.measure_sdk(pool, handle, plan, [10_000, 100_000]),
    )
    if isinstance(sdk, Skipped):
        sized.rates[f"sdk.{key}"] = sdk
    else:
        sized.rates.update({f"sdk.{key}.{name}": value for name, value in sdk.items()})

    _measure_latencies(sized, key, handle, pool, workload, config)


def _profile(
    sized: SizeResults,
    key: str,
    handle: servers.ServerHandle,
    pool: LoadPool,
    config: RunConfig,
) -> None:
    for batch in (10_000, 100_000):
        rate = rate_of_measured(sized, f"e2e.{key}.stream.b{batch}")
        out = config.work / "logs" / f"py-spy-{sized.size}-{key}-b{batch}.txt"
        sized.profiles[f"{key}.b{batch}"] = _attempt(
            sized,
            f"{key} profile b{batch}",
            functools.partial(
                profile_worker,
                pool,
                handle,
                batch,
                rate or 10.0,
                config.queries,
                out,
                config.profile_seconds,
            ),
        )


def rate_of_measured(sized: SizeResults, name: str) -> float | None:
    value = sized.rates.get(name)
    return value.mhash_per_second if isinstance(value, Throughput) else None


def _record_server_memory(
    sized: SizeResults, key: str, handle: servers.ServerHandle
) -> None:
    uses = [memory_use(pid) for pid in handle.serving_pids]
    sized.memory.workers[key] = [use for use in uses if use is not None]
    roots = [p.pid for p in handle.processes if p.pid not in handle.serving_pids]
    for pid in roots:
        use = memory_use(pid)
        if use is not None:
            sized.memory.supervisors[key] = use


def _measure_latencies(
    sized: SizeResults,
    key: str,
    handle: servers.ServerHandle,
    pool: LoadPool,
    workload: Workload,
    config: RunConfig,
) -> None:
    sized.latency[f"{key}.idle"] = _attempt(
        sized,
        f"{key} latency idle",
        lambda: e2e.measure_latency(handle, workload, config.latency_calls),
    )
    sized.latency[f"{key}.idle-no-hits"] = _attempt(
        sized,
        f"{key} latency idle, no hits",
        lambda: e2e.measure_latency(
            handle, workload, config.latency_calls, misses_only=True
        ),
    )
    peak = _best_stream_rate(sized, key)
    if peak is None:
        sized.latency[f"{key}.loaded"] = Skipped("no streaming peak measured")
        return
    sized.latency[f"{key}.loaded"] = _attempt(
        sized,
        f"{key} latency under load",
        lambda: e2e.measure_loaded_latency(
            pool, handle, workload, config.latency_calls, peak
        ),
    )


def _best_stream_rate(sized: SizeResults, key: str) -> float | None:
    rates = [
        value.mhash_per_second
        for name, value in sized.rates.items()
        if name.startswith(f"e2e.{key}.stream.") and isinstance(value, Throughput)
    ]
    return max(rates) if rates else None


#: The daily delta of issue 5: this many new hashes on the table.
DELTA_HASHES = 10_000


def _measure_delta(
    sized: SizeResults, store: Path, config: RunConfig, logs: Path
) -> None:
    rng = np.random.default_rng([config.seed, sized.size, 5])
    delta = rng.integers(0, 256, size=(DELTA_HASHES, WIDTH), dtype=np.uint8)
    sized.delta = _attempt(
        sized, "delta", lambda: servers.measure_delta(store, delta.tobytes(), logs)
    )


def _measure_cold_start(
    sized: SizeResults, store: Path, config: RunConfig, logs: Path
) -> None:
    def measure() -> list[float]:
        # One start first to settle the page cache and Python's bytecode cache.
        servers.measure_cold_start(store, logs)
        return [
            servers.measure_cold_start(store, logs)
            for _ in range(config.cold_start_passes)
        ]

    sized.cold_start_seconds = _attempt(sized, "cold start", measure)
