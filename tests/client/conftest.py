"""Fixtures for the SDK and CLI tests: an in-memory fake of the HashCheck server.

`FakeHashCheck` implements the hashcheck.v1 service over a Python dict of
known hashes, the way the real server in service/ answers: hits by position,
provenances shared between hits, one reply per stream request in order. It
also checks API keys when given some, and fails calls on demand so that
tests can see each status code reach the SDK.

It runs in a real gRPC server on a free local port, once per test session;
each test gets it reset. All hashes here are synthetic digests of counters.
"""

from __future__ import annotations

import collections
import hashlib
import os
import select
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from hashcheck import Algorithm, Client
from hashcheck.v1 import hashcheck_pb2, hashcheck_pb2_grpc

_WIDTHS = {
    hashcheck_pb2.ALGORITHM_MD5: 16,
    hashcheck_pb2.ALGORITHM_SHA1: 20,
    hashcheck_pb2.ALGORITHM_SHA256: 32,
}

Matches = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Failure:
    """A status the fake ends a call with; `after` replies first on streams."""

    code: grpc.StatusCode
    details: str
    trailing: tuple[tuple[str, str], ...]
    after: int


class FakeHashCheck(hashcheck_pb2_grpc.HashCheckServicer):
    """The HashCheck service over a dict of known hashes, with failures on demand."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        self.known: dict[bytes, Matches] = {}
        self.generation = 7
        self.max_batch_hashes = 100_000
        self.api_keys: set[str] | None = None
        self.show_counts = False
        self.failures: collections.deque[Failure] = collections.deque()
        self.calls: list[str] = []
        self.authorizations: list[str | None] = []
        self.stream_requests = 0
        self.misnumber_replies = False
        self.end_stream_after: int | None = None

    def add(self, hash_bytes: bytes, *matches: tuple[str, str]) -> None:
        """Put a hash on lists, as (list, category) pairs."""
        self.known[hash_bytes] = matches or (("police", "A1"),)

    def fail_next(
        self,
        code: grpc.StatusCode,
        *,
        times: int = 1,
        details: str = "Injected by the test.",
        trailing: tuple[tuple[str, str], ...] = (),
        after: int = 0,
    ) -> None:
        """Fail the next `times` calls with `code`; a stream after `after` replies."""
        failure = Failure(code, details, trailing, after)
        self.failures.extend([failure] * times)

    def Check(
        self, request: hashcheck_pb2.CheckRequest, context: grpc.ServicerContext
    ) -> hashcheck_pb2.CheckReply:
        failure = self._admit("Check", context)
        if failure is not None:
            _abort(context, failure)
        return self._answer(request, context)

    def CheckStream(
        self,
        request_iterator: Iterable[hashcheck_pb2.CheckRequest],
        context: grpc.ServicerContext,
    ) -> Iterator[hashcheck_pb2.CheckReply]:
        failure = self._admit("CheckStream", context)
        for answered, request in enumerate(request_iterator):
            if failure is not None and answered >= failure.after:
                _abort(context, failure)
            if answered == self.end_stream_after:
                return
            with self._lock:
                self.stream_requests += 1
            reply = self._answer(request, context)
            if self.misnumber_replies:
                reply.sequence += 1
            yield reply
        if failure is not None:
            _abort(context, failure)

    def GetInfo(
        self, request: hashcheck_pb2.GetInfoRequest, context: grpc.ServicerContext
    ) -> hashcheck_pb2.Info:
        failure = self._admit("GetInfo", context)
        if failure is not None:
            _abort(context, failure)
        return hashcheck_pb2.Info(
            service_version="0.0.0-fake",
            generation=self.generation,
            generation_committed_at=1_700_000_000.5,
            algorithms=[self._algorithm_info(value) for value in _WIDTHS],
            max_batch_hashes=self.max_batch_hashes,
        )

    def _admit(self, method: str, context: grpc.ServicerContext) -> Failure | None:
        """Record the call, check its key, and take the failure it should end with."""
        authorization = dict(context.invocation_metadata()).get("authorization")
        with self._lock:
            self.calls.append(method)
            self.authorizations.append(
                authorization if isinstance(authorization, str) else None
            )
            failure = self.failures.popleft() if self.failures else None

        if self.api_keys is not None:
            key = str(authorization or "").removeprefix("Bearer ")
            if key not in self.api_keys:
                context.abort(grpc.StatusCode.UNAUTHENTICATED, "Unknown API key.")
        return failure

    def _answer(
        self, request: hashcheck_pb2.CheckRequest, context: grpc.ServicerContext
    ) -> hashcheck_pb2.CheckReply:
        width = _WIDTHS.get(request.algorithm)
        if width is None:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "Unknown algorithm.")
        if len(request.hashes) % width:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "Ragged batch.")
        count = len(request.hashes) // width
        if count > self.max_batch_hashes:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "Batch too large.")

        reply = hashcheck_pb2.CheckReply(
            sequence=request.sequence, generation=self.generation, checked=count
        )
        provenance_index: dict[Matches, int] = {}
        for position in range(count):
            matches = self.known.get(
                request.hashes[position * width : (position + 1) * width]
            )
            if matches is None:
                continue
            if matches not in provenance_index:
                provenance_index[matches] = len(reply.provenances)
                reply.provenances.add().lists.extend(
                    hashcheck_pb2.ListMatch(list=name, category=category)
                    for name, category in matches
                )
            reply.hit_positions.append(position)
            reply.hit_provenances.append(provenance_index[matches])
        return reply

    def _algorithm_info(self, value: int) -> hashcheck_pb2.AlgorithmInfo:
        entry = hashcheck_pb2.AlgorithmInfo(algorithm=value, width=_WIDTHS[value])
        if self.show_counts:
            entry.hash_count = sum(len(key) == _WIDTHS[value] for key in self.known)
        return entry


def _abort(context: grpc.ServicerContext, failure: Failure) -> None:
    if failure.trailing:
        context.set_trailing_metadata(failure.trailing)
    context.abort(failure.code, failure.details)


@dataclass(frozen=True)
class RunningFake:
    servicer: FakeHashCheck
    target: str


def synthetic_hash(algorithm: Algorithm, number: int) -> bytes:
    """A made-up hash of the algorithm's width; the same number, the same hash."""
    digest = hashlib.sha512(f"synthetic hash {number}".encode()).digest()
    return digest[: algorithm.width]


@pytest.fixture
def make_hash() -> Callable[[Algorithm, int], bytes]:
    """`make_hash(algorithm, number)`: a synthetic hash, never a real file's."""
    return synthetic_hash


@pytest.fixture(scope="session")
def running_fake() -> Iterator[RunningFake]:
    servicer = FakeHashCheck()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
    hashcheck_pb2_grpc.add_HashCheckServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield RunningFake(servicer, f"127.0.0.1:{port}")
    server.stop(None).wait()


@dataclass(frozen=True)
class TLSFiles:
    """A self-signed certificate for localhost, used as CA, server and client."""

    cert: Path
    key: Path


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TLSFiles:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a test certificate")
    directory = tmp_path_factory.mktemp("tls")
    files = TLSFiles(cert=directory / "cert.pem", key=directory / "key.pem")
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "ec",
            "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1",
            "-subj", "/CN=localhost",
            "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
            "-keyout", str(files.key), "-out", str(files.cert),
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return files


@pytest.fixture(scope="session")
def tls_target(running_fake: RunningFake, tls_files: TLSFiles) -> Iterator[str]:
    """A second server for the same fake, requiring TLS with a client certificate."""
    certificate = tls_files.cert.read_bytes()
    credentials = grpc.ssl_server_credentials(
        [(tls_files.key.read_bytes(), certificate)],
        root_certificates=certificate,
        require_client_auth=True,
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    hashcheck_pb2_grpc.add_HashCheckServicer_to_server(running_fake.servicer, server)
    port = server.add_secure_port("127.0.0.1:0", credentials)
    server.start()
    yield f"127.0.0.1:{port}"
    server.stop(None).wait()


@pytest.fixture(autouse=True)
def _no_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep a developer's own server and key out of the tests."""
    monkeypatch.delenv("HASHCHECK_SERVER", raising=False)
    monkeypatch.delenv("HASHCHECK_API_KEY", raising=False)


@pytest.fixture
def fake(running_fake: RunningFake) -> FakeHashCheck:
    """The fake server, reset: no known hashes, no keys, no failures."""
    running_fake.servicer.reset()
    return running_fake.servicer


@pytest.fixture
def target(running_fake: RunningFake, fake: FakeHashCheck) -> str:
    """The address of the (reset) fake server."""
    return running_fake.target


@pytest.fixture
def client(target: str) -> Iterator[Client]:
    with Client(target) as client:
        yield client


CliRunner = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def run_cli() -> CliRunner:
    """`run_cli(*args, stdin=None, env=None)`: the CLI in a child process.

    Environment variables in `env` are added to the test's own environment,
    from which the autouse fixture has removed the developer's settings.
    """

    def run(
        *args: str, stdin: str | None = None, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "hashcheck._cli", *args],
            input=stdin,
            capture_output=True,
            text=True,
            env={**os.environ, **(env or {})},
            timeout=60,
            check=False,
        )

    return run


class LiveCli:
    """The CLI in a child process that the test writes to while it runs."""

    def __init__(self, *args: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "hashcheck._cli", *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self._unread = b""

    def send(self, text: str) -> None:
        """Write to its stdin, which stays open."""
        assert self.process.stdin is not None
        self.process.stdin.write(text.encode())
        self.process.stdin.flush()

    def line_within(self, seconds: float) -> str | None:
        """The next line it prints, or None if none comes within `seconds`."""
        assert self.process.stdout is not None
        deadline = time.monotonic() + seconds
        stdout = self.process.stdout.fileno()
        while b"\n" not in self._unread:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([stdout], [], [], remaining)[0]:
                return None
            piece = os.read(stdout, 65536)
            if not piece:
                return None
            self._unread += piece
        line, _, self._unread = self._unread.partition(b"\n")
        return line.decode()

    def finish(self) -> tuple[int, str]:
        """Close its stdin; its exit status and what is left on stderr."""
        _, stderr = self.process.communicate(timeout=30)
        return self.process.returncode, stderr.decode()

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.communicate()


@pytest.fixture
def live_cli() -> Iterator[Callable[..., LiveCli]]:
    """`live_cli(*args)`: a `LiveCli`, killed at the end if still running."""
    started: list[LiveCli] = []

    def start(*args: str) -> LiveCli:
        started.append(LiveCli(*args))
        return started[-1]

    yield start
    for cli in started:
        cli.kill()
