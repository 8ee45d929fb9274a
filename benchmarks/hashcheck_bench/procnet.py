"""Which process owns which end of a loopback TCP connection, from /proc.

With SO_REUSEPORT the kernel hands each new connection to one of the listening
workers by a hash of its addresses, so two connections land on the same worker
half the time. To measure N workers, the load clients check which worker
accepted their connection and reconnect until each worker has its share. A
socket's owner is the process holding a file descriptor for its inode.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

__all__ = ["listening_pids", "peer_owners"]

_ESTABLISHED = "01"
_LISTEN = "0A"


@dataclass(frozen=True)
class _TcpSocket:
    local_port: int
    remote_port: int
    state: str
    inode: int


def _tcp_sockets() -> list[_TcpSocket]:
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            found.append(
                _TcpSocket(
                    local_port=int(fields[1].rsplit(":", 1)[1], 16),
                    remote_port=int(fields[2].rsplit(":", 1)[1], 16),
                    state=fields[3],
                    inode=int(fields[9]),
                )
            )
    return found


def _socket_inodes(pid: int | str) -> set[int]:
    inodes: set[int] = set()
    fd_dir = f"/proc/{pid}/fd"
    try:
        names = os.listdir(fd_dir)
    except OSError:
        return inodes
    for name in names:
        try:
            target = os.readlink(f"{fd_dir}/{name}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(int(target[8:-1]))
    return inodes


def listening_pids(port: int, candidates: Iterable[int]) -> set[int]:
    """The candidate processes that hold a socket listening on `port`."""
    listening = {
        s.inode for s in _tcp_sockets() if s.local_port == port and s.state == _LISTEN
    }
    return {pid for pid in candidates if _socket_inodes(pid) & listening}


def peer_owners(port: int, candidates: Iterable[int]) -> set[int]:
    """The candidates that accepted this process's connections to `port`."""
    sockets = _tcp_sockets()
    mine = _socket_inodes("self")
    my_ports = {
        s.local_port
        for s in sockets
        if s.inode in mine and s.remote_port == port and s.state == _ESTABLISHED
    }
    peer_inodes = {
        s.inode
        for s in sockets
        if s.local_port == port and s.remote_port in my_ports and s.inode
    }
    return {pid for pid in candidates if _socket_inodes(pid) & peer_inodes}
