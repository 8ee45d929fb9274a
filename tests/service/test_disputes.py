"""Disputes: a tenant contests a hit it was told about; operators resolve them.

Every hash is synthetic (tests/synthetic.py, tests/tenancy.py).
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from hashcheck import AsyncClient, InvalidRequest, Receipt
from hashcheck._algorithms import Algorithm
from hashcheck._cli import main as client_main
from hashcheck.v1 import hashcheck_pb2, hashcheck_pb2_grpc
from hashcheck_server.disputes import NO_EVIDENCE_MESSAGE, DisputeDesk, read_disputes
from hashcheck_server.errors import Unsupported
from hashcheck_server.server import RunningServer
from hashcheck_server.servicer import status_for
from hashcheck_server.signing import SigningKey, default_key_path, generate_key_file
from hashcheck_server.withdrawals import audit_scan
from recourse import client_of, hits, json_lines, serve, server_cli, wait_until
from tenancy import ListHashes, add_tenants, build_store, make_list_hashes

MD5 = Algorithm.MD5


@pytest.fixture
def desk(
    tmp_path: Path,
) -> Iterator[tuple[RunningServer, dict[str, str], ListHashes, SigningKey]]:
    """A server with tenants and a signing key, over a fresh store."""
    hashes = make_list_hashes()
    data = tmp_path / "data"
    build_store(data, hashes)
    keys = add_tenants(data)
    key = generate_key_file(default_key_path(data))
    running = serve(data)
    yield running, keys, hashes, key
    running.stop(grace_seconds=1.0)


def _receipt(key: SigningKey, row: np.ndarray, tenant: str) -> Receipt:
    """A receipt signed by the hotline's key, as the server would issue it."""
    body = hashcheck_pb2.ReceiptBody(
        algorithm=hashcheck_pb2.ALGORITHM_MD5,
        hash=row.tobytes(),
        lists=[hashcheck_pb2.ListMatch(list="police", category="A1")],
        generation=2,
        issued_at=time.time(),
        tenant=tenant,
    ).SerializeToString(deterministic=True)
    return Receipt(body, key.sign(body), key.key_id)


def test_dispute_round_trip_through_sdk_and_operator_cli(
    desk: tuple[RunningServer, dict[str, str], ListHashes, SigningKey],
) -> None:
    running, keys, hashes, _ = desk
    assert running.environment is not None
    data = str(running.environment.path)
    disputed = hashes.police_a1[:1]
    with client_of(running, keys["acme"]) as acme:
        assert hits(acme, disputed)
        dispute_id = acme.dispute(disputed[0].tobytes(), "a stock photo of our CMS")
        again = acme.dispute(disputed[0].tobytes().hex(), "still a stock photo")

        async def from_async_client() -> str:
            async with AsyncClient(acme.target, api_key=keys["acme"]) as client:
                return await client.dispute(disputed[0].tobytes(), "once more")

        assert again == asyncio.run(from_async_client()) == dispute_id
        queue = json_lines("disputes", "list", "--data", data, "--open")
        assert [
            (d["id"], d["tenant"], d["hash"], d["evidence"], d["status"]) for d in queue
        ] == [(dispute_id, "acme", disputed[0].tobytes().hex(), "audit", "open")]
        assert queue[0]["reason"] == "a stock photo of our CMS"

        resolved = server_cli(
            "disputes", "resolve", "--data", data, dispute_id,
            "--outcome", "upheld", "--remove", "--note", "benign CMS asset",
        )  # fmt: skip
        assert resolved.returncode == 0, resolved.stderr
        wait_until(lambda: not hits(acme, disputed))
        withdrawn = acme.withdrawals()

    assert "upheld" in resolved.stdout and "removed 1 md5" in resolved.stdout
    assert json_lines("disputes", "list", "--data", data, "--open") == []
    closed = json_lines("disputes", "list", "--data", data)
    assert [(d["status"], d["note"]) for d in closed] == [
        ("upheld", "benign CMS asset")
    ]
    assert [w.hex for w in withdrawn] == [disputed[0].tobytes().hex()]
    twice = server_cli(
        "disputes", "resolve", "--data", data, dispute_id, "--outcome", "rejected"
    )
    assert twice.returncode == 2 and "upheld already" in twice.stderr


def test_a_dispute_of_a_hash_never_reported_reveals_nothing(
    desk: tuple[RunningServer, dict[str, str], ListHashes, SigningKey],
) -> None:
    running, keys, hashes, _ = desk
    with client_of(running, keys["beta"]) as beta:
        assert hits(beta, hashes.hotline[:1])
    listed_unseen = hashes.police_a1[5]  # listed; acme never checked it
    on_no_list = hashes.misses(1)[0]
    told_to_beta = hashes.hotline[0]

    details = set()
    with client_of(running, keys["acme"]) as acme:
        for row in (listed_unseen, on_no_list, told_to_beta):
            with pytest.raises(InvalidRequest) as refused:
                acme.dispute(row.tobytes(), "not ours")
            details.add(refused.value.details)

    assert details == {NO_EVIDENCE_MESSAGE}
    assert running.environment is not None
    assert read_disputes(running.environment) == []


def test_a_valid_receipt_is_evidence_of_a_hit(
    desk: tuple[RunningServer, dict[str, str], ListHashes, SigningKey],
) -> None:
    running, keys, hashes, key = desk
    row, other = hashes.police_a1[7], hashes.police_a1[8]
    receipt = _receipt(key, row, "acme")
    tampered = Receipt(receipt.body, bytes(64), receipt.key_id)

    with client_of(running, keys["acme"]) as acme:
        dispute_id = acme.dispute(row.tobytes(), "our logo", receipt=receipt)
        refusals = []
        for wrong in (tampered, _receipt(key, row, "beta"), receipt):
            disputed = other if wrong is receipt else row
            with pytest.raises(InvalidRequest) as refused:
                acme.dispute(disputed.tobytes(), "our logo", receipt=wrong)
            refusals.append(refused.value.details)

    assert "does not hold" in refusals[0]
    assert "another tenant" in refusals[1]
    assert "another hash" in refusals[2]
    assert running.environment is not None
    stored = read_disputes(running.environment)
    assert [(d.id, d.evidence) for d in stored] == [(dispute_id, "receipt")]
    assert Receipt.from_bytes(base64.b64decode(stored[0].receipt or "")) == receipt


def test_hashcheck_dispute_sends_a_saved_receipt(
    desk: tuple[RunningServer, dict[str, str], ListHashes, SigningKey],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    running, keys, hashes, _ = desk
    server = ["--server", f"127.0.0.1:{running.port}", "--api-key", keys["gamma"]]
    hex_hash = hashes.police_a1[9].tobytes().hex()
    receipts = tmp_path / "receipts.jsonl"

    checked = client_main(["check", *server, "--receipts", str(receipts), hex_hash])
    capsys.readouterr()
    status = client_main(
        ["dispute", *server, hex_hash, "--reason", "a test card image", "--receipts",
         str(receipts)]
    )  # fmt: skip
    printed = json.loads(capsys.readouterr().out)
    missing = client_main(
        ["dispute", *server, "00" * 16, "--reason", "x", "--receipts", str(receipts)]
    )

    assert checked == 1 and status == 0 and missing == 2
    assert printed["hash"] == hex_hash and printed["algorithm"] == "md5"
    assert running.environment is not None
    stored = read_disputes(running.environment)
    assert [(d.id, d.tenant, d.evidence) for d in stored] == [
        (printed["dispute_id"], "gamma", "receipt")
    ]


def test_disputes_that_cannot_be_taken(
    desk: tuple[RunningServer, dict[str, str], ListHashes, SigningKey],
) -> None:
    running, keys, hashes, _ = desk
    with client_of(running, keys["acme"]) as acme:
        assert hits(acme, hashes.police_a1[:1])
        with pytest.raises(InvalidRequest, match="reason is empty"):
            acme.dispute(hashes.police_a1[0].tobytes(), "   ")
    with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
        stub = hashcheck_pb2_grpc.HashCheckStub(channel)
        with pytest.raises(grpc.RpcError) as short:
            stub.Dispute(
                hashcheck_pb2.DisputeRequest(
                    algorithm=hashcheck_pb2.ALGORITHM_MD5, hash=b"x", reason="r"
                ),
                metadata=(("authorization", f"Bearer {keys['acme']}"),),
            )
        with pytest.raises(grpc.RpcError) as anonymous:
            stub.Dispute(hashcheck_pb2.DisputeRequest())
        # Another caller's audit scan is running: come back in a second.
        with audit_scan(), pytest.raises(grpc.RpcError) as busy:
            stub.Dispute(
                hashcheck_pb2.DisputeRequest(
                    algorithm=hashcheck_pb2.ALGORITHM_MD5,
                    hash=hashes.police_a1[0].tobytes(),
                    reason="r",
                ),
                metadata=(("authorization", f"Bearer {keys['acme']}"),),
            )

    assert short.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert anonymous.value.code() is grpc.StatusCode.UNAUTHENTICATED
    assert busy.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert ("retry-after-ms", "1000") in busy.value.trailing_metadata()
    with pytest.raises(Unsupported, match="replica"):
        DisputeDesk(None, None, None).take(hashcheck_pb2.DisputeRequest(), None)


def test_a_server_without_a_desk_refuses_disputes_plainly() -> None:
    status = status_for(Unsupported("This server takes no disputes."))

    assert status.code is grpc.StatusCode.FAILED_PRECONDITION
