"""RESULTS.md for people and results.json for programs, from one run."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from hashcheck_bench.e2e import Latency
from hashcheck_bench.measure import Skipped, Throughput
from hashcheck_bench.procs import MemoryUse
from hashcheck_bench.profiling import Profile
from hashcheck_bench.runner import RunResults, SizeResults
from hashcheck_bench.targets import Verdict, check_targets, rate_of

__all__ = ["write_json", "write_markdown"]

_MIB = 2**20

#: Cores busy with other work from which a run is flagged as disturbed.
_BUSY_CORES = 0.5

#: Row order and wording of the throughput table.
_LABELS = {
    "probe": "Memory-probe ceiling: numpy gather into the 8-byte prefixes",
    "core.find.b10000": "Lookup core `SortedTable.find`, batches of 10k",
    "core.find.b100000": "Lookup core `SortedTable.find`, batches of 100k",
    "core.check.b10000": "`Generation.check` (lookup + lists of hits), 10k",
    "core.check.b100000": "`Generation.check` (lookup + lists of hits), 100k",
}
for _key, _workers in (("w1", "1 worker"), ("w2", "2 workers")):
    for _mode in ("unary", "stream"):
        for _batch in (1000, 10_000, 100_000):
            _LABELS[f"e2e.{_key}.{_mode}.b{_batch}"] = (
                f"gRPC {_mode}, {_workers}, batches of {_batch // 1000}k"
            )
    for _batch in (10_000, 100_000):
        _LABELS[f"sdk.{_key}.batches.b{_batch}"] = (
            f"SDK `Client.check_batches`, {_workers}, batches of {_batch // 1000}k"
        )
    _LABELS[f"sdk.{_key}.stream.default"] = (
        f"SDK `Client.check_stream` (bytes per hash, defaults), {_workers}"
    )
    _LABELS[f"sdk.{_key}"] = f"SDK, {_workers}"
_LABELS.update(
    {
        "echo.stream.b100000": "gRPC echo ceiling: bidi, 100k batches, 2 processes",
        "echo.stream.b10000": "gRPC echo: bidi, 10k batches, 2 processes",
        "set.prebuilt": "Python set in-process, hashes sliced beforehand",
        "set.sliced": "Python set in-process, slicing packed batches",
        "redis": "Redis SMISMEMBER, pipelined over loopback",
        "postgres": "PostgreSQL `= ANY` on a bytea primary key",
    }
)


# --- JSON ---------------------------------------------------------------------


def write_json(results: RunResults, path: Path) -> None:
    sized_at, verdicts = check_targets(results)
    document = {
        "machine": results.machine,
        "config": _plain(results.config),
        "seconds": round(results.seconds, 1),
        "targets_checked_at": sized_at.size if sized_at else None,
        "targets": [dataclasses.asdict(v) for v in verdicts],
        "sizes": [_size_json(s) for s in results.sizes],
    }
    path.write_text(json.dumps(document, indent=2) + "\n")


def _size_json(sized: SizeResults) -> dict[str, Any]:
    plain = _plain(sized)
    plain["rates"] = {name: _figure_json(v) for name, v in sized.rates.items()}
    return dict(plain)


def _figure_json(value: Throughput | Skipped) -> dict[str, Any]:
    if isinstance(value, Skipped):
        return {"skipped": value.reason}
    return {
        "mhash_per_second": round(value.mhash_per_second, 3),
        "exact": value.is_exact,
        "expected_hits": value.expected_hits,
        "passes": [dataclasses.asdict(p) for p in value.passes],
    }


def _plain(value: Any) -> Any:
    """Dataclasses, paths and tuples as JSON values."""
    if isinstance(value, Skipped):
        return {"skipped": value.reason}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {
            f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)
        }
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, float):
        return round(value, 6)
    return value


# --- Markdown -----------------------------------------------------------------


def write_markdown(results: RunResults, path: Path) -> None:
    sized_at, verdicts = check_targets(results)
    parts = [
        _intro(results),
        _busy_warning(results),
        _machine(results),
        _targets(sized_at, verdicts),
        *(_size_section(s) for s in results.sizes),
        _method(results),
    ]
    path.write_text("\n\n".join(p.strip() for p in parts if p.strip()) + "\n")


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _intro(results: RunResults) -> str:
    config = results.config
    sizes = ", ".join(f"{s / 1e6:g}M" for s in config.sizes)
    kind = "a quick smoke run" if config.quick else "a full run"
    return f"""
# HashCheck benchmarks (issue 3)

Written by `benchmarks/run` ({kind}: tables of {sizes} hashes, {config.queries:,}
random MD5 queries of which 0.1% are hits, medians of {config.passes} pass(es)
after one warm-up run; runs shorter than {config.min_pass_seconds:g} s are repeated
within a pass; {results.seconds / 60:.1f} minutes). Regenerate with
`benchmarks/run`; the same figures are in `results.json`.

This machine is shared and noisy: other work runs on the same 2 cores. Every
figure is the median of its passes, and every ratio compares figures taken in
this one run; compare ratios across runs rather than absolute rates. Mhash/s is
millions of hashes answered per second.
"""


def _busy_warning(results: RunResults) -> str:
    """A warning when other work kept a good part of the cores busy."""
    readings = [
        results.machine.get("others_cpu_cores_at_start"),
        results.machine.get("others_cpu_cores_at_end"),
    ]
    readings += [v for sized in results.sizes for v in sized.others_cpu_cores.values()]
    found = [r for r in readings if isinstance(r, int | float)]
    if not found or max(found) < _BUSY_CORES:
        return ""
    shown = ", ".join(f"{r:.1f}" for r in found)
    return (
        "**Warning:** other work kept this machine busy during the run: with\n"
        f"the benchmark paused, other processes used {shown} cores (sampled at\n"
        "the start and end of each size). Absolute figures are lower than an\n"
        "idle machine gives; ratios within the run hold up better."
    )


def _machine(results: RunResults) -> str:
    machine = results.machine
    packages = machine.get("packages", {})
    assert isinstance(packages, dict)
    versions = {}
    for sized in results.sizes:
        versions.update(sized.versions)
    rows = [
        ["CPU", str(machine.get("cpu"))],
        ["Cores", f"{machine.get('cores')} ({machine.get('usable_cores')} usable)"],
        ["Memory", f"{machine.get('memory_gib')} GiB"],
        ["Kernel / OS", f"{machine.get('kernel')} / {machine.get('os')}"],
        ["Python", str(machine.get("python"))],
        [
            "numpy / grpcio / protobuf / lmdb",
            " / ".join(
                str(packages.get(n)) for n in ("numpy", "grpcio", "protobuf", "lmdb")
            ),
        ],
        [
            "redis-py / hiredis / psycopg",
            " / ".join(str(packages.get(n)) for n in ("redis", "hiredis", "psycopg")),
        ],
        ["Redis server", versions.get("redis", "not measured")],
        ["PostgreSQL server", versions.get("postgres", "not measured")],
        ["hashcheck source", str(machine.get("source"))],
        ["Date", str(machine.get("date"))],
        [
            "Cores used by other work (benchmark paused), start / end",
            f"{machine.get('others_cpu_cores_at_start')} / "
            f"{machine.get('others_cpu_cores_at_end')}",
        ],
        [
            "Load average, start / end",
            f"{machine.get('load_average_at_start')} / "
            f"{machine.get('load_average_at_end')}",
        ],
    ]
    return "## Machine\n\n" + _table(["", ""], rows)


def _targets(sized_at: SizeResults | None, verdicts: list[Verdict]) -> str:
    if sized_at is None:
        return "## Targets\n\nNothing was measured."
    where = f"{sized_at.size / 1e6:g}M hashes"
    note = ""
    if sized_at.size != 20_000_000:
        note = (
            "\n\nThe targets are stated at 20M hashes; this run had no 20M table, "
            f"so they are checked at {where} and mean little."
        )
    rows = [[v.target, v.measured, _verdict_word(v.met), v.detail] for v in verdicts]
    return f"## Issue 3 targets, checked at {where}{note}\n\n" + _table(
        ["Target", "Measured", "Verdict", "By how much / where"], rows
    )


def _verdict_word(met: bool | None) -> str:
    return {True: "met", False: "**missed**", None: "not measured"}[met]


def _size_section(sized: SizeResults) -> str:
    title = f"## {sized.size / 1e6:g}M known hashes"
    parts = [
        title,
        _throughput_table(sized),
        _where_time_goes(sized),
        _profiles(sized),
        _latency_table(sized),
        _memory_table(sized),
        _startup_and_import(sized),
        _skipped(sized),
    ]
    return "\n\n".join(p for p in parts if p)


def _ratio(value: float, base: float | None) -> str:
    if not base:
        return "-"
    ratio = value / base
    return f"{ratio:.0f}x" if ratio >= 10 else f"{ratio:.2g}x"


def _ordered_rates(sized: SizeResults) -> list[str]:
    known = [name for name in _LABELS if name in sized.rates]
    return known + [name for name in sized.rates if name not in _LABELS]


def _throughput_table(sized: SizeResults) -> str:
    redis = rate_of(sized, "redis")
    python_set = rate_of(sized, "set.prebuilt")
    postgres = rate_of(sized, "postgres")
    probe = rate_of(sized, "probe")
    rows = []
    for name in _ordered_rates(sized):
        value = sized.rates[name]
        label = _LABELS.get(name, name)
        if isinstance(value, Skipped):
            rows.append([label, "skipped", "", "", "", "", "", value.reason])
            continue
        rate = value.mhash_per_second
        exact = "yes" if value.is_exact else f"**no** ({value.passes[-1].hits} hits)"
        if name == "probe" or name.startswith("echo"):
            exact = "n/a"
        rows.append(
            [
                label,
                f"{rate:.2f}",
                _ratio(rate, redis),
                _ratio(rate, python_set),
                _ratio(rate, postgres),
                _ratio(rate, probe),
                exact,
                _server_cpu(value),
            ]
        )
    header = [
        "What",
        "Mhash/s",
        "vs Redis",
        "vs set",
        "vs PostgreSQL",
        "vs probe",
        "Exact",
        "Server CPU ns/hash",
    ]
    return "### Throughput (median of passes)\n\n" + _table(header, rows)


def _server_cpu(value: Throughput) -> str:
    cpu = value.extra_median("server_cpu_seconds")
    hashes = value.passes[0].hashes if value.passes else 0
    return f"{cpu / hashes * 1e9:.0f}" if cpu is not None and hashes else ""


def _where_time_goes(sized: SizeResults) -> str:
    """Per-hash costs side by side: the lookup, the whole server, gRPC alone."""
    rows = []
    for name, label in (
        ("core.find.b10000", "10k batches: lookup core alone (wall)"),
        ("core.check.b10000", "10k batches: Generation.check (wall)"),
        ("echo.stream.b10000", "10k batches: echo servicer, gRPC alone"),
        ("e2e.w1.stream.b10000", "10k batches: server, 1 worker, streaming"),
        ("e2e.w2.stream.b10000", "10k batches: server, 2 workers, streaming"),
        ("core.find.b100000", "100k batches: lookup core alone (wall)"),
        ("core.check.b100000", "100k batches: Generation.check (wall)"),
        ("echo.stream.b100000", "100k batches: echo servicer, gRPC alone"),
        ("e2e.w1.stream.b100000", "100k batches: server, 1 worker, streaming"),
        ("e2e.w2.stream.b100000", "100k batches: server, 2 workers, streaming"),
    ):
        value = sized.rates.get(name)
        if not isinstance(value, Throughput):
            continue
        if name.startswith("core"):
            rows.append([label, f"{1e3 / value.mhash_per_second:.0f}", ""])
            continue
        client = value.extra_median("client_cpu_seconds") or 0.0
        hashes = value.passes[0].hashes
        per_hash = f"{client / hashes * 1e9:.0f}" if hashes else ""
        rows.append([label, _server_cpu(value), per_hash])
    if not rows:
        return ""
    return (
        "### Where the time goes (ns per hash)\n\n"
        "CPU time of the server processes and of the load clients per hash\n"
        "answered, read from /proc around each pass; the core rows are wall\n"
        "time of one core in this process. A server row minus the echo row of\n"
        "the same batch size is what the servicer and the lookup cost inside the\n"
        "server; the echo row is gRPC and protobuf alone. On 2 shared cores the\n"
        "lookup inside a server costs more CPU than in this process alone: its\n"
        "threads and the clients share the cores and their caches.\n\n"
        + _table(["Where", "Server ns/hash", "Client ns/hash"], rows)
    )


def _profiles(sized: SizeResults) -> str:
    found = {k: v for k, v in sized.profiles.items() if isinstance(v, Profile)}
    failed = [
        f"- {k}: {v.reason}"
        for k, v in sized.profiles.items()
        if isinstance(v, Skipped)
    ]
    if not found:
        return "### Profile\n\n" + "\n".join(failed) if failed else ""
    keys = list(found)
    labels = list(next(iter(found.values())).shares)
    rows = [
        [label] + [f"{found[k].shares[label] * 100:.0f}%" for k in keys]
        for label in labels
    ]
    header = ["Share of a worker's busy samples"] + [
        f"{k} ({found[k].samples} samples)" for k in keys
    ]
    rows.append(
        ["(samples waiting in threading, left out)"]
        + [f"{found[k].waiting_share * 100:.0f}% of all" for k in keys]
    )
    tops = []
    for key, profile in found.items():
        frames = ", ".join(
            f"`{frame}` {share * 100:.0f}%" for frame, share in profile.top_frames[:5]
        )
        tops.append(f"- {key}, most often on top: {frames}")
    return (
        "### Profile: one worker under streaming load (py-spy)\n\n"
        "py-spy sampled the worker of the 1-worker server for a few seconds while\n"
        "the clients streamed at full speed; a frame's share counts the busy\n"
        "samples with it anywhere on the stack, so nested frames overlap.\n\n"
        + _table(header, rows)
        + "\n\n"
        + "\n".join(tops + failed)
    )


_LATENCY_WHO = {"echo": "gRPC echo servicer, 1 process (the transport alone)"}


def _latency_table(sized: SizeResults) -> str:
    rows = []
    for key, value in sized.latency.items():
        workers, state = key.split(".")
        who = sized.servers.get(workers, _LATENCY_WHO.get(workers, workers))
        if isinstance(value, Skipped):
            rows.append([who, state, "skipped", "", "", "", "", value.reason])
            continue
        rows.append(_latency_row(who, state, value))
    if not rows:
        return ""
    header = ["Server", "Load", "Calls", "p50 ms", "p90 ms", "p99 ms", "max ms", "Load"]
    return "### Latency: unary Check of 1,000 hashes, one call at a time\n\n" + _table(
        header, rows
    )


def _latency_row(who: str, state: str, value: Latency) -> list[str]:
    load = ""
    if value.load_target_mhash_per_second:
        load = (
            f"{value.load_mhash_per_second:.1f} Mhash/s sent "
            f"(half the peak: {value.load_target_mhash_per_second:.1f})"
        )
    return [
        who,
        state,
        str(value.calls),
        f"{value.p50_ms:.2f}",
        f"{value.p90_ms:.2f}",
        f"{value.p99_ms:.2f}",
        f"{value.max_ms:.1f}",
        load,
    ]


def _mib(value: int | None) -> str:
    return "-" if value is None else f"{value / _MIB:,.0f}"


def _memory_table(sized: SizeResults) -> str:
    memory = sized.memory
    rows = []
    for key, uses in memory.workers.items():
        who = sized.servers.get(key, key)
        rows += [_worker_row(f"{who}: worker {use.pid}", use) for use in uses]
        supervisor = memory.supervisors.get(key)
        if supervisor is not None:
            rows.append(_worker_row(f"{who}: supervisor", supervisor))
    table = _table(
        ["Process", "Private MiB", "Anonymous MiB", "Shared MiB", "RSS MiB", "PSS MiB"],
        rows,
    )
    raw = memory.raw_bytes
    disk = memory.disk_bytes
    others = [
        ["Raw hash bytes (N x 16)", _mib(raw)],
        [
            "Data directory on disk (allocated)",
            f"{_mib(disk)} ({disk / raw:.2f}x raw)" if disk and raw else "-",
        ],
        ["Data directory, apparent size", _mib(memory.disk_apparent_bytes)],
        ["Python set (RSS growth)", _mib(memory.set_bytes)],
        ["Redis used_memory", _mib(memory.redis_used_bytes)],
        ["PostgreSQL table + index", _mib(memory.postgres_relation_bytes)],
    ]
    return (
        "### Memory\n\n"
        "Per server process, from /proc/PID/smaps_rollup after serving. Private is\n"
        "Private_Clean + Private_Dirty: a page of the mapped table that only one\n"
        "process maps counts as private, so a lone worker shows the table pages it\n"
        "touched as private, and two workers show them as shared. Anonymous memory\n"
        "(heap, stacks) is what a worker can never share.\n\n"
        + table
        + "\n\n"
        + _table(["", "MiB"], others)
    )


def _worker_row(label: str, use: MemoryUse) -> list[str]:
    return [
        label,
        _mib(use.private),
        _mib(use.anonymous),
        _mib(use.shared),
        _mib(use.rss),
        _mib(use.pss),
    ]


def _delta_row(sized: SizeResults) -> str:
    delta = sized.delta
    if isinstance(delta, Skipped):
        return delta.reason
    return (
        f"{delta.hashes:,} new hashes: import {delta.import_seconds:.2f} s; "
        f"hitting on a running server {delta.live_seconds:.2f} s after the "
        "import started (it polls for new generations every second)"
    )


def _startup_and_import(sized: SizeResults) -> str:
    rows = []
    cold = sized.cold_start_seconds
    if isinstance(cold, Skipped):
        rows.append(["Cold start (serve to first answered Check)", cold.reason])
    else:
        shown = ", ".join(f"{s:.3f}" for s in cold)
        median = sorted(cold)[len(cold) // 2] if cold else float("nan")
        rows.append(
            ["Cold start (serve to first answered Check)", f"{median:.3f} s ({shown})"]
        )
    imported = sized.import_seconds
    if isinstance(imported, Skipped):
        rows.append(["Import of the hex file", imported.reason])
    else:
        rate = sized.size / imported / 1e6
        rows.append(
            [
                "Import of the hex file",
                f"{imported:.1f} s, {rate:.2f} M lines/s ({sized.import_how})",
            ]
        )
    rows.append(["Daily delta (issue 5)", _delta_row(sized)])
    for name, seconds in sized.setup_seconds.items():
        rows.append([f"Peer setup: {name.replace('_', ' ')}", f"{seconds:.1f} s"])
    for key, label in sized.servers.items():
        rows.append([f"Server configuration {key}", label])
    if sized.others_cpu_cores:
        busy = " / ".join(f"{v:.1f}" for v in sized.others_cpu_cores.values())
        rows.append(["Cores used by other work, start / end of this size", busy])
    return "### Start-up, import and setup\n\n" + _table(["", ""], rows)


def _skipped(sized: SizeResults) -> str:
    if not sized.skipped:
        return ""
    lines = [f"- {step}: {reason}" for step, reason in sized.skipped.items()]
    return "### Steps that failed\n\n" + "\n".join(lines)


def _method(results: RunResults) -> str:
    config = results.config
    return f"""
## How it was measured

- Data: a table of N random 16-byte hashes and {config.queries:,} queries of
  which 0.1% are rows of the table (seeded, `hashcheck_bench.data`). Only
  synthetic random hashes are used. "Exact" means every pass found exactly
  those hits.
- Store: built by `hashcheck-server import` from a hex file of the table (that
  import is the import-speed figure); every server figure reads that store.
- Lookup core and `Generation.check`: in this process, one core, over the
  table mapped from LMDB exactly as the server maps it.
- End to end: {config.load_clients} client processes, each with its own
  connection to its own worker (reconnected until SO_REUSEPORT put it
  there), each sending the query set {config.rounds} time(s) a pass through the raw
  generated stubs. Unary keeps a window of calls in flight; streaming is one
  CheckStream per client with a window of batches (about 400k hashes in
  flight). Servers and clients share the 2 cores.
- SDK: `hashcheck.Client.check_batches` (packed batches, the SDK's default
  number in flight) and `check_stream` (one bytes object per hash, defaults).
- Echo ceiling: the same clients against a servicer that answers each batch
  with an empty reply, in 2 processes sharing the port.
- Peers: Python set of bytes objects; Redis with hiredis, SMISMEMBER of 10k
  members, 10 commands a round trip (loaded by SADD pipelines); PostgreSQL
  (fsync off, 2 GB shared buffers) with `= ANY` over 10k hashes a query on an
  unlogged table with a bytea primary key (loaded by COPY). Queries are sliced
  into bytes objects before the clock starts.
- Before the echo and each server is measured, `sync` writes back what the
  earlier steps left dirty (PostgreSQL runs with fsync off), since every
  hit's audit entry is fsynced before its reply.
- Latency: {config.latency_calls} sequential unary Checks of 1,000 hashes from the
  benchmark process; "loaded" while the client processes stream 10k batches
  at half the best streaming rate of that server, paced evenly. "idle" sends
  the workload's queries: 0.1% hits, so most calls carry a hit, and a hit's
  audit entry is synced to disk before its reply leaves; "idle-no-hits"
  sends fresh random hashes, as most calls of a platform are.
- Memory-probe ceiling: `numpy.take` of random indices from a uint64 array of
  N entries (the size of the table's 8-byte prefixes), one core.
- Cold start: from starting `hashcheck-server serve` to the first answered
  Check of 1,000 hashes, with the data already in the page cache; one
  untimed start first.
"""
