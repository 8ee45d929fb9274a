"""Where a server worker's time goes, sampled with py-spy under streaming load.

While the load clients stream batches at full speed, py-spy samples one
worker without stopping it (`--nonblocking`) and counts, for a few frames of
interest, the share of samples in which each is on the stack. Threads that
wait are left out (py-spy's idle filter, plus the threading waits it lets
through), so the shares are of the time the worker's threads were busy.
"""

from __future__ import annotations

import collections
import math
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from hashcheck_bench.e2e import connect_pool, in_flight_for
from hashcheck_bench.load import Job, LoadPool
from hashcheck_bench.servers import ServerHandle

__all__ = ["Profile", "profile_worker"]

#: Frames whose share of the samples is reported, by a part of their name.
FRAMES_OF_INTEREST = {
    "HashCheckServicer._answer": "servicer: one batch, everything below",
    "Generation.check": "Generation.check: lookup and lists",
    "SortedTable.find": "SortedTable.find: the lookup",
    "Generation._attach_provenance": "naming the lists of hits",
    "_reply (": "building the reply message",
    "prometheus_client": "metrics (prometheus_client)",
    "_RequestIterator": "gRPC: receiving requests",
    "_send_response": "gRPC: sending replies",
    "_serve (": "gRPC: completion-queue thread (its polls included)",
}
_TOP_FRAMES = 8
_WAITS = ("Condition.wait (", "Event.wait (", "Thread.join (", "Semaphore.acquire (")
_SAMPLE_RATE = 250


@dataclass(frozen=True)
class Profile:
    batch: int
    seconds: float
    samples: int
    #: Share of samples (0-1) with the frame on the stack, by description.
    shares: dict[str, float]
    #: The frames most often on top of the stack, with their share.
    top_frames: list[tuple[str, float]]
    #: Share of all samples that were threads waiting on a lock or event.
    waiting_share: float = 0.0


def py_spy_command() -> str | None:
    beside_python = Path(sys.executable).with_name("py-spy")
    return str(beside_python) if beside_python.exists() else shutil.which("py-spy")


def profile_worker(
    pool: LoadPool,
    server: ServerHandle,
    batch: int,
    rate_mhash_per_second: float,
    queries: int,
    out: Path,
    seconds: float = 5.0,
) -> Profile:
    """Sample the first worker for `seconds` while the clients stream."""
    py_spy = py_spy_command()
    if py_spy is None:
        raise RuntimeError("py-spy is not installed (benchmarks/requirements.txt)")

    # Enough rounds for the load to outlast the sampling, at the measured rate.
    hashes_needed = (seconds + 3.0) * rate_mhash_per_second * 1e6
    rounds = max(2, math.ceil(hashes_needed / (queries * pool.size)))
    job = Job("stream", batch, in_flight_for(batch), rounds)
    connect_pool(pool, server)
    waiting = pool.submit([job] * pool.size)
    try:
        time.sleep(1.0)
        _record(py_spy, server.serving_pids[0], seconds, out)
    finally:
        pool.collect(waiting)
    return _summarize(out.read_text(), batch, seconds)


def _record(py_spy: str, pid: int, seconds: float, out: Path) -> None:
    command = [
        py_spy,
        "record",
        "--pid",
        str(pid),
        "--duration",
        str(math.ceil(seconds)),
        "--rate",
        str(_SAMPLE_RATE),
        "--format",
        "raw",
        "--nonblocking",
        "--output",
        str(out),
    ]
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=seconds + 60, check=False
    )
    if result.returncode != 0 or not out.exists():
        raise RuntimeError(f"py-spy failed: {result.stderr.strip()[-300:]}")


def _summarize(raw: str, batch: int, seconds: float) -> Profile:
    """Shares of frames from py-spy's raw output: `frame;frame;... count`.

    py-spy's idle filter lets some lock waits through; samples whose top
    frame is a threading wait are counted apart, as waiting, and the shares
    are of the rest.
    """
    on_stack: collections.Counter[str] = collections.Counter()
    on_top: collections.Counter[str] = collections.Counter()
    total = waiting = 0
    for line in raw.splitlines():
        stack, _, count_text = line.strip().rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        if frames[-1].startswith(_WAITS):
            waiting += count
            continue
        total += count
        on_top[_short(frames[-1])] += count
        for needle in FRAMES_OF_INTEREST:
            if any(needle in frame for frame in frames):
                on_stack[needle] += count
    shares = {
        label: on_stack[needle] / total if total else 0.0
        for needle, label in FRAMES_OF_INTEREST.items()
    }
    top = [(frame, n / total) for frame, n in on_top.most_common(_TOP_FRAMES)]
    sampled = total + waiting
    return Profile(
        batch, seconds, total, shares, top, waiting / sampled if sampled else 0.0
    )


def _short(frame: str) -> str:
    """`func (path/to/file.py:12)` as `func (file.py:12)`."""
    name, _, where = frame.partition(" (")
    return f"{name} ({where.rsplit('/', 1)[-1]}" if where else name
