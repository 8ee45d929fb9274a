"""Subprocesses the benchmark starts, and what /proc says about processes.

Every subprocess is started in its own session, so that it and any workers it
forks form one process group, and is registered here; `stop_all` (run at exit,
also after a failure or SIGTERM) ends every group still alive: SIGTERM first,
then SIGKILL after a grace period. Only processes started here are signalled.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "MemoryUse",
    "Spawned",
    "cpu_seconds",
    "descendants",
    "memory_use",
    "spawn",
    "stop_all",
    "wait_until",
]

_STOP_GRACE_SECONDS = 15.0

_running: list[Spawned] = []


class Spawned:
    """A started subprocess with its output going to a log file."""

    def __init__(self, process: subprocess.Popen[bytes], log_path: Path) -> None:
        self.process = process
        self.log_path = log_path

    @property
    def pid(self) -> int:
        return self.process.pid

    def has_exited(self) -> bool:
        return self.process.poll() is not None

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, grace_seconds: float = _STOP_GRACE_SECONDS) -> None:
        """SIGTERM the process group, wait, then SIGKILL whatever is left."""
        if self in _running:
            _running.remove(self)
        if self.process.poll() is None:
            self._signal_group(signal.SIGTERM)
            try:
                self.process.wait(timeout=grace_seconds)
            except subprocess.TimeoutExpired:
                pass
        # Workers forked by the process may outlive it; the group holds them.
        self._signal_group(signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=grace_seconds)

    def _signal_group(self, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signum)


def spawn(
    command: Sequence[str], log_path: Path, env: dict[str, str] | None = None
) -> Spawned:
    """Start `command` in a new session, its output appended to `log_path`."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            list(command),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=env,
        )
    spawned = Spawned(process, log_path)
    _running.append(spawned)
    return spawned


def stop_all() -> None:
    for spawned in list(_running):
        spawned.stop(grace_seconds=5.0)


atexit.register(stop_all)


def descendants(pid: int) -> list[int]:
    """Every living process below `pid`, children first."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            parent = _parent_of(int(entry))
            if parent is not None:
                children.setdefault(parent, []).append(int(entry))
    found: list[int] = []
    frontier = [pid]
    while frontier:
        below = children.get(frontier.pop(), [])
        found.extend(below)
        frontier.extend(below)
    return found


def _parent_of(pid: int) -> int | None:
    fields = _stat_fields(pid)
    return int(fields[1]) if fields else None


def _stat_fields(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name (state is fields[0])."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rindex(")") + 2 :].split()


def cpu_seconds(pids: Sequence[int]) -> float:
    """CPU time the processes' threads have used so far, in seconds.

    Summed from each thread's schedstat (nanoseconds), since the clock ticks
    of /proc/PID/stat are too coarse for passes of a fraction of a second.
    """
    total_ns = 0
    for pid in pids:
        try:
            threads = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for thread in threads:
            try:
                raw = Path(f"/proc/{pid}/task/{thread}/schedstat").read_text()
            except OSError:
                continue
            total_ns += int(raw.split()[0])
    return total_ns / 1e9


@dataclass(frozen=True)
class MemoryUse:
    """One process's memory, from /proc/PID/smaps_rollup, in bytes.

    `private` is Private_Clean + Private_Dirty: pages no other process maps.
    A file page mapped by one process only counts as private too, so the
    table's pages are private to a lone worker and shared between two.
    `anonymous` is the heap and stacks, which no worker can share.
    """

    pid: int
    rss: int
    pss: int
    shared: int
    private: int
    anonymous: int


def memory_use(pid: int) -> MemoryUse | None:
    try:
        lines = Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()
    except OSError:
        return None
    kib: dict[str, int] = {}
    for line in lines[1:]:
        name, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            kib[name.strip()] = int(parts[0])
    return MemoryUse(
        pid=pid,
        rss=kib.get("Rss", 0) * 1024,
        pss=kib.get("Pss", 0) * 1024,
        shared=(kib.get("Shared_Clean", 0) + kib.get("Shared_Dirty", 0)) * 1024,
        private=(kib.get("Private_Clean", 0) + kib.get("Private_Dirty", 0)) * 1024,
        anonymous=kib.get("Anonymous", 0) * 1024,
    )


def wait_until(
    predicate: Callable[[], bool], timeout_seconds: float, step: float = 0.02
) -> bool:
    """Poll `predicate` until it is true or time runs out."""
    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return bool(predicate())
