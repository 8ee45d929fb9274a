"""Receipts from the real server, and the signing key and manifest commands.

Every hash is synthetic (tests/synthetic.py); keys are made for each test.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from prometheus_client import CollectorRegistry

import hashcheck
from hashcheck import Algorithm, AsyncClient, Client, ListMatch
from hashcheck._cli import main as client_main
from hashcheck.v1 import hashcheck_pb2, hashcheck_pb2_grpc
from hashcheck_server import layout
from hashcheck_server.errors import ManifestNotKept, SigningKeyError
from hashcheck_server.manifest import build_manifest, kept_manifest, sign_manifest
from hashcheck_server.receipts import sign_receipts
from hashcheck_server.server import RunningServer, ServerConfig, start_server
from hashcheck_server.signing import (
    SigningKey,
    default_key_path,
    generate_key_file,
    load_key_file,
)
from hashcheck_server.store import Entries, HashStore
from hashcheck_server.tenants import TenantRegistry
from synthetic import md5_entries, random_hashes
from tenancy import add_tenants, build_store, make_list_hashes, serve

SERVER_CLI = str(Path(sys.executable).parent / "hashcheck-server")


@pytest.fixture
def signing_key(store_with_police: Path) -> SigningKey:
    """The hotline's key, in the data directory where servers look for it."""
    return generate_key_file(default_key_path(store_with_police))


@pytest.fixture
def signing_server(
    store_with_police: Path, signing_key: SigningKey
) -> Iterator[RunningServer]:
    config = ServerConfig(
        data=store_with_police, listen="127.0.0.1:0", grace_seconds=1.0
    )
    running = start_server(config, CollectorRegistry())
    yield running
    running.stop(grace_seconds=1.0)


@pytest.fixture
def signing_client(signing_server: RunningServer) -> Iterator[Client]:
    with Client(f"127.0.0.1:{signing_server.port}") as client:
        yield client


def _batch_with_hits(police_hashes: np.ndarray) -> list[bytes]:
    """Two misses around three hits, as raw hashes."""
    rows = [random_hashes(1, seed=90)[0], *police_hashes[10:13]]
    rows.append(random_hashes(1, seed=91)[0])
    return [row.tobytes() for row in rows]


def test_receipts_attest_each_hit(
    signing_client: Client, signing_key: SigningKey, police_hashes: np.ndarray
) -> None:
    before = time.time()
    result = signing_client.check(_batch_with_hits(police_hashes), want_receipts=True)

    assert [hit.position for hit in result.hits] == [1, 2, 3]
    for hit in result.hits:
        assert hit.receipt is not None
        verified = hashcheck.verify_receipt(hit.receipt, signing_key.public_key)
        assert (verified.algorithm, verified.hash) == (Algorithm.MD5, hit.hash)
        assert verified.lists == hit.lists == (ListMatch("police", "A1"),)
        assert verified.generation == result.generation
        assert before <= verified.issued_at <= time.time()
        assert (verified.tenant, verified.distance) == ("", 0)
        assert verified.key_id == signing_key.key_id


def test_receipts_only_when_asked(
    signing_client: Client, police_hashes: np.ndarray
) -> None:
    result = signing_client.check(_batch_with_hits(police_hashes))

    assert result.hits and all(hit.receipt is None for hit in result.hits)


def test_receipts_over_a_stream(
    signing_client: Client, signing_key: SigningKey, police_hashes: np.ndarray
) -> None:
    hashes = _batch_with_hits(police_hashes) * 3

    results = list(
        signing_client.check_stream(hashes, "md5", batch_size=4, want_receipts=True)
    )

    hits = [hit for result in results for hit in result.hits]
    assert len(hits) == 9
    for hit in hits:
        assert hit.receipt is not None
        verified = hashcheck.verify_receipt(hit.receipt, signing_key.public_key)
        assert verified.hash == hit.hash


def test_receipts_through_the_async_client(
    signing_server: RunningServer, signing_key: SigningKey, police_hashes: np.ndarray
) -> None:
    async def check() -> hashcheck.CheckResult:
        async with AsyncClient(f"127.0.0.1:{signing_server.port}") as client:
            return await client.check(
                _batch_with_hits(police_hashes), want_receipts=True
            )

    result = asyncio.run(check())

    receipts = [hit.receipt for hit in result.hits]
    assert len(receipts) == 3
    for hit, receipt in zip(result.hits, receipts, strict=True):
        assert receipt is not None
        assert (
            hashcheck.verify_receipt(receipt, signing_key.public_key).hash == hit.hash
        )


def test_receipts_name_the_tenant_and_only_the_lists_it_sees(tmp_path: Path) -> None:
    data = tmp_path / "data"
    hashes = make_list_hashes()
    build_store(data, hashes)
    keys = add_tenants(data)
    signing_key = generate_key_file(default_key_path(data))
    running = serve(data)
    batch = [row.tobytes() for row in (hashes.both[0], hashes.police_a1[0])]
    try:
        with Client(f"127.0.0.1:{running.port}", api_key=keys["beta"]) as client:
            result = client.check(batch, want_receipts=True)
    finally:
        running.stop(grace_seconds=1.0)

    (hit,) = result.hits
    assert hit.receipt is not None
    verified = hashcheck.verify_receipt(hit.receipt, signing_key.public_key)
    assert verified.tenant == "beta"
    assert verified.hash == hashes.both[0].tobytes()
    assert verified.lists == hit.lists == (ListMatch("hotline", "baseline"),)


def test_receipts_without_a_key_fail_precondition(
    stub: hashcheck_pb2_grpc.HashCheckStub, police_hashes: np.ndarray
) -> None:
    request = hashcheck_pb2.CheckRequest(
        algorithm=hashcheck_pb2.ALGORITHM_MD5,
        hashes=police_hashes[:2].tobytes(),
        want_receipts=True,
    )

    with pytest.raises(grpc.RpcError) as raised:
        stub.Check(request)

    assert raised.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert "signing key" in raised.value.details()


def test_server_refuses_to_start_with_a_named_key_that_is_missing(
    store_with_police: Path, tmp_path: Path
) -> None:
    config = ServerConfig(
        data=store_with_police,
        listen="127.0.0.1:0",
        signing_key_file=tmp_path / "absent.pem",
    )

    with pytest.raises(SigningKeyError, match="absent.pem"):
        start_server(config, CollectorRegistry())


def test_sign_receipts_carries_tenant_and_distance() -> None:
    key = SigningKey.generate()
    hashes = random_hashes(3, width=32, seed=5).tobytes()
    reply = hashcheck_pb2.CheckReply(
        generation=9, hit_positions=[0, 2], hit_provenances=[0, 0]
    )
    reply.provenances.add().lists.add(list="hotline", category="B")
    reply.hit_distances.extend([4, 17])

    sign_receipts(reply, hashes, Algorithm.PDQ, key, tenant="acme", issued_at=1.5)

    verified = [
        hashcheck.verify_receipt(hashcheck.Receipt.from_proto(r), key.public_key)
        for r in reply.receipts
    ]
    assert [v.hash for v in verified] == [hashes[:32], hashes[64:]]
    assert [v.distance for v in verified] == [4, 17]
    assert {(v.tenant, v.generation, v.issued_at) for v in verified} == {
        ("acme", 9, 1.5)
    }


def test_key_file_is_private_and_never_overwritten_unasked(tmp_path: Path) -> None:
    path = tmp_path / "key.pem"
    first = generate_key_file(path)

    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_key_file(path).key_id == first.key_id
    with pytest.raises(SigningKeyError, match="--force"):
        generate_key_file(path)
    assert load_key_file(path).key_id == first.key_id

    second = generate_key_file(path, force=True)
    assert load_key_file(path).key_id == second.key_id != first.key_id
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["key.pem"]


def _manifest_of(data: Path, key: SigningKey) -> dict[str, object]:
    environment = layout.Environment(data, readonly=True)
    try:
        return sign_manifest(build_manifest(environment), key)
    finally:
        environment.close()


def test_manifest_describes_the_generation(store_with_police: Path) -> None:
    key = SigningKey.generate()
    signed = _manifest_of(store_with_police, key)

    verified = hashcheck.verify_manifest(json.dumps(signed), key.public_key)

    content = verified.content
    with HashStore.open(store_with_police, readonly=True) as store:
        record = store.generation()
    assert verified.generation == record.number
    assert verified.digest == record.digest
    assert content["lists"] == [
        {
            "name": "police",
            "source": "test",
            "hashes": 5_000,
            "counts": {"md5": {"A1": 5_000}},
        }
    ]
    assert content["tables"]["md5"]["base"]["rows"] == 5_000
    assert not _holds_float(content), "canonical JSON must not depend on floats"


def _holds_float(value: object) -> bool:
    if isinstance(value, dict):
        return any(_holds_float(item) for item in value.values())
    if isinstance(value, list):
        return any(_holds_float(item) for item in value)
    return isinstance(value, float)


def test_manifest_is_the_same_whenever_signed(store_with_police: Path) -> None:
    key = SigningKey.generate()

    assert _manifest_of(store_with_police, key) == _manifest_of(store_with_police, key)


def _other_first(text: str) -> str:
    """`text` with its first character changed (to another base64 and hex digit)."""
    return ("1" if text[0] == "0" else "0") + text[1:]


@pytest.mark.parametrize(
    "tamper",
    [
        lambda d: d["manifest"]["lists"][0]["counts"]["md5"].update(A1=4_999),
        lambda d: d["manifest"]["generation"].update(number=2),
        lambda d: d["manifest"]["tables"]["md5"].pop("base"),
        lambda d: d.update(signature=_other_first(d["signature"])),
        lambda d: d.update(key_id=_other_first(d["key_id"])),
    ],
    ids=["count", "generation", "table", "signature", "key-id"],
)
def test_tampered_manifest_fails(store_with_police: Path, tamper: object) -> None:
    key = SigningKey.generate()
    signed = _manifest_of(store_with_police, key)
    tamper(signed)  # type: ignore[operator]

    with pytest.raises(hashcheck.ManifestInvalid):
        hashcheck.verify_manifest(json.dumps(signed), key.public_key)


def test_manifest_from_another_key_fails(store_with_police: Path) -> None:
    signed = _manifest_of(store_with_police, SigningKey.generate())

    with pytest.raises(hashcheck.ManifestInvalid, match="signed by the key"):
        hashcheck.verify_manifest(signed, SigningKey.generate().public_key)


def _server_cli(*arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [SERVER_CLI, "--log-format", "text", *arguments],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_cli_keys_and_manifest_round_trip(store_with_police: Path) -> None:
    data = str(store_with_police)
    generated = _server_cli("keys", "generate", "--data", data)
    shown = _server_cli("keys", "show", "--data", data)
    again = _server_cli("keys", "generate", "--data", data)

    assert generated.returncode == 0, generated.stderr
    assert shown.stdout == generated.stdout
    public_key = shown.stdout.splitlines()[0].removeprefix("public key: ")
    key_id = shown.stdout.splitlines()[1].removeprefix("key id: ")
    assert hashcheck.PublicKey.from_text(public_key).key_id == key_id
    assert again.returncode == 2 and "--force" in again.stderr

    out = store_with_police.parent / "manifest.json"
    written = _server_cli("manifest", "--data", data, "--out", str(out))
    assert written.returncode == 0, written.stderr
    verified = _server_cli(
        "manifest", "verify", str(out), "--public-key", public_key, "--data", data
    )
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "matches" in verified.stdout

    with HashStore.open(store_with_police) as store:
        store.import_entries("extra", [md5_entries(random_hashes(5, seed=77))])
    stale = _server_cli(
        "manifest", "verify", str(out), "--public-key", public_key, "--data", data
    )
    assert stale.returncode == 1
    assert "differs" in stale.stdout
    assert "is the manifest" in stale.stdout and "kept for generation 1" in (
        stale.stdout
    )

    out.write_text(out.read_text().replace('"A1": 5000', '"A1": 4000'))
    tampered = _server_cli("manifest", "verify", str(out), "--public-key", public_key)
    assert tampered.returncode == 1 and "invalid" in tampered.stdout

    missing = _server_cli(
        "manifest", "verify", str(out) + ".absent", "--public-key", public_key
    )
    assert missing.returncode == 2


def test_every_generation_keeps_the_manifest_it_had(data_dir: Path) -> None:
    key = SigningKey.generate()
    signed_then = []
    with HashStore.open(data_dir, create=True) as store:
        for seed in (1, 2, 3):
            store.import_entries(
                f"list-{seed}", [md5_entries(random_hashes(9, seed=seed))]
            )
            signed_then.append(sign_manifest(build_manifest(store.environment), key))
        store.remove_hashes(Algorithm.MD5, random_hashes(9, seed=1)[:2])
        signed_then.append(sign_manifest(build_manifest(store.environment), key))
        # A tenant change commits a generation too, and receipts name it.
        TenantRegistry(store.environment).add("acme")
        signed_then.append(sign_manifest(build_manifest(store.environment), key))

    environment = layout.Environment(data_dir, readonly=True)
    try:
        signed_later = [
            sign_manifest(kept_manifest(environment, number), key)
            for number in (1, 2, 3, 4, 5)
        ]
        with pytest.raises(ManifestNotKept, match="generation 9"):
            kept_manifest(environment, 9)
    finally:
        environment.close()

    # Ed25519 is deterministic: the same content gives the same file.
    assert signed_later == signed_then


def test_table_digests_come_from_the_headers_and_match_the_rows(
    store_with_police: Path,
) -> None:
    environment = layout.Environment(store_with_police, readonly=True)
    try:
        tables = build_manifest(environment)["tables"]["md5"]
        with environment.read() as transaction:
            rows = transaction.get(
                layout.rows_key(Algorithm.MD5), db=environment.tables
            )
            header = layout.read_table_header(environment, transaction, Algorithm.MD5)
            recomputed = hashlib.sha256(rows).hexdigest()
    finally:
        environment.close()

    assert tables["base"]["sha256"] == header.sha256 == recomputed


def test_cli_signs_the_manifest_of_an_earlier_generation(
    store_with_police: Path,
) -> None:
    data = str(store_with_police)
    assert _server_cli("keys", "generate", "--data", data).returncode == 0
    first = _server_cli("manifest", "--data", data).stdout
    with HashStore.open(store_with_police) as store:
        store.import_entries("extra", [md5_entries(random_hashes(5, seed=78))])

    earlier = _server_cli("manifest", "--data", data, "--generation", "1")
    current = _server_cli("manifest", "--data", data)
    unknown = _server_cli("manifest", "--data", data, "--generation", "7")

    assert earlier.returncode == 0, earlier.stderr
    assert earlier.stdout == first
    assert json.loads(current.stdout)["manifest"]["generation"]["number"] == 2
    assert unknown.returncode == 2
    assert "No manifest was kept for generation 7" in unknown.stderr


def test_cli_check_saves_receipts_that_verify(
    signing_server: RunningServer,
    signing_key: SigningKey,
    police_hashes: np.ndarray,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    receipts = tmp_path / "receipts.jsonl"
    key_file = tmp_path / "hotline.pub"
    key_file.write_text(signing_key.public_pem())
    hexes = [raw.hex() for raw in _batch_with_hits(police_hashes)]
    server = f"127.0.0.1:{signing_server.port}"

    checked = client_main(
        ["check", "--server", server, "--receipts", str(receipts), *hexes]
    )
    capsys.readouterr()
    verified = client_main(["verify", "--public-key", str(key_file), str(receipts)])
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]

    assert (checked, verified) == (1, 0)
    assert [line["hash"] for line in lines] == hexes[1:4]
    assert all(line["valid"] and line["lists"] == ["police"] for line in lines)


def test_cli_scan_saves_receipts_with_paths(
    store_with_police: Path,
    signing_key: SigningKey,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    files = tmp_path / "files"
    files.mkdir()
    (files / "listed.bin").write_bytes(b"a harmless synthetic sample")
    (files / "other.bin").write_bytes(b"another harmless synthetic sample")
    digest = hashlib.md5(b"a harmless synthetic sample").digest()
    with HashStore.open(store_with_police) as store:
        listed = np.frombuffer(digest, dtype=np.uint8).reshape(1, 16)
        store.import_entries("samples", [md5_entries(listed, "A1")])
    receipts = tmp_path / "receipts.jsonl"

    running = start_server(
        ServerConfig(data=store_with_police, listen="127.0.0.1:0"),
        CollectorRegistry(),
    )
    try:
        server = f"127.0.0.1:{running.port}"
        scanned = client_main(
            ["scan", "--server", server, "--receipts", str(receipts), str(files)]
        )
    finally:
        running.stop(grace_seconds=1.0)
    capsys.readouterr()
    public_key = signing_key.public_key.base64
    verified = client_main(["verify", "--public-key", public_key, str(receipts)])

    (line,) = [json.loads(text) for text in receipts.read_text().splitlines()]
    assert (scanned, verified) == (1, 0)
    assert line["path"].endswith("listed.bin")
    assert line["hash"] == digest.hex()


def test_pdq_receipts_carry_the_distance(data_dir: Path) -> None:
    known = random_hashes(50, width=32, seed=70)
    with HashStore.open(data_dir, create=True) as store:
        entries = Entries.graded_alike(Algorithm.PDQ, known, "A1")
        store.import_entries("police", [entries])
    signing_key = generate_key_file(default_key_path(data_dir))
    near = known[7].copy()
    near[0] ^= 0b0000_0111  # three bits away
    running = start_server(
        ServerConfig(data=data_dir, listen="127.0.0.1:0"), CollectorRegistry()
    )
    try:
        with Client(f"127.0.0.1:{running.port}") as client:
            result = client.check([near.tobytes()], "pdq", want_receipts=True)
    finally:
        running.stop(grace_seconds=1.0)

    (hit,) = result.hits
    assert hit.receipt is not None
    verified = hashcheck.verify_receipt(hit.receipt, signing_key.public_key)
    assert (verified.algorithm, verified.hash) == (Algorithm.PDQ, near.tobytes())
    assert verified.distance == hit.distance == 3
