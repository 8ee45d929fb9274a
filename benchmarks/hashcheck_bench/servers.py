"""The servers under test, started as subprocesses: hashcheck-server and the echo.

`hashcheck-server serve` is started through its console script, exactly as an
operator would. Two workers are asked for with `serve --workers 2`; a CLI
that rejects the option is recorded as such, and the two workers are then
emulated by two processes that each run `start_server` with `reuse_port`
(what `--workers` does), so that the figure for two workers still exists and
is labelled for what it is.

A server is ready when every worker holds a listening socket on the port and
a Check is answered.
"""

from __future__ import annotations

import os
import shutil
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from hashcheck.v1 import hashcheck_pb2, hashcheck_pb2_grpc
from hashcheck_bench import procnet
from hashcheck_bench.procs import Spawned, descendants, spawn

__all__ = [
    "BenchError",
    "ServerHandle",
    "free_port",
    "hashcheck_server_command",
    "measure_cold_start",
    "measure_delta",
    "run_import",
    "start_echo",
    "start_hashcheck_server",
]

_READY_TIMEOUT_SECONDS = 120.0
_IMPORT_TIMEOUT_SECONDS = 3600.0
_PROBE_HASHES = 1000


class BenchError(Exception):
    """A step of the benchmark failed; the message says which and why."""


@dataclass
class ServerHandle:
    """A running server under test: where it listens and its worker processes."""

    label: str
    workers: int
    port: int
    processes: list[Spawned]
    serving_pids: list[int] = field(default_factory=list)
    #: Why `--workers` was not used, when the workers are emulated.
    workers_option: str = ""

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        for process in self.processes:
            process.stop()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def hashcheck_server_command() -> list[str]:
    """The `hashcheck-server` console script of this virtual environment."""
    beside_python = Path(sys.executable).with_name("hashcheck-server")
    if beside_python.exists():
        return [str(beside_python)]
    found = shutil.which("hashcheck-server")
    if found is None:
        raise BenchError(
            "hashcheck-server is not installed; run benchmarks/run, which sets up "
            ".venv/ with the project."
        )
    return [found]


def run_import(
    data: Path, hex_file: Path, log_path: Path, list_name: str = "bench"
) -> float:
    """Seconds that `hashcheck-server import` of a hex file takes, start to exit."""
    command = [
        *hashcheck_server_command(),
        "--log-format",
        "text",
        "import",
        "--data",
        str(data),
        "--list",
        list_name,
        "--algorithm",
        "md5",
        str(hex_file),
    ]
    started = time.monotonic()
    process = spawn(command, log_path)
    try:
        code = process.process.wait(timeout=_IMPORT_TIMEOUT_SECONDS)
    except Exception:
        process.stop()
        raise
    seconds = time.monotonic() - started
    process.stop()
    if code != 0:
        raise BenchError(
            f"hashcheck-server import exited with {code}:\n{process.log_tail()}"
        )
    return seconds


def start_hashcheck_server(data: Path, workers: int, log_dir: Path) -> ServerHandle:
    """Start `serve` with `workers` workers (emulated if the CLI lacks --workers)."""
    if workers == 1:
        return _start_serve(data, 1, log_dir, with_option=False)
    try:
        return _start_serve(data, workers, log_dir, with_option=True)
    except _OptionRejected as rejected:
        handle = _start_emulated_workers(data, workers, log_dir)
        handle.workers_option = f"not available ({rejected})"
        return handle


class _OptionRejected(Exception):
    pass


def _serve_command(data: Path, port: int) -> list[str]:
    return [
        *hashcheck_server_command(),
        "--log-format",
        "text",
        "serve",
        "--data",
        str(data),
        "--listen",
        f"127.0.0.1:{port}",
    ]


def _start_serve(
    data: Path, workers: int, log_dir: Path, with_option: bool
) -> ServerHandle:
    port = free_port()
    command = _serve_command(data, port)
    if with_option:
        command += ["--workers", str(workers)]
    process = spawn(command, log_dir / f"serve-{workers}w-{port}.log")
    label = f"{workers} worker{'s' if workers > 1 else ''}"
    if with_option:
        label += f" (serve --workers {workers})"
    handle = ServerHandle(label, workers, port, [process])
    try:
        _wait_ready(handle, root_pids=[process.pid])
    except BenchError:
        process.stop()
        if with_option and "--workers" in process.log_tail():
            raise _OptionRejected(process.log_tail(2).strip()) from None
        raise
    return handle


def _bench_module_env() -> dict[str, str]:
    """The environment for `python -m hashcheck_bench.…`, wherever we run from."""
    env = dict(os.environ)
    here = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (here, env.get("PYTHONPATH")) if p)
    return env


def _start_emulated_workers(data: Path, workers: int, log_dir: Path) -> ServerHandle:
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "hashcheck_bench.reuseport_worker",
        "--data",
        str(data),
        "--listen",
        f"127.0.0.1:{port}",
    ]
    processes = [
        spawn(command, log_dir / f"emulated-worker-{k}-{port}.log", _bench_module_env())
        for k in range(workers)
    ]
    label = f"{workers} workers (emulated: start_server with reuse_port)"
    handle = ServerHandle(label, workers, port, processes)
    try:
        _wait_ready(handle, root_pids=[p.pid for p in processes])
    except BenchError:
        handle.stop()
        raise
    return handle


def start_echo(processes: int, log_dir: Path) -> ServerHandle:
    """The echo servicer (hashcheck_bench.echo) in `processes` processes."""
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "hashcheck_bench.echo",
        "--listen",
        f"127.0.0.1:{port}",
    ]
    spawned = [
        spawn(command, log_dir / f"echo-{k}-{port}.log", _bench_module_env())
        for k in range(processes)
    ]
    handle = ServerHandle(f"echo x{processes}", processes, port, spawned)
    try:
        _wait_ready(handle, root_pids=[p.pid for p in spawned])
    except BenchError:
        handle.stop()
        raise
    return handle


def _wait_ready(handle: ServerHandle, root_pids: list[int]) -> None:
    """Until every worker listens and a Check is answered, or a clear error."""
    deadline = time.monotonic() + _READY_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        exited = [p for p in handle.processes if p.has_exited()]
        if exited:
            raise BenchError(
                f"{handle.label} exited before it was ready:\n{exited[0].log_tail()}"
            )
        pids = _serving_pids(handle.port, root_pids)
        if len(pids) >= handle.workers and answers_check(handle.port):
            handle.serving_pids = sorted(pids)
            return
        time.sleep(0.05)
    raise BenchError(
        f"{handle.label} was not ready within {_READY_TIMEOUT_SECONDS:.0f} s:\n"
        f"{handle.processes[0].log_tail()}"
    )


def _serving_pids(port: int, root_pids: list[int]) -> set[int]:
    """Processes listening on the port; a parent that only forked is left out."""
    tree = list(root_pids)
    for pid in root_pids:
        tree += descendants(pid)
    listening = procnet.listening_pids(port, tree)
    below_roots = listening - set(root_pids)
    # A parent that bound the socket and forked its workers holds the same
    # listening socket without answering on it.
    return (
        below_roots if below_roots and len(listening) > len(below_roots) else listening
    )


def probe_request() -> hashcheck_pb2.CheckRequest:
    """A Check of 1,000 hashes that are all zero bytes but the first."""
    hashes = b"\x01" + bytes(16 * _PROBE_HASHES - 1)
    return hashcheck_pb2.CheckRequest(
        algorithm=hashcheck_pb2.ALGORITHM_MD5, hashes=hashes
    )


def answers_check(port: int, timeout_seconds: float = 2.0) -> bool:
    """Whether a Check to the port is answered within the timeout."""
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = hashcheck_pb2_grpc.HashCheckStub(channel)
        try:
            stub.Check(probe_request(), timeout=timeout_seconds, wait_for_ready=True)
        except grpc.RpcError:
            return False
    return True


def measure_cold_start(data: Path, log_dir: Path) -> float:
    """Seconds from starting `hashcheck-server serve` to its first answered Check."""
    port = free_port()
    command = _serve_command(data, port)
    started = time.monotonic()
    process = spawn(command, log_dir / f"cold-start-{port}.log")
    try:
        _wait_for_port(process, port, started + _READY_TIMEOUT_SECONDS)
        _check_until_answered(process, port, started + _READY_TIMEOUT_SECONDS)
        return time.monotonic() - started
    finally:
        process.stop()


@dataclass(frozen=True)
class DeltaTiming:
    """A daily delta imported beside the table while a server serves it."""

    hashes: int
    #: `hashcheck-server import` of the delta, start to exit.
    import_seconds: float
    #: From the import's start until the running server reports its hashes.
    live_seconds: float


def measure_delta(data: Path, delta: bytes, log_dir: Path) -> DeltaTiming:
    """Import `delta` (packed MD5 hashes) as a new list under a running server.

    The store changes: measure this after everything that reads it.
    """
    hex_file = log_dir / "delta.txt"
    hex_file.write_text(
        "".join(f"{delta[i : i + 16].hex()}\n" for i in range(0, len(delta), 16))
    )
    probe = hashcheck_pb2.CheckRequest(
        algorithm=hashcheck_pb2.ALGORITHM_MD5, hashes=delta[: 16 * _PROBE_HASHES]
    )
    handle = _start_serve(data, 1, log_dir, with_option=False)
    try:
        with grpc.insecure_channel(handle.target) as channel:
            stub = hashcheck_pb2_grpc.HashCheckStub(channel)
            started = time.monotonic()
            imported = run_import(data, hex_file, log_dir / "delta-import.log", "delta")
            while len(stub.Check(probe, timeout=10.0).hit_positions) < _PROBE_HASHES:
                if time.monotonic() - started > _READY_TIMEOUT_SECONDS:
                    raise BenchError("the delta's hashes never hit on the server")
                time.sleep(0.01)
            live = time.monotonic() - started
    finally:
        handle.stop()
        hex_file.unlink(missing_ok=True)
    return DeltaTiming(len(delta) // 16, imported, live)


def _wait_for_port(process: Spawned, port: int, deadline: float) -> None:
    while time.monotonic() < deadline:
        if process.has_exited():
            raise BenchError(f"serve exited during cold start:\n{process.log_tail()}")
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.002)
    raise BenchError(f"serve never listened on {port}:\n{process.log_tail()}")


def _check_until_answered(process: Spawned, port: int, deadline: float) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = hashcheck_pb2_grpc.HashCheckStub(channel)
        request = probe_request()
        while time.monotonic() < deadline:
            try:
                stub.Check(request, timeout=5.0, wait_for_ready=True)
                return
            except grpc.RpcError:
                # UNAVAILABLE until the generation is mapped; ask again.
                if process.has_exited():
                    break
                time.sleep(0.002)
    raise BenchError(f"serve never answered a Check:\n{process.log_tail()}")
