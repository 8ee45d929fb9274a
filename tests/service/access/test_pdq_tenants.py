"""PDQ through tenants: their lists and categories filter near matches, and
the audit records each near match with its distance.

Every PDQ hash here is seeded random bits, or such a hash with bits flipped;
none is the hash of a real image.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from hashcheck._algorithms import Algorithm
from hashcheck.v1 import hashcheck_pb2, hashcheck_pb2_grpc
from hashcheck_server.server import RunningServer
from hashcheck_server.store import Entries, HashStore
from pdq_oracle import flipped, random_pdq
from tenancy import add_tenants, as_key, hits_of, serve, stub_for

SERVER_CLI = str(Path(sys.executable).parent / "hashcheck-server")
PDQ = hashcheck_pb2.ALGORITHM_PDQ
FLIPPED_BITS = 6

_RNG = np.random.default_rng(2026)
#: `police`: the first 100 graded "A1", the rest "B2"; `hotline`: "baseline".
POLICE = random_pdq(200, _RNG)
HOTLINE = random_pdq(100, _RNG)
#: Near copies of a police A1, a police B2 and a hotline hash, then misses.
QUERIES = np.concatenate(
    [
        flipped(POLICE[[3]], FLIPPED_BITS, _RNG),
        flipped(POLICE[[150]], FLIPPED_BITS, _RNG),
        flipped(HOTLINE[[7]], FLIPPED_BITS, _RNG),
        random_pdq(5, _RNG),
    ]
)
MISSES = QUERIES[3:]


@pytest.fixture
def pdq_keys(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    data = tmp_path / "data"
    police = Entries(
        Algorithm.PDQ,
        POLICE,
        np.array([0] * 100 + [1] * 100, dtype=np.int32),
        ("A1", "B2"),
    )
    with HashStore.open(data, create=True) as store:
        store.import_entries("police", [police], source="test")
        store.import_entries(
            "hotline",
            [Entries.graded_alike(Algorithm.PDQ, HOTLINE, "baseline")],
            source="test",
        )
    return data, add_tenants(data)


@pytest.fixture
def pdq_server(pdq_keys: tuple[Path, dict[str, str]]) -> Iterator[RunningServer]:
    running = serve(pdq_keys[0])
    yield running
    running.stop(grace_seconds=1.0)


@pytest.fixture
def pdq_stub(pdq_server: RunningServer) -> Iterator[hashcheck_pb2_grpc.HashCheckStub]:
    with stub_for(pdq_server) as stub:
        yield stub


def _request(sequence: int = 0) -> hashcheck_pb2.CheckRequest:
    return hashcheck_pb2.CheckRequest(
        algorithm=PDQ, hashes=QUERIES.tobytes(), sequence=sequence
    )


@pytest.mark.parametrize(
    ("tenant", "expected"),
    [
        (
            "acme",
            {
                0: [("police", "A1")],
                1: [("police", "B2")],
                2: [("hotline", "baseline")],
            },
        ),
        ("beta", {2: [("hotline", "baseline")]}),
        ("gamma", {0: [("police", "A1")]}),
    ],
)
def test_a_tenant_sees_only_near_matches_in_its_lists_and_categories(
    pdq_stub: hashcheck_pb2_grpc.HashCheckStub,
    pdq_keys: tuple[Path, dict[str, str]],
    tenant: str,
    expected: dict[int, list[tuple[str, str]]],
) -> None:
    key = as_key(pdq_keys[1][tenant])

    unary = pdq_stub.Check(_request(), metadata=key)
    streamed = list(pdq_stub.CheckStream(iter([_request(sequence=1)]), metadata=key))

    for reply in (unary, *streamed):
        assert hits_of(reply) == expected
        assert list(reply.hit_distances) == [FLIPPED_BITS] * len(expected)


def test_each_pdq_hit_is_audited_with_its_distance_and_no_miss_is(
    pdq_server: RunningServer,
    pdq_stub: hashcheck_pb2_grpc.HashCheckStub,
    pdq_keys: tuple[Path, dict[str, str]],
) -> None:
    keys = pdq_keys[1]

    pdq_stub.Check(_request(), metadata=as_key(keys["gamma"]))
    pdq_stub.Check(_request(), metadata=as_key(keys["beta"]))

    entries = list(pdq_server.access.audit.entries())
    assert sorted(
        (e.tenant, e.algorithm, e.hash, e.lists, e.distance) for e in entries
    ) == [
        ("beta", "pdq", QUERIES[2].tobytes().hex(), (("hotline", "baseline"),), 6),
        ("gamma", "pdq", QUERIES[0].tobytes().hex(), (("police", "A1"),), 6),
    ]
    audited = {entry.hash for entry in entries}
    assert not audited & {row.tobytes().hex() for row in MISSES}
    exported = _export(pdq_keys[0])
    assert [(line["tenant"], line["distance"]) for line in exported] == [
        (entry.tenant, 6) for entry in entries
    ]


def _export(data: Path) -> list[dict[str, object]]:
    result = subprocess.run(
        [SERVER_CLI, "audit", "export", "--data", str(data)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]
