"""The shape of every figure: passes, their median, and whether answers were exact.

A measurement runs one warm-up run that is thrown away (it pays for page
faults, connection setup and caches), then `passes` timed passes of one or
more runs each. Its figure is the median pass, so one pass slowed by a
neighbour on this shared machine does not move it.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["Pass", "Skipped", "Throughput", "measure_throughput", "median"]

#: The most times one short run is repeated within a pass.
_MAX_REPEATS = 20


@dataclass(frozen=True)
class Pass:
    """One timed pass: how long, how many hashes, how many hits came back."""

    seconds: float
    hashes: int
    hits: int
    #: Anything else worth keeping per pass, e.g. server CPU seconds.
    extra: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Throughput:
    """Hashes answered per second, over the passes of one measurement."""

    passes: list[Pass]
    expected_hits: int
    note: str = ""

    @property
    def rates(self) -> list[float]:
        return [p.hashes / p.seconds for p in self.passes if p.seconds > 0]

    @property
    def mhash_per_second(self) -> float:
        """The median pass, in millions of hashes a second."""
        return median(self.rates) / 1e6

    @property
    def is_exact(self) -> bool:
        """Whether every pass found exactly the hits the queries hold."""
        return all(p.hits == self.expected_hits for p in self.passes)

    def extra_median(self, name: str) -> float | None:
        values = [p.extra[name] for p in self.passes if name in p.extra]
        return median(values) if values else None


@dataclass(frozen=True)
class Skipped:
    """A measurement that could not be taken, and why."""

    reason: str


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def measure_throughput(
    run_once: Callable[[], Pass],
    passes: int,
    expected_hits: int,
    note: str = "",
    min_pass_seconds: float = 0.0,
) -> Throughput:
    """One untimed warm-up run, then `passes` timed passes.

    A run that takes less than `min_pass_seconds` is repeated within each
    pass, so that short runs are not timed alone: a pass of a few tens of
    milliseconds would measure the scheduler of this shared machine as much
    as the code. `expected_hits` is per run.
    """
    warmup = run_once()
    repeats = 1
    if 0 < warmup.seconds < min_pass_seconds:
        repeats = min(_MAX_REPEATS, math.ceil(min_pass_seconds / warmup.seconds))
    timed = [_repeated(run_once, repeats) for _ in range(passes)]
    return Throughput(timed, expected_hits * repeats, note)


def _repeated(run_once: Callable[[], Pass], repeats: int) -> Pass:
    runs = [run_once() for _ in range(repeats)]
    extra: dict[str, float] = {}
    for run in runs:
        for name, value in run.extra.items():
            extra[name] = extra.get(name, 0.0) + value
    return Pass(
        seconds=sum(r.seconds for r in runs),
        hashes=sum(r.hashes for r in runs),
        hits=sum(r.hits for r in runs),
        extra=extra,
    )
