"""The real server in-process on an ephemeral port, over a real LMDB directory."""

from __future__ import annotations

import queue
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from prometheus_client import CollectorRegistry

from hashcheck.v1 import hashcheck_pb2, hashcheck_pb2_grpc
from hashcheck_server.server import RunningServer, ServerConfig, start_server
from hashcheck_server.store import HashStore
from synthetic import md5_entries, random_hashes

MD5 = hashcheck_pb2.ALGORITHM_MD5


def _check(
    stub: hashcheck_pb2_grpc.HashCheckStub, batch: np.ndarray, **fields: object
) -> hashcheck_pb2.CheckReply:
    request = hashcheck_pb2.CheckRequest(
        algorithm=MD5, hashes=batch.tobytes(), **fields
    )
    reply: hashcheck_pb2.CheckReply = stub.Check(request)
    return reply


def test_check_names_hits_by_position(
    stub: hashcheck_pb2_grpc.HashCheckStub, police_hashes: np.ndarray
) -> None:
    batch = np.concatenate(
        [random_hashes(3, seed=42), police_hashes[7:9], random_hashes(2, seed=43)]
    )

    reply = _check(stub, batch, sequence=5)

    assert (reply.sequence, reply.generation, reply.checked) == (5, 1, 7)
    assert list(reply.hit_positions) == [3, 4]
    assert list(reply.hit_provenances) == [0, 0]
    (provenance,) = reply.provenances
    assert [(m.list, m.category) for m in provenance.lists] == [("police", "A1")]


def test_check_misses_cost_nothing(stub: hashcheck_pb2_grpc.HashCheckStub) -> None:
    reply = _check(stub, random_hashes(10_000, seed=44))

    assert reply.checked == 10_000
    assert not reply.hit_positions and not reply.provenances


def test_check_empty_batch(stub: hashcheck_pb2_grpc.HashCheckStub) -> None:
    reply = _check(stub, np.empty((0, 16), dtype=np.uint8))

    assert reply.checked == 0 and not reply.hit_positions


def test_check_all_hits(
    stub: hashcheck_pb2_grpc.HashCheckStub, police_hashes: np.ndarray
) -> None:
    reply = _check(stub, police_hashes)

    assert list(reply.hit_positions) == list(range(len(police_hashes)))


@pytest.mark.parametrize(
    ("algorithm", "payload", "fragment"),
    [
        pytest.param(MD5, b"x" * 17, "not a multiple", id="width"),
        pytest.param(
            hashcheck_pb2.ALGORITHM_SHA1, b"x" * 16, "not a multiple", id="sha1-width"
        ),
        pytest.param(
            hashcheck_pb2.ALGORITHM_UNSPECIFIED,
            b"x" * 16,
            "Unknown algorithm",
            id="unspecified",
        ),
        pytest.param(99, b"x" * 16, "Unknown algorithm", id="unknown"),
        pytest.param(
            hashcheck_pb2.ALGORITHM_PDQ, b"x" * 33, "not a multiple", id="pdq-width"
        ),
        pytest.param(MD5, b"x" * 16 * 50_001, "at most 50000", id="too-large"),
    ],
)
def test_check_bad_request_is_invalid_argument(
    stub: hashcheck_pb2_grpc.HashCheckStub,
    algorithm: int,
    payload: bytes,
    fragment: str,
) -> None:
    request = hashcheck_pb2.CheckRequest(algorithm=algorithm, hashes=payload)  # type: ignore[arg-type]

    with pytest.raises(grpc.RpcError) as refused:
        stub.Check(request)

    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert fragment in refused.value.details()
    assert _check(stub, random_hashes(1)).checked == 1


def test_stream_replies_in_order_with_sequences(
    stub: hashcheck_pb2_grpc.HashCheckStub, police_hashes: np.ndarray
) -> None:
    batches = [
        np.concatenate([random_hashes(100, seed=100 + s), police_hashes[s : s + 1]])
        for s in range(50)
    ]
    requests = (
        hashcheck_pb2.CheckRequest(algorithm=MD5, hashes=b.tobytes(), sequence=1000 + n)
        for n, b in enumerate(batches)
    )

    replies = list(stub.CheckStream(requests))

    assert [r.sequence for r in replies] == [1000 + n for n in range(50)]
    assert all(list(r.hit_positions) == [100] for r in replies)


def test_stream_bad_batch_ends_stream_with_invalid_argument(
    stub: hashcheck_pb2_grpc.HashCheckStub,
) -> None:
    requests = iter(
        [
            hashcheck_pb2.CheckRequest(algorithm=MD5, hashes=bytes(16), sequence=1),
            hashcheck_pb2.CheckRequest(algorithm=MD5, hashes=bytes(15), sequence=2),
        ]
    )
    replies = stub.CheckStream(requests)

    assert next(replies).sequence == 1
    with pytest.raises(grpc.RpcError) as refused:
        next(replies)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_stream_client_going_away_leaves_server_serving(
    server: RunningServer,
    stub: hashcheck_pb2_grpc.HashCheckStub,
    caplog: pytest.LogCaptureFixture,
) -> None:
    def endless() -> object:
        while True:
            yield hashcheck_pb2.CheckRequest(algorithm=MD5, hashes=bytes(16 * 1000))

    call = stub.CheckStream(endless())
    next(call)
    call.cancel()
    time.sleep(0.2)

    assert _check(stub, random_hashes(5)).checked == 5
    assert not [r for r in caplog.records if r.levelname in ("ERROR", "CRITICAL")]


def test_info_reports_generation_and_counts(
    stub: hashcheck_pb2_grpc.HashCheckStub,
) -> None:
    info = stub.GetInfo(hashcheck_pb2.GetInfoRequest())

    assert info.generation == 1
    counts = {
        a.algorithm: a.hash_count for a in info.algorithms if a.HasField("hash_count")
    }
    assert counts[MD5] == 5_000
    assert {a.algorithm: a.width for a in info.algorithms}[
        hashcheck_pb2.ALGORITHM_SHA256
    ] == 32


def test_health_serving_and_reflection_lists_services(server: RunningServer) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        status = health.Check(
            health_pb2.HealthCheckRequest(service="hashcheck.v1.HashCheck")
        ).status
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        (answer,) = list(reflection.ServerReflectionInfo(iter([request])))

    assert status == health_pb2.HealthCheckResponse.SERVING
    names = {service.name for service in answer.list_services_response.service}
    assert {"hashcheck.v1.HashCheck", "grpc.health.v1.Health"} <= names


def test_import_while_serving_switches_without_failures(
    server: RunningServer,
    stub: hashcheck_pb2_grpc.HashCheckStub,
    police_hashes: np.ndarray,
) -> None:
    fresh = random_hashes(2_000, seed=77)
    batch = np.concatenate([police_hashes[:500], fresh[:500]])
    failures: list[Exception] = []
    answered = 0
    stop = threading.Event()

    def keep_checking() -> None:
        nonlocal answered
        while not stop.is_set():
            try:
                reply = _check(stub, batch)
                assert len(reply.hit_positions) in (500, 1000)
                answered += 1
            except Exception as error:  # noqa: BLE001 - every failure is the finding
                failures.append(error)

    checkers = [threading.Thread(target=keep_checking) for _ in range(3)]
    for checker in checkers:
        checker.start()
    store = HashStore(server.environment)
    for round_ in range(3):
        store.import_entries(f"hotline-{round_}", [md5_entries(fresh)])
    deadline = time.monotonic() + 5
    while _check(stub, fresh[:1]).generation != 4 and time.monotonic() < deadline:
        time.sleep(0.02)
    stop.set()
    for checker in checkers:
        checker.join()

    assert failures == []
    assert answered > 0
    assert len(_check(stub, batch).hit_positions) == 1000


def test_stop_drains_calls_in_flight(
    store_with_police: Path, police_hashes: np.ndarray
) -> None:
    running = start_server(
        ServerConfig(data=store_with_police, listen="127.0.0.1:0"), CollectorRegistry()
    )
    channel = grpc.insecure_channel(f"127.0.0.1:{running.port}")
    stub = hashcheck_pb2_grpc.HashCheckStub(channel)
    outbox: queue.Queue[hashcheck_pb2.CheckRequest | None] = queue.Queue()
    replies = stub.CheckStream(iter(outbox.get, None))
    outbox.put(
        hashcheck_pb2.CheckRequest(algorithm=MD5, hashes=police_hashes.tobytes())
    )
    next(replies)  # the stream is now surely in flight

    draining = threading.Thread(target=running.stop, kwargs={"grace_seconds": 5})
    draining.start()
    time.sleep(0.2)
    outbox.put(
        hashcheck_pb2.CheckRequest(algorithm=MD5, hashes=police_hashes.tobytes())
    )
    outbox.put(None)

    assert len(next(replies).hit_positions) == len(police_hashes)
    with pytest.raises(grpc.RpcError) as refused:
        _check(stub, police_hashes[:1])
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    draining.join()
    channel.close()


def test_stop_from_several_signals_drains_once(
    store_with_police: Path, caplog: pytest.LogCaptureFixture
) -> None:
    running = start_server(
        ServerConfig(data=store_with_police, listen="127.0.0.1:0"), CollectorRegistry()
    )
    drains = [
        threading.Thread(target=running.stop, kwargs={"grace_seconds": 1})
        for _ in range(3)
    ]

    with caplog.at_level("INFO", logger="hashcheck_server.server"):
        for drain in drains:
            drain.start()
        for drain in drains:
            drain.join()

    messages = [record.getMessage() for record in caplog.records]
    assert messages.count("stopped") == 1
    assert sum(message.startswith("draining") for message in messages) == 1


def test_metrics_count_hashes_and_hits(
    server: RunningServer,
    stub: hashcheck_pb2_grpc.HashCheckStub,
    police_hashes: np.ndarray,
) -> None:
    _check(stub, np.concatenate([police_hashes[:3], random_hashes(7, seed=5)]))

    value = server.registry.get_sample_value
    assert value("hashcheck_hashes_checked_total", {"algorithm": "md5"}) == 10
    assert value("hashcheck_hits_total", {"algorithm": "md5", "list": "police"}) == 3
    assert value("hashcheck_requests_total", {"method": "Check", "code": "OK"}) == 1
    assert value("hashcheck_generation") == 1
    assert value("hashcheck_table_hashes", {"algorithm": "md5"}) == 5_000


def test_import_by_another_process_becomes_visible(
    server: RunningServer,
    stub: hashcheck_pb2_grpc.HashCheckStub,
    store_with_police: Path,
    tmp_path: Path,
) -> None:
    fresh = random_hashes(100, seed=99)
    listing = tmp_path / "hotline.txt"
    listing.write_text("\n".join(row.tobytes().hex() for row in fresh) + "\n")
    before = _check(stub, fresh)

    imported = subprocess.run(
        [
            str(Path(sys.executable).parent / "hashcheck-server"),
            "import",
            "--data",
            str(store_with_police),
            "--list",
            "hotline",
            str(listing),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    deadline = time.monotonic() + 5
    after = _check(stub, fresh)
    while not after.hit_positions and time.monotonic() < deadline:
        time.sleep(0.05)
        after = _check(stub, fresh)

    assert imported.returncode == 0, imported.stderr
    assert not before.hit_positions
    assert list(after.hit_positions) == list(range(100))
    assert after.generation == before.generation + 1
