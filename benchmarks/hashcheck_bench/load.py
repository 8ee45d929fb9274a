"""Load clients: spawned processes that drive a server with gRPC calls.

Python's client side runs one thread of Python at a time, so one client process
could not keep two server workers busy; each worker gets its own client
process instead. The processes live for the whole run (spawned, not forked,
since gRPC must not be forked once it has started threads) and take orders
through a pipe:

- `Load(path)`: the queries (a .npy of N x 16 bytes) for the next table size;
- `Connect(...)`: open one connection to the server, reconnecting until it
  lands on the wanted worker (see hashcheck_bench.procnet);
- `Job(...)`: send the queries `rounds` times and report start and end times
  (CLOCK_MONOTONIC is one clock for all processes), hashes, hits and CPU.

Requests are built before a job is timed, as a caller would have its batches
packed already; the timing covers gRPC, the server and reading the replies.
"""

from __future__ import annotations

import collections
import multiprocessing
import threading
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

import grpc
import numpy as np

from hashcheck.v1 import hashcheck_pb2, hashcheck_pb2_grpc
from hashcheck_bench import procnet
from hashcheck_bench.data import WIDTH, split_batches

__all__ = ["Connect", "Job", "JobResult", "Load", "LoadPool"]

#: Connections tried before giving up on reaching one particular worker.
_CONNECT_ATTEMPTS = 40
_CALL_TIMEOUT_SECONDS = 600.0
_REPLY_TIMEOUT_SECONDS = 900.0
_MAX_MESSAGE_BYTES = 64 * 1024 * 1024

_CHANNEL_OPTIONS = [
    # A private subchannel pool makes every channel its own TCP connection;
    # with the shared default a "new" channel would reuse the old connection
    # and so always land on the same worker.
    ("grpc.use_local_subchannel_pool", 1),
    ("grpc.max_receive_message_length", _MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", _MAX_MESSAGE_BYTES),
]


@dataclass(frozen=True)
class Load:
    queries_path: str


@dataclass(frozen=True)
class Connect:
    port: int
    #: The worker this client should reach; None to take whichever answers.
    want_pid: int | None
    candidates: tuple[int, ...]
    #: Connect hashcheck.Client (the SDK) instead of a raw channel.
    sdk: bool = False


@dataclass(frozen=True)
class Job:
    """What to send. `kind` is unary, stream, sdk_batches, sdk_stream or paced."""

    kind: str
    batch: int
    #: Batches unanswered at once; 0 leaves the SDK's default.
    in_flight: int
    rounds: int = 1
    #: For `paced`: hashes a second this client sends, and for how long.
    rate: float = 0.0
    seconds: float = 0.0


@dataclass(frozen=True)
class JobResult:
    started: float
    finished: float
    hashes: int
    hits: int
    cpu_seconds: float


class LoadPool:
    """The client processes, and the orders sent to them."""

    def __init__(self, clients: int) -> None:
        context = multiprocessing.get_context("spawn")
        self._connections: list[Connection] = []
        self._processes: list[BaseProcess] = []
        for number in range(clients):
            ours, theirs = context.Pipe()
            process = context.Process(
                target=client_main,
                args=(theirs,),
                name=f"bench-client-{number}",
                daemon=True,
            )
            process.start()
            theirs.close()
            self._connections.append(ours)
            self._processes.append(process)

    @property
    def size(self) -> int:
        return len(self._processes)

    def broadcast(self, order: Load | Connect | Job) -> list[Any]:
        return self.run([order] * self.size)

    def run(self, orders: list[Load | Connect | Job | None]) -> list[Any]:
        """Send each client its order (None: leave it idle) and gather replies."""
        waiting = self.submit(orders)
        return self.collect(waiting)

    def submit(self, orders: list[Load | Connect | Job | None]) -> list[int]:
        waiting = []
        for number, order in enumerate(orders):
            if order is not None:
                self._connections[number].send(order)
                waiting.append(number)
        return waiting

    def collect(self, waiting: list[int]) -> list[Any]:
        replies = []
        for number in waiting:
            connection = self._connections[number]
            if not connection.poll(_REPLY_TIMEOUT_SECONDS):
                raise TimeoutError(f"load client {number} did not answer in time")
            status, payload = connection.recv()
            if status != "ok":
                raise RuntimeError(f"load client {number} failed:\n{payload}")
            replies.append(payload)
        return replies

    def close(self) -> None:
        for connection in self._connections:
            try:
                connection.send(None)
            except OSError:
                pass
        for process in self._processes:
            process.join(timeout=10)
            if process.is_alive():
                process.terminate()
                process.join(timeout=5)


def client_main(connection: Connection) -> None:
    """The loop of one client process: obey orders until told None."""
    client = _Client()
    try:
        while True:
            order = connection.recv()
            if order is None:
                return
            try:
                connection.send(("ok", client.obey(order)))
            except Exception:
                connection.send(("error", traceback.format_exc()))
    finally:
        client.close()


class _Client:
    def __init__(self) -> None:
        self._packed = b""
        self._requests: dict[int, list[hashcheck_pb2.CheckRequest]] = {}
        self._items: list[bytes] = []
        self._channel: grpc.Channel | None = None
        self._stub: hashcheck_pb2_grpc.HashCheckStub | None = None
        self._sdk: Any = None

    def obey(self, order: Load | Connect | Job) -> object:
        if isinstance(order, Load):
            self._load(order.queries_path)
            return None
        if isinstance(order, Connect):
            return self._connect(order)
        return self._run(order)

    def close(self) -> None:
        if self._channel is not None:
            self._channel.close()
            self._channel = None
        if self._sdk is not None:
            self._sdk.close()
            self._sdk = None

    def _load(self, path: str) -> None:
        self._packed = np.load(path).tobytes()
        self._requests = {}
        self._items = []

    def _requests_of(self, batch: int) -> list[hashcheck_pb2.CheckRequest]:
        if batch not in self._requests:
            self._requests[batch] = [
                hashcheck_pb2.CheckRequest(
                    algorithm=hashcheck_pb2.ALGORITHM_MD5, hashes=chunk, sequence=k
                )
                for k, chunk in enumerate(split_batches(self._packed, batch))
            ]
        return self._requests[batch]

    def _connect(self, order: Connect) -> int:
        """Connect until the wanted worker accepted; returns the worker's pid."""
        self.close()
        for _ in range(_CONNECT_ATTEMPTS):
            self._open(order)
            owners = procnet.peer_owners(order.port, order.candidates)
            if order.want_pid is None or owners == {order.want_pid}:
                return next(iter(owners), -1)
            self.close()
        raise RuntimeError(
            f"no connection reached worker {order.want_pid} in "
            f"{_CONNECT_ATTEMPTS} attempts"
        )

    def _open(self, order: Connect) -> None:
        target = f"127.0.0.1:{order.port}"
        probe = self._packed[: 1000 * WIDTH]
        if order.sdk:
            import hashcheck

            self._sdk = hashcheck.Client(target)
            self._sdk.check_packed(probe, "md5")
            return
        self._channel = grpc.insecure_channel(target, options=_CHANNEL_OPTIONS)
        self._stub = hashcheck_pb2_grpc.HashCheckStub(self._channel)
        request = hashcheck_pb2.CheckRequest(
            algorithm=hashcheck_pb2.ALGORITHM_MD5, hashes=probe
        )
        self._stub.Check(request, timeout=30.0, wait_for_ready=True)

    def _run(self, job: Job) -> JobResult:
        runners = {
            "unary": self._run_unary,
            "stream": self._run_stream,
            "paced": self._run_paced,
            "sdk_batches": self._run_sdk_batches,
            "sdk_stream": self._run_sdk_stream,
        }
        if job.kind not in runners:
            raise ValueError(f"unknown job kind {job.kind!r}")
        if job.kind.startswith("sdk") and not self._items:
            self._items = [
                self._packed[i : i + WIDTH] for i in range(0, len(self._packed), WIDTH)
            ]
        elif not job.kind.startswith("sdk"):
            self._requests_of(job.batch)

        cpu_before = time.process_time()
        started = time.monotonic()
        hashes, hits = runners[job.kind](job)
        finished = time.monotonic()
        cpu = time.process_time() - cpu_before
        return JobResult(started, finished, hashes, hits, cpu)

    def _raw_stub(self) -> hashcheck_pb2_grpc.HashCheckStub:
        if self._stub is None:
            raise RuntimeError("connect a raw channel before a raw job")
        return self._stub

    def _run_unary(self, job: Job) -> tuple[int, int]:
        stub = self._raw_stub()
        pending: collections.deque[tuple[Any, int]] = collections.deque()
        hashes = hits = 0
        for _ in range(job.rounds):
            for request in self._requests_of(job.batch):
                if len(pending) >= job.in_flight:
                    future, size = pending.popleft()
                    hashes, hits = hashes + size, hits + _hits_of(future.result())
                future = stub.Check.future(request, timeout=_CALL_TIMEOUT_SECONDS)
                pending.append((future, len(request.hashes) // WIDTH))
        for future, size in pending:
            hashes, hits = hashes + size, hits + _hits_of(future.result())
        return hashes, hits

    def _run_stream(self, job: Job) -> tuple[int, int]:
        requests = self._requests_of(job.batch) * job.rounds
        return self._stream(iter(requests), job.in_flight)

    def _run_paced(self, job: Job) -> tuple[int, int]:
        return self._stream(self._paced_requests(job), job.in_flight)

    def _paced_requests(self, job: Job) -> Iterator[hashcheck_pb2.CheckRequest]:
        """Batches sent on a fixed schedule: a steady `job.rate` hashes a second."""
        requests = self._requests_of(job.batch)
        interval = job.batch / job.rate
        started = time.monotonic()
        end = started + job.seconds
        for k in range(int(job.seconds / interval) + 1):
            due = started + k * interval
            if due > end:
                return
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            yield requests[k % len(requests)]

    def _stream(
        self, requests: Iterator[hashcheck_pb2.CheckRequest], in_flight: int
    ) -> tuple[int, int]:
        """One CheckStream with at most `in_flight` batches unanswered.

        Hashes are counted from the requests each reply answers (replies come
        in request order), so a reply that omits `checked` counts right too.
        """
        window = threading.Semaphore(in_flight)
        stopped = threading.Event()
        # Appended by gRPC's sending thread, popped here; deque ends are atomic.
        sizes: collections.deque[int] = collections.deque()

        def windowed() -> Iterator[hashcheck_pb2.CheckRequest]:
            for request in requests:
                # Bounded waits, so a failed call cannot leave this thread stuck.
                while not window.acquire(timeout=0.5):
                    if stopped.is_set():
                        return
                if stopped.is_set():
                    return
                sizes.append(len(request.hashes) // WIDTH)
                yield request

        hashes = hits = 0
        call = self._raw_stub().CheckStream(windowed(), timeout=_CALL_TIMEOUT_SECONDS)
        try:
            for reply in call:
                window.release()
                hashes, hits = hashes + sizes.popleft(), hits + _hits_of(reply)
        finally:
            stopped.set()
            call.cancel()
        return hashes, hits

    def _run_sdk_batches(self, job: Job) -> tuple[int, int]:
        import hashcheck

        chunks = split_batches(self._packed, job.batch) * job.rounds
        batches = (hashcheck.Batch(hashcheck.Algorithm.MD5, c, None) for c in chunks)
        options = {"max_in_flight": job.in_flight} if job.in_flight else {}
        hashes = hits = 0
        for result in self._sdk.check_batches(batches, **options):
            hashes, hits = hashes + result.checked, hits + len(result.hits)
        return hashes, hits

    def _run_sdk_stream(self, job: Job) -> tuple[int, int]:
        items = self._items * job.rounds
        options: dict[str, int] = {}
        if job.batch:
            options["batch_size"] = job.batch
        if job.in_flight:
            options["max_in_flight"] = job.in_flight
        hashes = hits = 0
        for result in self._sdk.check_stream(items, "md5", **options):
            hashes, hits = hashes + result.checked, hits + len(result.hits)
        return hashes, hits


def _hits_of(reply: hashcheck_pb2.CheckReply) -> int:
    return len(reply.hit_positions)
