"""Issue 3's targets, checked against the figures of one run.

Targets are stated at 20 million known hashes. A run without that size (a
quick run) checks them at its largest size and says so.
"""

from __future__ import annotations

from dataclasses import dataclass

from hashcheck_bench.e2e import Latency
from hashcheck_bench.measure import Skipped, Throughput
from hashcheck_bench.runner import RunResults, SizeResults

__all__ = ["Verdict", "check_targets", "rate_of"]

TARGET_SIZE = 20_000_000
_MIB = 2**20


@dataclass(frozen=True)
class Verdict:
    target: str
    measured: str
    #: True met, False missed, None when it could not be measured.
    met: bool | None
    detail: str


def rate_of(sized: SizeResults, name: str) -> float | None:
    value = sized.rates.get(name)
    return value.mhash_per_second if isinstance(value, Throughput) else None


def best_rate(sized: SizeResults, names: list[str]) -> tuple[str, float] | None:
    found = [(n, r) for n in names if (r := rate_of(sized, n)) is not None]
    return max(found, key=lambda item: item[1]) if found else None


def stream_names(sized: SizeResults) -> list[str]:
    """Streaming end to end at 10,000 to 100,000 hashes a batch, any workers."""
    return [
        name
        for name in sized.rates
        if name.startswith("e2e.")
        and ".stream." in name
        and name.endswith(("b10000", "b100000"))
    ]


def check_targets(results: RunResults) -> tuple[SizeResults | None, list[Verdict]]:
    """The size the targets were checked at, and one verdict per target."""
    if not results.sizes:
        return None, []
    by_size = {s.size: s for s in results.sizes}
    sized = by_size.get(TARGET_SIZE, max(results.sizes, key=lambda s: s.size))
    verdicts = [
        _core(sized),
        *_end_to_end(sized),
        *_latency(sized),
        _private_memory(sized),
        _disk(sized),
        _cold_start(sized),
        _import(sized),
        _delta(sized),
    ]
    if 100_000_000 in by_size and TARGET_SIZE in by_size:
        verdicts += _scaling(by_size[TARGET_SIZE], by_size[100_000_000])
    return sized, [_with_why(verdict) for verdict in verdicts]


#: Why a target can be missed on this machine, by the start of its name;
#: added to a missed target's detail, so that the table says why, not only
#: by how much.
_WHY_MISSED = {
    "End to end streaming (": (
        "why: server and clients share 2 cores; gRPC alone (echo row) carries "
        "some 40-50 Mhash/s here, the lookup costs 25-45 ns a hash on top in a "
        "worker that shares its core with a client, and a worker's threads "
        "take turns on one GIL"
    ),
    "End to end streaming >= 4x a Python set": (
        "why: the set is measured in this process on hashes sliced beforehand, "
        "with no transport at all; against a set that must slice the packed "
        "batches a server receives, see the ratio after it"
    ),
    "End to end streaming >= 15x Redis": (
        "why: see the absolute streaming rate above; Redis is measured on the "
        "same machine in the same run"
    ),
    "Unary 1,000 hashes, idle server: p99": (
        "why: the slowest calls carry a hit, and their audit entry's fsync "
        "waits on the disk (the latency table's idle-no-hits rows show the "
        "same calls without it)"
    ),
    "Unary 1,000 hashes, idle server: p50 < 1 ms (0.1% hits)": (
        "why: most of these calls carry a hit, whose audit entry is committed "
        "with fsync (LMDB, 0.25-0.5 ms on this disk) before the reply leaves, "
        "on top of gRPC's own round trip (the echo figure)"
    ),
}


def _with_why(verdict: Verdict) -> Verdict:
    if verdict.met is not False:
        return verdict
    for start, why in _WHY_MISSED.items():
        if verdict.target.startswith(start):
            return _with_detail(verdict, f"; {why}")
    return verdict


def _with_detail(verdict: Verdict, more: str) -> Verdict:
    return Verdict(verdict.target, verdict.measured, verdict.met, verdict.detail + more)


def _at_least(target: str, measured: float | None, goal: float, unit: str) -> Verdict:
    if measured is None:
        return Verdict(target, "not measured", None, "")
    shown = f"{measured:.2f}{unit}"
    if measured >= goal:
        return Verdict(target, shown, True, f"{(measured / goal - 1) * 100:.0f}% above")
    short = goal - measured
    return Verdict(
        target,
        shown,
        False,
        f"missed by {short:.2f}{unit} ({short / goal * 100:.0f}% short)",
    )


def _at_most(target: str, measured: float | None, limit: float, unit: str) -> Verdict:
    if measured is None:
        return Verdict(target, "not measured", None, "")
    shown = f"{measured:.3g}{unit}"
    if measured <= limit:
        return Verdict(
            target, shown, True, f"{(1 - measured / limit) * 100:.0f}% below"
        )
    over = measured - limit
    return Verdict(
        target,
        shown,
        False,
        f"missed by {over:.3g}{unit} ({over / limit * 100:.0f}% over)",
    )


def _core(sized: SizeResults) -> Verdict:
    best = best_rate(sized, ["core.find.b10000", "core.find.b100000"])
    verdict = _at_least(
        "Lookup core in-process >= 25 Mhash/s per core, exact",
        best[1] if best else None,
        25.0,
        " Mhash/s",
    )
    if best is None:
        return verdict
    value = sized.rates[best[0]]
    exact = isinstance(value, Throughput) and value.is_exact
    met = verdict.met and exact
    detail = f"{verdict.detail}; {best[0]}; {'exact' if exact else 'NOT exact'}"
    return Verdict(verdict.target, verdict.measured, met, detail)


def _end_to_end(sized: SizeResults) -> list[Verdict]:
    best = best_rate(sized, stream_names(sized))
    rate = best[1] if best else None
    where = f"; {best[0]}" if best else ""
    absolute = _at_least(
        "End to end streaming (10k-100k batches) >= 20 Mhash/s", rate, 20.0, " Mhash/s"
    )
    verdicts = [
        Verdict(
            absolute.target, absolute.measured, absolute.met, absolute.detail + where
        )
    ]
    for peer, name, factor in (
        ("Redis", "redis", 15.0),
        ("a Python set", "set.prebuilt", 4.0),
    ):
        peer_rate = rate_of(sized, name)
        ratio = rate / peer_rate if rate and peer_rate else None
        verdicts.append(
            _at_least(f"End to end streaming >= {factor:g}x {peer}", ratio, factor, "x")
        )
    sliced = rate_of(sized, "set.sliced")
    if rate and sliced:
        last = verdicts[-1]
        detail = f"{last.detail}; {rate / sliced:.1f}x a set that slices packed batches"
        verdicts[-1] = Verdict(last.target, last.measured, last.met, detail)
    return verdicts


def _latency(sized: SizeResults) -> list[Verdict]:
    idle = sized.latency.get("w1.idle") or sized.latency.get("w2.idle")
    p50 = None if idle is None or isinstance(idle, Skipped) else idle.p50_ms
    p99 = None if idle is None or isinstance(idle, Skipped) else idle.p99_ms
    loaded = [
        value
        for key, value in sized.latency.items()
        if key.endswith(".loaded") and not isinstance(value, Skipped)
    ]
    reported = Verdict(
        "Latency under a steady load of half the peak: reported",
        "reported" if loaded else "not measured",
        bool(loaded) or None,
        "; ".join(_loaded_summary(v) for v in loaded),
    )
    misses = sized.latency.get("w1.idle-no-hits")
    misses_p50 = None if not isinstance(misses, Latency) else misses.p50_ms
    echo = sized.latency.get("echo.idle")
    floor = (
        f"; gRPC alone (echo): p50 {echo.p50_ms:.2f} ms"
        if isinstance(echo, Latency)
        else ""
    )
    with_hits = _at_most(
        "Unary 1,000 hashes, idle server: p50 < 1 ms (0.1% hits)", p50, 1.0, " ms"
    )
    without_hits = _at_most(
        "Unary 1,000 hashes, idle server: p50 < 1 ms (no hits)", misses_p50, 1.0, " ms"
    )
    return [
        _with_detail(with_hits, floor),
        _with_detail(without_hits, floor),
        _at_most("Unary 1,000 hashes, idle server: p99 < 3 ms", p99, 3.0, " ms"),
        reported,
    ]


def _loaded_summary(latency: Latency) -> str:
    return (
        f"p50 {latency.p50_ms:.2f} ms, p99 {latency.p99_ms:.2f} ms "
        f"at {latency.load_mhash_per_second:.1f} Mhash/s"
    )


def _private_memory(sized: SizeResults) -> Verdict:
    # With two workers the table's pages are mapped twice, so they count as
    # shared; a lone worker's mapped pages count as private (see MemoryUse).
    key = "w2" if sized.memory.workers.get("w2") else "w1"
    uses = sized.memory.workers.get(key, [])
    worst = max((u.private for u in uses), default=None)
    verdict = _at_most(
        "Private memory of each worker < 100 MiB",
        worst / _MIB if worst is not None else None,
        100.0,
        " MiB",
    )
    anonymous = max((u.anonymous for u in uses), default=0) / _MIB
    detail = f"{verdict.detail}; {key}, largest worker; anonymous {anonymous:.0f} MiB"
    return Verdict(verdict.target, verdict.measured, verdict.met, detail)


def _disk(sized: SizeResults) -> Verdict:
    disk = sized.memory.disk_bytes
    ratio = disk / sized.memory.raw_bytes if disk and sized.memory.raw_bytes else None
    return _at_most("On disk <= 1.2x the raw hash bytes", ratio, 1.2, "x")


def _cold_start(sized: SizeResults) -> Verdict:
    seconds = sized.cold_start_seconds
    value = (
        None
        if isinstance(seconds, Skipped) or not seconds
        else sorted(seconds)[len(seconds) // 2]
    )
    return _at_most("Cold start to the first answer < 0.5 s", value, 0.5, " s")


def _import(sized: SizeResults) -> Verdict:
    seconds = sized.import_seconds
    value = None if isinstance(seconds, Skipped) else seconds
    verdict = _at_most(
        f"Import of {sized.size / 1e6:g}M hex lines < 30 s", value, 30.0, " s"
    )
    return verdict


def _delta(sized: SizeResults) -> Verdict:
    delta = sized.delta
    value = None if isinstance(delta, Skipped) else delta.live_seconds
    return _at_most(
        "(issue 5) A delta of 10,000 hashes hits on a running server < 5 s",
        value,
        5.0,
        " s",
    )


def _scaling(at_20m: SizeResults, at_100m: SizeResults) -> list[Verdict]:
    verdicts = []
    pairs = (
        ("lookup core", ["core.find.b10000", "core.find.b100000"]),
        ("end to end streaming", stream_names(at_20m)),
    )
    for label, names in pairs:
        small = best_rate(at_20m, names)
        large = best_rate(at_100m, names)
        slowdown = small[1] / large[1] if small and large and large[1] else None
        verdicts.append(
            _at_most(
                f"100M: per-hash cost of the {label} within 2x of 20M",
                slowdown,
                2.0,
                "x",
            )
        )
    return verdicts
