"""Helpers for the operations tests (tests/ops): stores, server processes, gRPC.

Every hash here is random bytes from a seeded generator; none is the hash of
any real file. Servers listen on loopback only, and every load loop here is
bounded in time.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from hashcheck.v1 import hashcheck_pb2, hashcheck_pb2_grpc
from hashcheck_server.store import HashStore
from synthetic import md5_entries, random_hashes

SERVER_CLI = str(Path(sys.executable).parent / "hashcheck-server")
MD5 = hashcheck_pb2.ALGORITHM_MD5
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        port: int = probe.getsockname()[1]
        return port


def build_store(data: Path, count: int = 5_000, seed: int = 1) -> np.ndarray:
    """A data directory with one list, `police`, of `count` synthetic MD5s."""
    hashes = random_hashes(count, seed=seed)
    with HashStore.open(data, create=True) as store:
        store.import_entries("police", [md5_entries(hashes, "A1")], source="test")
    return hashes


def add_list(data: Path, name: str, hashes: np.ndarray) -> int:
    with HashStore.open(data) as store:
        return store.import_entries(name, [md5_entries(hashes)]).generation


def check(
    stub: hashcheck_pb2_grpc.HashCheckStub, batch: np.ndarray, timeout: float = 10
) -> hashcheck_pb2.CheckReply:
    request = hashcheck_pb2.CheckRequest(algorithm=MD5, hashes=batch.tobytes())
    reply: hashcheck_pb2.CheckReply = stub.Check(request, timeout=timeout)
    return reply


def answers(reply: hashcheck_pb2.CheckReply) -> list[tuple[int, list[str]]]:
    """A reply's hits as (position, sorted list names), generation left out."""
    return [
        (position, sorted(m.list for m in reply.provenances[which].lists))
        for position, which in zip(
            reply.hit_positions, reply.hit_provenances, strict=True
        )
    ]


def health_status(address: str, timeout: float = 2.0) -> int | None:
    """The server's health status, or None when it does not answer."""
    with grpc.insecure_channel(address) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=timeout
            )
        except grpc.RpcError:
            return None
    status: int = reply.status
    return status


def wait_for(condition: object, timeout: float = 30.0, every: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting")
        time.sleep(every)


class ServerProcess:
    """`hashcheck-server serve` in a subprocess, on loopback."""

    def __init__(
        self,
        arguments: Sequence[str],
        address: str,
        log_path: Path,
        env: dict[str, str] | None = None,
    ) -> None:
        self.address = address
        self.log_path = log_path
        self._log = log_path.open("wb")
        self.process = subprocess.Popen(
            [SERVER_CLI, "--log-format", "json", "serve", *arguments],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
        )

    def wait_serving(self, timeout: float = 60.0) -> ServerProcess:
        def serving() -> bool:
            if self.process.poll() is not None:
                raise AssertionError(f"server exited early:\n{self.log()}")
            return health_status(self.address, timeout=1.0) == SERVING

        wait_for(serving, timeout=timeout, every=0.1)
        return self

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 30.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = self.process.wait()
        self._log.close()
        return code

    def kill(self) -> None:
        self.process.kill()
        self.process.wait()
        self._log.close()


def spawn_server(
    servers: list[ServerProcess],
    tmp_path: Path,
    *arguments: str,
    host: str = "127.0.0.1",
    port: int | None = None,
    env: dict[str, str] | None = None,
) -> ServerProcess:
    port = port or free_port(host)
    address = f"{host}:{port}"
    log_path = tmp_path / f"server-{len(servers)}-{port}.log"
    server = ServerProcess(["--listen", address, *arguments], address, log_path, env)
    servers.append(server)
    return server


def metrics_text(port: int, host: str = "127.0.0.1") -> str:
    import urllib.request

    with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=10) as r:
        text: str = r.read().decode()
        return text


def sample_value(text: str, name: str, labels: str = "") -> float | None:
    """The value of `name{labels}` in a metrics exposition, if present."""
    wanted = f"{name}{{{labels}}}" if labels else name
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        key, _, value = line.rpartition(" ")
        if key == wanted:
            return float(value)
    return None
