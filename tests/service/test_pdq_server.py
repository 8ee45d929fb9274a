"""PDQ checks through a real server: distances, thresholds, caps and secrecy."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from hashcheck._algorithms import Algorithm
from hashcheck.v1 import hashcheck_pb2, hashcheck_pb2_grpc
from hashcheck_server.cli import _build_parser
from hashcheck_server.config import ConfigError, resolve, server_config
from hashcheck_server.pdq_index import NEAREST_MATCHES
from hashcheck_server.server import RunningServer, ServerConfig, start_server
from hashcheck_server.servicer import CheckPolicy
from hashcheck_server.store import Entries, HashStore
from pdq_oracle import brute_force, flipped, random_pdq
from synthetic import md5_entries, random_hashes

_RNG = np.random.default_rng(31)
KNOWN = np.unique(random_pdq(3_000, _RNG), axis=0)
CAP = 40

PDQ = hashcheck_pb2.ALGORITHM_PDQ


@pytest.fixture
def pdq_server(data_dir: Path) -> Iterator[RunningServer]:
    with HashStore.open(data_dir, create=True) as store:
        store.import_entries(
            "police", [Entries.graded_alike(Algorithm.PDQ, KNOWN, "A1")]
        )
        store.import_entries("hotline", [md5_entries(random_hashes(100), "B")])
    config = ServerConfig(
        data=data_dir,
        listen="127.0.0.1:0",
        reload_interval_seconds=0.05,
        grace_seconds=2.0,
        policy=CheckPolicy(
            max_batch_hashes=10_000, pdq_distance_cap=CAP, pdq_max_batch_hashes=500
        ),
    )
    running = start_server(config, CollectorRegistry())
    yield running
    running.stop(grace_seconds=1.0)


@pytest.fixture
def pdq_stub(pdq_server: RunningServer) -> Iterator[hashcheck_pb2_grpc.HashCheckStub]:
    with grpc.insecure_channel(f"127.0.0.1:{pdq_server.port}") as channel:
        yield hashcheck_pb2_grpc.HashCheckStub(channel)


def _check(
    stub: hashcheck_pb2_grpc.HashCheckStub, queries: np.ndarray, max_distance: int = 0
) -> hashcheck_pb2.CheckReply:
    request = hashcheck_pb2.CheckRequest(
        algorithm=PDQ, hashes=queries.tobytes(), max_distance=max_distance
    )
    reply: hashcheck_pb2.CheckReply = stub.Check(request, timeout=10)
    return reply


def _hits(reply: hashcheck_pb2.CheckReply) -> list[tuple[int, int]]:
    return list(zip(reply.hit_positions, reply.hit_distances, strict=True))


def test_pdq_check_reports_each_near_duplicate_with_its_distance(
    pdq_stub: hashcheck_pb2_grpc.HashCheckStub,
) -> None:
    rng = np.random.default_rng(1)
    picks = KNOWN[:5]
    queries = np.concatenate(
        [
            picks[:1],
            flipped(picks[1:2], 10, rng),
            flipped(picks[2:3], 31, rng),
            flipped(picks[3:4], 32, rng),
            random_pdq(1, rng),
        ]
    )

    reply = _check(pdq_stub, queries)

    assert _hits(reply) == [(0, 0), (1, 10), (2, 31)]
    assert reply.checked == 5
    assert [m.list for m in reply.provenances[0].lists] == ["police"]
    assert reply.provenances[0].lists[0].category == "A1"


def test_pdq_check_takes_a_smaller_distance_and_caps_a_larger_one(
    pdq_stub: hashcheck_pb2_grpc.HashCheckStub,
) -> None:
    rng = np.random.default_rng(2)
    queries = np.concatenate(
        [flipped(KNOWN[i : i + 1], bits, rng) for i, bits in enumerate([5, 12, 40, 41])]
    )

    smaller = _check(pdq_stub, queries, max_distance=10)
    capped = _check(pdq_stub, queries, max_distance=200)

    assert _hits(smaller) == [(0, 5)]
    assert _hits(capped) == [(0, 5), (1, 12), (2, 40)]


def test_pdq_check_equals_brute_force_through_the_server(
    pdq_stub: hashcheck_pb2_grpc.HashCheckStub,
) -> None:
    rng = np.random.default_rng(3)
    picks = KNOWN[rng.integers(0, KNOWN.shape[0], 200)]
    queries = np.concatenate(
        [flipped(picks[i : i + 1], int(rng.integers(0, 45)), rng) for i in range(200)]
        + [random_pdq(100, rng)]
    )

    for threshold in (31, CAP):
        reply = _check(pdq_stub, queries, max_distance=threshold)
        expected = brute_force(queries, KNOWN, threshold)

        assert sorted(_hits(reply)) == [(p, d) for p, d, _ in expected]


def test_pdq_reply_reveals_no_known_hash(
    pdq_stub: hashcheck_pb2_grpc.HashCheckStub,
) -> None:
    rng = np.random.default_rng(4)
    queries = flipped(KNOWN[:50], 8, rng)

    reply = _check(pdq_stub, queries)
    wire = reply.SerializeToString()

    assert len(reply.hit_positions) == 50
    assert not any(known.tobytes() in wire for known in KNOWN[:50])


def test_pdq_check_returns_at_most_the_nearest_matches(
    pdq_server: RunningServer, pdq_stub: hashcheck_pb2_grpc.HashCheckStub
) -> None:
    rng = np.random.default_rng(5)
    centre = random_pdq(1, rng)
    cluster = np.concatenate([flipped(centre, bits, rng) for bits in range(1, 21)])
    store = HashStore(pdq_server.environment)
    store.import_entries("cluster", [Entries.graded_alike(Algorithm.PDQ, cluster)])
    _wait_for_generation(pdq_stub, store.generation().number)

    reply = _check(pdq_stub, centre)

    assert list(reply.hit_positions) == [0] * NEAREST_MATCHES
    assert list(reply.hit_distances) == list(range(1, NEAREST_MATCHES + 1))


def test_pdq_removed_hash_stops_hitting(
    pdq_server: RunningServer, pdq_stub: hashcheck_pb2_grpc.HashCheckStub
) -> None:
    rng = np.random.default_rng(6)
    query = flipped(KNOWN[7:8], 6, rng)
    assert _hits(_check(pdq_stub, query)) == [(0, 6)]

    store = HashStore(pdq_server.environment)
    store.remove_hashes(Algorithm.PDQ, KNOWN[7:8])
    _wait_for_generation(pdq_stub, store.generation().number)

    assert _hits(_check(pdq_stub, query)) == []


def test_pdq_empty_batch_and_ragged_batch(
    pdq_stub: hashcheck_pb2_grpc.HashCheckStub,
) -> None:
    empty = _check(pdq_stub, KNOWN[:0])
    with pytest.raises(grpc.RpcError) as raised:
        pdq_stub.Check(hashcheck_pb2.CheckRequest(algorithm=PDQ, hashes=b"\x00" * 33))

    assert empty.checked == 0 and not empty.hit_positions
    assert raised.value.code() is grpc.StatusCode.INVALID_ARGUMENT


def test_pdq_batch_over_its_own_limit_is_invalid_argument(
    pdq_stub: hashcheck_pb2_grpc.HashCheckStub,
) -> None:
    over = np.zeros((501, 32), dtype=np.uint8)

    with pytest.raises(grpc.RpcError) as raised:
        _check(pdq_stub, over)

    assert raised.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "at most 500" in raised.value.details()
    assert _check(pdq_stub, over[:500]).checked == 500


def test_pdq_and_exact_batches_share_one_stream(
    pdq_stub: hashcheck_pb2_grpc.HashCheckStub,
) -> None:
    rng = np.random.default_rng(7)
    requests = [
        hashcheck_pb2.CheckRequest(
            algorithm=PDQ, hashes=flipped(KNOWN[:2], 3, rng).tobytes(), sequence=1
        ),
        hashcheck_pb2.CheckRequest(
            algorithm=hashcheck_pb2.ALGORITHM_MD5,
            hashes=random_hashes(100)[:3].tobytes(),
            sequence=2,
        ),
    ]

    pdq_reply, md5_reply = list(pdq_stub.CheckStream(iter(requests), timeout=10))

    assert _hits(pdq_reply) == [(0, 3), (1, 3)]
    assert list(md5_reply.hit_positions) == [0, 1, 2]
    assert not md5_reply.hit_distances


def test_info_names_pdq_and_its_distances(
    pdq_stub: hashcheck_pb2_grpc.HashCheckStub,
) -> None:
    info = pdq_stub.GetInfo(hashcheck_pb2.GetInfoRequest(), timeout=10)

    assert PDQ in [entry.algorithm for entry in info.algorithms]
    assert (info.default_max_distance, info.max_distance_cap) == (31, CAP)


def _wait_for_generation(stub: hashcheck_pb2_grpc.HashCheckStub, number: int) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        info = stub.GetInfo(hashcheck_pb2.GetInfoRequest(), timeout=10)
        if info.generation >= number:
            return
        time.sleep(0.02)
    raise AssertionError(f"the server never switched to generation {number}")


@pytest.mark.parametrize(
    ("flags", "default", "cap"),
    [
        ([], 31, 31),
        (["--pdq-max-distance", "40"], 40, 40),
        (["--pdq-max-distance", "40", "--pdq-default-distance", "20"], 20, 40),
    ],
    ids=["defaults", "cap", "default-below-cap"],
)
def test_serve_flags_set_pdq_distances(
    tmp_path: Path, flags: list[str], default: int, cap: int
) -> None:
    args = _build_parser().parse_args(["serve", "--data", str(tmp_path), *flags])

    policy = server_config(resolve(args, {})).policy

    assert (policy.pdq_distance(0), policy.pdq_distance_cap) == (default, cap)
    assert policy.pdq_distance(10) == min(10, cap)
    assert policy.pdq_distance(100) == cap


@pytest.mark.parametrize(
    "flags",
    [
        ["--pdq-max-distance", "65"],
        ["--pdq-max-distance", "20", "--pdq-default-distance", "31"],
    ],
    ids=["cap-too-large", "default-above-cap"],
)
def test_serve_refuses_impossible_pdq_distances(
    tmp_path: Path, flags: list[str]
) -> None:
    args = _build_parser().parse_args(["serve", "--data", str(tmp_path), *flags])

    with pytest.raises(ConfigError, match="pdq"):
        server_config(resolve(args, {}))
