"""The process-wide cap on open streams: unary calls and health still answer.

Every open stream holds one of the server's handler threads; these servers
run with 4 threads, so the cap is 2 streams and 2 threads stay for the rest.
Every call has a deadline, so that a starved server fails the test rather
than hanging it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from prometheus_client import CollectorRegistry

from hashcheck.v1 import hashcheck_pb2, hashcheck_pb2_grpc
from hashcheck_server.access import AccessConfig
from hashcheck_server.server import RunningServer, ServerConfig, start_server
from tenancy import MD5, as_key

DEADLINE_SECONDS = 5.0


def _serve(data: Path, max_open_streams: int | None = None) -> RunningServer:
    config = ServerConfig(
        data=data,
        listen="127.0.0.1:0",
        threads=4,
        max_open_streams=max_open_streams,
        reload_interval_seconds=0.05,
        grace_seconds=1.0,
        access=AccessConfig(audit_retention_days=None),
    )
    return start_server(config, CollectorRegistry())


@pytest.fixture
def capped(store_with_police: Path) -> Iterator[RunningServer]:
    running = _serve(store_with_police)
    yield running
    running.stop(grace_seconds=1.0)


@pytest.fixture
def channel(capped: RunningServer) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(f"127.0.0.1:{capped.port}") as opened:
        yield opened


class _IdleStreams:
    """Streams that send one message, then stay open and idle until closed."""

    def __init__(self) -> None:
        self._closed = threading.Event()
        self._calls: list[grpc.RpcContext] = []

    def requests(self, first: object) -> Iterator[object]:
        yield first
        self._closed.wait(30.0)

    def hold(self, call: object) -> None:
        next(call)  # type: ignore[call-overload]
        self._calls.append(call)  # type: ignore[arg-type]

    def close_one(self) -> None:
        self._calls.pop().cancel()

    def close(self) -> None:
        self._closed.set()
        for call in self._calls:
            call.cancel()


@pytest.fixture
def idle() -> Iterator[_IdleStreams]:
    streams = _IdleStreams()
    yield streams
    streams.close()


def _check_request(hashes: np.ndarray) -> hashcheck_pb2.CheckRequest:
    return hashcheck_pb2.CheckRequest(algorithm=MD5, hashes=hashes.tobytes())


def _hold_check_streams(
    stub: hashcheck_pb2_grpc.HashCheckStub,
    idle: _IdleStreams,
    count: int,
    metadata: tuple[tuple[str, str], ...] | None = None,
) -> None:
    for _ in range(count):
        request = _check_request(np.zeros((1, 16), dtype=np.uint8))
        idle.hold(stub.CheckStream(idle.requests(request), metadata=metadata))


def _stream_refusal(
    stub: hashcheck_pb2_grpc.HashCheckStub,
    metadata: tuple[tuple[str, str], ...] | None = None,
) -> grpc.RpcError:
    request = _check_request(np.zeros((1, 16), dtype=np.uint8))
    with pytest.raises(grpc.RpcError) as refused:
        list(
            stub.CheckStream(
                iter([request]), metadata=metadata, timeout=DEADLINE_SECONDS
            )
        )
    return refused.value


def _wait_until(condition: object, timeout_seconds: float = DEADLINE_SECONDS) -> None:
    deadline = time.monotonic() + timeout_seconds
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError("the condition never held")
        time.sleep(0.02)


def test_open_stream_cap_refuses_the_next_stream_while_check_and_health_answer(
    capped: RunningServer,
    channel: grpc.Channel,
    idle: _IdleStreams,
    police_hashes: np.ndarray,
) -> None:
    stub = hashcheck_pb2_grpc.HashCheckStub(channel)
    _hold_check_streams(stub, idle, 2)

    refused = _stream_refusal(stub)
    reply = stub.Check(_check_request(police_hashes[:3]), timeout=DEADLINE_SECONDS)
    info = stub.GetInfo(hashcheck_pb2.GetInfoRequest(), timeout=DEADLINE_SECONDS)
    health = health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(), timeout=DEADLINE_SECONDS
    )

    assert refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "holds 2 open streams, its most" in (refused.details() or "")
    assert list(reply.hit_positions) == [0, 1, 2]
    assert info.generation >= 1
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    refusals = capped.registry.get_sample_value(
        "hashcheck_refused_calls_total", {"reason": "resource_exhausted"}
    )
    assert refusals == 1


def test_open_stream_cap_frees_a_slot_when_a_stream_ends(
    capped: RunningServer, channel: grpc.Channel, idle: _IdleStreams
) -> None:
    stub = hashcheck_pb2_grpc.HashCheckStub(channel)
    _hold_check_streams(stub, idle, 2)
    assert capped.access is not None
    open_streams = capped.access.interceptor.open_streams

    idle.close_one()
    _wait_until(lambda: open_streams.open_count == 1)
    replies = list(
        stub.CheckStream(
            iter([_check_request(np.zeros((1, 16), dtype=np.uint8))]),
            timeout=DEADLINE_SECONDS,
        )
    )

    assert len(replies) == 1
    _wait_until(lambda: open_streams.open_count == 1)


def test_open_stream_cap_counts_reflection_streams(
    channel: grpc.Channel, idle: _IdleStreams, police_hashes: np.ndarray
) -> None:
    reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
    for _ in range(2):
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        idle.hold(reflection.ServerReflectionInfo(idle.requests(request)))
    stub = hashcheck_pb2_grpc.HashCheckStub(channel)

    refused = _stream_refusal(stub)
    reply = stub.Check(_check_request(police_hashes[:1]), timeout=DEADLINE_SECONDS)

    assert refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert list(reply.hit_positions) == [0]


def test_open_stream_cap_refusal_gives_the_tenant_its_slot_back(
    tenant_store: Path, tenant_keys: dict[str, str], idle: _IdleStreams
) -> None:
    running = _serve(tenant_store, max_open_streams=1)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            stub = hashcheck_pb2_grpc.HashCheckStub(channel)
            _hold_check_streams(stub, idle, 1, as_key(tenant_keys["acme"]))
            # `small` may hold one stream: the process is full, not the tenant.
            refused = _stream_refusal(stub, as_key(tenant_keys["small"]))
            idle.close_one()
            assert running.access is not None
            open_streams = running.access.interceptor.open_streams
            _wait_until(lambda: open_streams.open_count == 0)
            _hold_check_streams(stub, idle, 1, as_key(tenant_keys["small"]))
            idle.close()
    finally:
        running.stop(grace_seconds=1.0)

    assert refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "This server holds 1 open streams" in (refused.details() or "")
