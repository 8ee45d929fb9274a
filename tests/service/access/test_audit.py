"""The audit: every hit recorded and exported; misses nowhere, on disk or in logs."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import threading
import time
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

import grpc
import lmdb
import numpy as np
import pytest

from hashcheck._algorithms import Algorithm
from hashcheck.v1 import hashcheck_pb2, hashcheck_pb2_grpc
from hashcheck_server.audit import AuditEntry, AuditLog, records_for_hits
from hashcheck_server.caller import Caller
from hashcheck_server.generation import ListMatch, TableHits
from hashcheck_server.server import RunningServer
from hashcheck_server.tenants import Tenant
from tenancy import ListHashes, as_key, check, serve

SERVER_CLI = str(Path(sys.executable).parent / "hashcheck-server")


def _run(*arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [SERVER_CLI, "--log-format", "text", *arguments],
        capture_output=True,
        text=True,
        timeout=60,
    )


def _export(data: Path, *options: str) -> list[dict[str, object]]:
    result = _run("audit", "export", "--data", str(data), *options)
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


def test_every_hit_is_in_the_audit_export(
    secured: RunningServer,
    secured_stub: hashcheck_pb2_grpc.HashCheckStub,
    tenant_store: Path,
    tenant_keys: dict[str, str],
    list_hashes: ListHashes,
) -> None:
    started = time.time()
    batch = np.concatenate([list_hashes.both[:2], list_hashes.misses(5)])
    check(secured_stub, batch, tenant_keys["acme"])
    secured_stub.Check(
        hashcheck_pb2.CheckRequest(
            algorithm=hashcheck_pb2.ALGORITHM_MD5, hashes=batch.tobytes()
        ),
        metadata=(*as_key(tenant_keys["beta"]), ("x-request-id", "upload-42")),
    )
    check(secured_stub, list_hashes.police_b2[:1], tenant_keys["beta"])  # a miss

    everything = _export(tenant_store)
    beta_only = _export(tenant_store, "--tenant", "beta")
    later = _export(tenant_store, "--since", "2999-01-01T00:00:00Z")

    assert sorted((e["tenant"], e["hash"]) for e in everything) == sorted(
        (tenant, row.tobytes().hex())
        for tenant in ("acme", "beta")
        for row in list_hashes.both[:2]
    )
    first = everything[0]
    assert set(first) >= {"time", "tenant", "hash", "algorithm", "lists"}
    assert first["algorithm"] == "md5" and first["lists"] == ["hotline", "police"]
    assert str(first["peer"]).startswith("ipv4:127.0.0.1:")
    assert time.strptime(str(first["time"])[:19], "%Y-%m-%dT%H:%M:%S")
    assert all(e["time"] >= _iso_floor(started) for e in everything)
    # beta sees hotline only, and its audit says exactly what it was shown.
    assert {e["request_id"] for e in beta_only} == {"upload-42"}
    assert all(e["lists"] == ["hotline"] for e in beta_only)
    assert later == []


def test_no_miss_is_stored_or_logged_anywhere(
    tmp_path: Path,
    tenant_store: Path,
    tenant_keys: dict[str, str],
    list_hashes: ListHashes,
    caplog: pytest.LogCaptureFixture,
) -> None:
    misses = list_hashes.misses(2_000, seed=4242)
    caplog.set_level(logging.DEBUG)
    running = serve(tenant_store)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            stub = hashcheck_pb2_grpc.HashCheckStub(channel)
            for name in ("acme", "beta", "gamma"):
                mixed = np.concatenate([misses[:1000], list_hashes.both[:3]])
                check(stub, mixed, tenant_keys[name])
                requests = (
                    hashcheck_pb2.CheckRequest(
                        algorithm=hashcheck_pb2.ALGORITHM_MD5,
                        hashes=part.tobytes(),
                        sequence=n,
                    )
                    for n, part in enumerate(np.split(misses[1000:], 10))
                )
                list(stub.CheckStream(requests, metadata=as_key(tenant_keys[name])))
            # A refused call carries misses too; they must not leak either.
            with pytest.raises(grpc.RpcError):
                check(stub, misses[:5], "wrong-key")
    finally:
        running.stop(grace_seconds=1.0)

    stored = b"".join(path.read_bytes() for path in _files(tmp_path))
    logged = caplog.text.encode()
    assert b"audit" in b" ".join(str(p).encode() for p in _files(tmp_path))
    for row in misses:
        raw = row.tobytes()
        for form in (raw, raw.hex().encode(), raw.hex().upper().encode()):
            assert form not in stored
            assert form not in logged
    # The hits themselves are recorded (so the scan above looked at the audit).
    assert list_hashes.both[0].tobytes().hex().encode() in stored


def test_audit_prune_removes_old_entries(tmp_path: Path) -> None:
    audit = AuditLog.open(tmp_path / "audit")
    now = time.time()
    audit.record([_entry(now - 40 * 86400, "old"), _entry(now, "new")])
    audit.close()

    pruned = _run("audit", "prune", "--data", str(tmp_path), "--older-than", "30")
    left = _export(tmp_path)

    assert pruned.returncode == 0, pruned.stderr
    assert "pruned 1" in pruned.stdout
    assert [e["hash"] for e in left] == ["new"]


def test_audit_prune_in_chunks_keeps_newer_entries(tmp_path: Path) -> None:
    audit = AuditLog.open(tmp_path / "audit")
    now = time.time()
    audit.record([_entry(now - 1000 + n * 0.01, f"h{n}") for n in range(25_000)])
    audit.record([_entry(now, "kept")])

    removed = audit.prune(now - 1)

    assert removed == 25_000
    assert [e.hash for e in audit.entries()] == ["kept"]
    audit.close()


def test_concurrent_hits_are_all_recorded(tmp_path: Path) -> None:
    audit = AuditLog.open(tmp_path / "audit")
    now = time.time()

    def record(thread: int) -> None:
        for n in range(50):
            audit.record([_entry(now, f"{thread}-{n}-{k}") for k in range(3)])

    workers = [threading.Thread(target=record, args=(t,)) for t in range(8)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()

    recorded = sorted(entry.hash for entry in audit.entries())
    audit.close()
    assert recorded == sorted(
        f"{t}-{n}-{k}" for t in range(8) for n in range(50) for k in range(3)
    )


def test_hits_are_counted_per_tenant(
    secured: RunningServer,
    secured_stub: hashcheck_pb2_grpc.HashCheckStub,
    tenant_keys: dict[str, str],
    list_hashes: ListHashes,
) -> None:
    batch = np.concatenate([list_hashes.police_a1[:4], list_hashes.hotline[:2]])
    check(secured_stub, batch, tenant_keys["acme"])
    check(secured_stub, batch, tenant_keys["beta"])

    value = secured.registry.get_sample_value
    assert value("hashcheck_tenant_hits_total", {"tenant": "acme"}) == 6
    assert value("hashcheck_tenant_hits_total", {"tenant": "beta"}) == 2
    assert value("hashcheck_tenant_hashes_checked_total", {"tenant": "beta"}) == 6


class _FullDisk:
    """An audit environment whose write transactions fail as a full disk's do."""

    def __init__(self, environment: Any) -> None:
        self._environment = environment

    def begin(self, *, write: bool = False, **kwargs: Any) -> Any:
        if write:
            raise lmdb.MapFullError("mdb_txn_commit: MDB_MAP_FULL")
        return self._environment.begin(write=write, **kwargs)

    def close(self) -> None:
        self._environment.close()


@pytest.fixture
def audit_disk_full(secured: RunningServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """The secured server's audit refuses every write, as on a full disk."""
    assert secured.access is not None
    audit = secured.access.audit
    monkeypatch.setattr(audit, "_environment", _FullDisk(audit._environment))


@pytest.mark.usefixtures("audit_disk_full")
def test_hits_that_cannot_be_audited_are_not_reported(
    secured_stub: hashcheck_pb2_grpc.HashCheckStub,
    tenant_keys: dict[str, str],
    list_hashes: ListHashes,
) -> None:
    with pytest.raises(grpc.RpcError) as refused:
        check(secured_stub, list_hashes.hotline[:1], tenant_keys["acme"])
    misses_only = check(secured_stub, list_hashes.misses(3), tenant_keys["acme"])

    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    assert misses_only.checked == 3


@pytest.mark.usefixtures("audit_disk_full")
def test_a_stream_reports_no_hit_it_cannot_audit(
    secured_stub: hashcheck_pb2_grpc.HashCheckStub,
    tenant_keys: dict[str, str],
    list_hashes: ListHashes,
) -> None:
    batches = [list_hashes.misses(4), list_hashes.hotline[:1], list_hashes.misses(4)]
    requests = (
        hashcheck_pb2.CheckRequest(
            algorithm=hashcheck_pb2.ALGORITHM_MD5, hashes=batch.tobytes(), sequence=n
        )
        for n, batch in enumerate(batches)
    )

    replies = secured_stub.CheckStream(requests, metadata=as_key(tenant_keys["acme"]))
    first = next(replies)
    with pytest.raises(grpc.RpcError) as refused:
        next(replies)

    assert (first.sequence, len(first.hit_positions)) == (0, 0)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


def test_an_entry_keeps_every_field_through_json() -> None:
    entry = AuditEntry(
        time=1_765_000_000.25,
        tenant="acme",
        algorithm="pdq",
        hash="ab" * 32,
        lists=(("police", "A1"), ("icse", "baseline")),
        request_id="req-7",
        peer="ipv6:[::1]:5000",
        generation=42,
        sequence=9,
        distance=12,
    )
    exact = replace(entry, algorithm="sha1", hash="ab" * 20, distance=None)

    stored = json.loads(entry.to_json())

    assert set(stored) == {field.name for field in fields(AuditEntry)}
    assert stored["lists"][1] == {"list": "icse", "category": "baseline"}
    assert AuditEntry.from_json(entry.to_json()) == entry
    assert "distance" not in json.loads(exact.to_json())
    assert AuditEntry.from_json(exact.to_json()) == exact


@pytest.mark.parametrize(
    "tenant", ["acme", 'quote " and \\ back', '"hash":"', "ünïcode"], ids=repr
)
def test_records_for_hits_store_what_an_entry_stores(tenant: str) -> None:
    caller = Caller(Tenant(name=tenant), request_id="req-1", peer="ipv4:10.0.0.1:9")
    batch = bytes(range(48))
    hits = TableHits(
        generation=12,
        positions=np.array([0, 2]),
        provenance_of=np.array([1, 0]),
        provenances=(
            (ListMatch("police", "A1"),),
            (ListMatch("icse", "baseline"), ListMatch("police", "B2")),
        ),
    )

    records = records_for_hits(caller, Algorithm.MD5, batch, hits, sequence=5)

    stored = [AuditEntry.from_json(value) for _, value in records]
    assert [entry.hash for entry in stored] == [batch[:16].hex(), batch[32:].hex()]
    assert stored[0].lists == (("icse", "baseline"), ("police", "B2"))
    assert stored[1].lists == (("police", "A1"),)
    assert {
        (e.tenant, e.request_id, e.peer, e.generation, e.sequence) for e in stored
    } == {(tenant, "req-1", "ipv4:10.0.0.1:9", 12, 5)}
    assert all(entry.time == at for entry, (at, _) in zip(stored, records, strict=True))


def test_pdq_records_carry_each_hits_distance() -> None:
    caller = Caller(Tenant(name="acme"), request_id="req-2", peer="ipv4:10.0.0.1:9")
    batch = bytes(range(64))
    hits = TableHits(
        generation=3,
        positions=np.array([0, 0, 1]),
        provenance_of=np.array([0, 0, 0]),
        provenances=((ListMatch("police", "A1"),),),
        distances=np.array([4, 17, 31]),
    )

    records = records_for_hits(caller, Algorithm.PDQ, batch, hits, sequence=2)

    stored = [AuditEntry.from_json(value) for _, value in records]
    assert [(e.hash, e.distance) for e in stored] == [
        (batch[:32].hex(), 4),
        (batch[:32].hex(), 17),
        (batch[32:].hex(), 31),
    ]
    # Byte for byte what an entry with the same fields writes.
    assert records[2][1] == stored[2].to_json()


def test_an_inline_submit_is_durable_when_it_returns(tmp_path: Path) -> None:
    audit = AuditLog.open(tmp_path / "audit")
    queued = [
        audit.submit([(time.time(), _entry(0, f"q{n}").to_json())]) for n in range(50)
    ]
    inline = [
        audit.submit([(time.time(), _entry(0, f"i{n}").to_json())], inline=True)
        for n in range(50)
    ]
    for ticket in queued + inline:
        ticket.wait()

    stored = sorted(entry.hash for entry in audit.entries())
    audit.close()

    assert stored == sorted([f"q{n}" for n in range(50)] + [f"i{n}" for n in range(50)])


def _entry(at: float, hash_hex: str) -> AuditEntry:
    return AuditEntry(
        time=at,
        tenant="acme",
        algorithm="md5",
        hash=hash_hex,
        lists=(("police", "A1"),),
        request_id="r",
        peer="ipv4:127.0.0.1:1",
        generation=1,
    )


def _files(root: Path) -> list[Path]:
    return [path for path in root.rglob("*") if path.is_file()]


def _iso_floor(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(int(seconds)))
