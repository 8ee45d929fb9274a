"""What the figures were measured on: the machine, its load and the versions."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

__all__ = ["describe_machine", "load_average", "others_cpu_cores"]

_PACKAGES = (
    "numpy",
    "grpcio",
    "protobuf",
    "lmdb",
    "pyroaring",
    "redis",
    "hiredis",
    "psycopg",
    "hashcheck",
)


def describe_machine(root: Path) -> dict[str, object]:
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)),
        "memory_gib": round(_mem_total_bytes() / 2**30, 1),
        "kernel": platform.release(),
        "os": _os_name(),
        "python": sys.version.split()[0],
        "packages": {name: _version_of(name) for name in _PACKAGES},
        "source": _source_state(root),
        "load_average_at_start": load_average(),
        "others_cpu_cores_at_start": others_cpu_cores(),
    }


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def others_cpu_cores(seconds: float = 2.0) -> float:
    """Cores kept busy by other work, sampled while this benchmark is idle.

    The load average cannot tell: it counts the benchmark's own clients and
    servers from the minute before. /proc/stat over a pause of our own can.
    """
    busy_before, total_before = _cpu_jiffies()
    time.sleep(seconds)
    busy_after, total_after = _cpu_jiffies()
    elapsed = total_after - total_before
    cores = os.cpu_count() or 1
    return round((busy_after - busy_before) / elapsed * cores, 2) if elapsed else 0.0


def _cpu_jiffies() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs since boot, from /proc/stat."""
    fields = [
        int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    ]
    # user nice system idle iowait irq softirq steal ...; guest time is
    # already part of user, so only the first eight count.
    idle = fields[3] + fields[4]
    total = sum(fields[:8])
    return total - idle, total


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _mem_total_bytes() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) * 1024
    return 0


def _os_name() -> str:
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip('"')
    except OSError:
        pass
    return platform.system()


def _version_of(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _source_state(root: Path) -> str:
    """The commit measured, or a note that the tree has none yet."""
    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown (git not available)"
    if commit.returncode != 0:
        return "working tree without commits"
    suffix = " with uncommitted changes" if dirty.stdout.strip() else ""
    return commit.stdout.strip() + suffix
