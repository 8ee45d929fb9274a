"""Receipts and manifests in the SDK: verification, tampering, keys, the CLI.

Receipts here are signed by keys made for each test, over synthetic hashes.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from hashcheck import (
    Algorithm,
    ListMatch,
    ManifestInvalid,
    ProtocolError,
    PublicKey,
    Receipt,
    ReceiptInvalid,
    verify_manifest,
    verify_receipt,
)
from hashcheck._cli import main
from hashcheck._manifests import MANIFEST_FORMAT, canonical_json
from hashcheck._wire import result_from_reply
from hashcheck.v1 import hashcheck_pb2

MakeHash = Callable[[Algorithm, int], bytes]


class Hotline:
    """A signing key, as the server holds it, for making test receipts."""

    def __init__(self) -> None:
        self.private_key = Ed25519PrivateKey.generate()
        raw = self.private_key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        self.public_key = PublicKey(raw)

    def sign(self, body: bytes) -> Receipt:
        return Receipt(body, self.private_key.sign(body), self.public_key.key_id)

    def receipt(self, hash_bytes: bytes, **fields: object) -> Receipt:
        message = hashcheck_pb2.ReceiptBody(
            algorithm=hashcheck_pb2.ALGORITHM_SHA1,
            hash=hash_bytes,
            lists=[hashcheck_pb2.ListMatch(list="police", category="A1")],
            generation=12,
            issued_at=1_800_000_000.25,
            tenant="acme",
        )
        for name, value in fields.items():
            setattr(message, name, value)
        return self.sign(message.SerializeToString(deterministic=True))

    def manifest(self, content: dict[str, object]) -> dict[str, object]:
        signature = self.private_key.sign(canonical_json(content))
        return {
            "manifest": content,
            "signature": base64.b64encode(signature).decode(),
            "key_id": self.public_key.key_id,
        }


@pytest.fixture
def hotline() -> Hotline:
    return Hotline()


def _flip(data: bytes, index: int) -> bytes:
    return data[:index] + bytes([data[index] ^ 0x01]) + data[index + 1 :]


def test_verify_receipt_returns_what_it_attests(
    hotline: Hotline, make_hash: MakeHash
) -> None:
    known = make_hash(Algorithm.SHA1, 1)

    verified = verify_receipt(hotline.receipt(known), hotline.public_key)

    assert verified.algorithm is Algorithm.SHA1
    assert (verified.hash, verified.hex) == (known, known.hex())
    assert verified.lists == (ListMatch("police", "A1"),)
    assert verified.list_names == ("police",)
    assert (verified.generation, verified.issued_at) == (12, 1_800_000_000.25)
    assert (verified.tenant, verified.distance) == ("acme", 0)
    assert verified.key_id == hotline.public_key.key_id


@pytest.mark.parametrize("part", ["body", "signature", "key_id"])
@pytest.mark.parametrize("where", [0, -1], ids=["first-byte", "last-byte"])
def test_verify_receipt_refuses_any_flipped_byte(
    hotline: Hotline, make_hash: MakeHash, part: str, where: int
) -> None:
    receipt = hotline.receipt(make_hash(Algorithm.SHA1, 2))
    value = getattr(receipt, part)
    if part == "key_id":
        flipped = _flip(value.encode(), where % len(value)).decode()
    else:
        flipped = _flip(value, where % len(value))
    tampered = Receipt(**{**_fields(receipt), part: flipped})

    with pytest.raises(ReceiptInvalid):
        verify_receipt(tampered, hotline.public_key)


def _fields(receipt: Receipt) -> dict[str, object]:
    return {
        "body": receipt.body,
        "signature": receipt.signature,
        "key_id": receipt.key_id,
    }


def test_verify_receipt_refuses_another_hotlines_key(
    hotline: Hotline, make_hash: MakeHash
) -> None:
    receipt = hotline.receipt(make_hash(Algorithm.SHA1, 3))

    with pytest.raises(ReceiptInvalid, match="signed by the key with id"):
        verify_receipt(receipt, Hotline().public_key)


def test_verify_receipt_refuses_a_forged_key_id(
    hotline: Hotline, make_hash: MakeHash
) -> None:
    forger = Hotline()
    forged = forger.receipt(make_hash(Algorithm.SHA1, 4))
    claimed = Receipt(forged.body, forged.signature, hotline.public_key.key_id)

    with pytest.raises(ReceiptInvalid, match="signature does not match"):
        verify_receipt(claimed, hotline.public_key)


@pytest.mark.parametrize(
    "body",
    [b"\xff\xff", b"", hashcheck_pb2.ReceiptBody(hash=b"x" * 20).SerializeToString()],
    ids=["not-protobuf", "empty", "no-algorithm"],
)
def test_verify_receipt_refuses_a_signed_malformed_body(
    hotline: Hotline, body: bytes
) -> None:
    with pytest.raises(ReceiptInvalid, match="Report this to the hotline"):
        verify_receipt(hotline.sign(body), hotline.public_key)


def test_verify_receipt_refuses_a_hash_of_the_wrong_width(hotline: Hotline) -> None:
    receipt = hotline.receipt(b"\x01" * 16)  # a SHA-1 receipt with an MD5 width

    with pytest.raises(ReceiptInvalid, match="no whole hash"):
        verify_receipt(receipt, hotline.public_key)


def test_receipt_survives_json_and_bytes(hotline: Hotline, make_hash: MakeHash) -> None:
    receipt = hotline.receipt(make_hash(Algorithm.SHA1, 5))

    from_json = Receipt.from_json(json.loads(json.dumps(receipt.to_json())))
    from_bytes = Receipt.from_bytes(receipt.to_bytes())

    assert from_json == from_bytes == receipt
    assert verify_receipt(receipt.to_bytes(), hotline.public_key).tenant == "acme"


@pytest.mark.parametrize(
    "record",
    [
        {"signature": "", "key_id": ""},
        {"body": "not base64!", "signature": "", "key_id": ""},
        {"body": "", "signature": "", "key_id": 7},
    ],
    ids=["no-body", "bad-base64", "key-id-not-text"],
)
def test_receipt_from_json_refuses_malformed_records(record: dict[str, object]) -> None:
    with pytest.raises(ReceiptInvalid):
        Receipt.from_json(record)


def test_public_key_reads_base64_and_pem(hotline: Hotline) -> None:
    pem = (
        hotline.private_key.public_key()
        .public_bytes(
            serialization.Encoding.PEM,
            serialization.PublicFormat.SubjectPublicKeyInfo,
        )
        .decode()
    )

    from_base64 = PublicKey.from_text(hotline.public_key.base64)

    assert from_base64 == PublicKey.from_text(pem) == hotline.public_key
    assert len(hotline.public_key.key_id) == 64


@pytest.mark.parametrize(
    "text", ["", "abc", base64.b64encode(b"\0" * 31).decode()], ids=str
)
def test_public_key_refuses_other_text(text: str) -> None:
    with pytest.raises(ValueError, match="base64 of its raw 32 bytes"):
        PublicKey.from_text(text)


def _reply_with_hits(receipts: list[Receipt]) -> hashcheck_pb2.CheckReply:
    reply = hashcheck_pb2.CheckReply(
        generation=3, checked=2, hit_positions=[0, 1], hit_provenances=[0, 0]
    )
    reply.provenances.add().lists.add(list="police", category="A1")
    for receipt in receipts:
        reply.receipts.add(
            body=receipt.body, signature=receipt.signature, key_id=receipt.key_id
        )
    return reply


def test_result_attaches_each_receipt_to_its_hit(
    hotline: Hotline, make_hash: MakeHash
) -> None:
    hashes = [make_hash(Algorithm.SHA1, n) for n in (6, 7)]
    receipts = [hotline.receipt(h) for h in hashes]

    result = result_from_reply(
        _reply_with_hits(receipts), Algorithm.SHA1, b"".join(hashes), True
    )

    assert [hit.receipt for hit in result.hits] == receipts


def test_result_refuses_receipts_that_do_not_pair_with_hits(
    hotline: Hotline, make_hash: MakeHash
) -> None:
    hashes = [make_hash(Algorithm.SHA1, n) for n in (8, 9)]
    reply = _reply_with_hits([hotline.receipt(hashes[0])])

    with pytest.raises(ProtocolError, match="receipts of different lengths"):
        result_from_reply(reply, Algorithm.SHA1, b"".join(hashes), True)


def test_result_refuses_hits_without_the_receipts_asked_for(
    make_hash: MakeHash,
) -> None:
    hashes = b"".join(make_hash(Algorithm.SHA1, n) for n in (10, 11))

    with pytest.raises(ProtocolError, match="no receipts"):
        result_from_reply(_reply_with_hits([]), Algorithm.SHA1, hashes, True)


def _manifest_content() -> dict[str, object]:
    return {
        "format": MANIFEST_FORMAT,
        "generation": {"number": 4, "digest": "ab" * 32, "change": "import ✓"},
        "lists": [{"name": "police", "counts": {"md5": {"A1": 3}}}],
    }


def test_verify_manifest_accepts_any_layout_of_the_file(hotline: Hotline) -> None:
    signed = hotline.manifest(_manifest_content())

    for text in (json.dumps(signed), json.dumps(signed, indent=4, sort_keys=True)):
        verified = verify_manifest(text, hotline.public_key)
        assert (verified.generation, verified.digest) == (4, "ab" * 32)


@pytest.mark.parametrize(
    "document",
    [
        "not json",
        "[]",
        '{"manifest": {}, "signature": 5, "key_id": ""}',
    ],
    ids=["not-json", "not-object", "signature-not-text"],
)
def test_verify_manifest_refuses_malformed_documents(
    hotline: Hotline, document: str
) -> None:
    with pytest.raises(ManifestInvalid):
        verify_manifest(document, hotline.public_key)


def test_verify_manifest_refuses_repeated_keys(hotline: Hotline) -> None:
    text = json.dumps(hotline.manifest(_manifest_content()))
    repeated = text.replace('{"manifest": {', '{"manifest": {"format": "x", ', 1)

    with pytest.raises(ManifestInvalid, match="twice"):
        verify_manifest(repeated, hotline.public_key)


def test_verify_manifest_refuses_signed_documents_of_another_format(
    hotline: Hotline,
) -> None:
    signed = hotline.manifest({**_manifest_content(), "format": "something-else"})

    with pytest.raises(ManifestInvalid, match="not a hashcheck-manifest/1"):
        verify_manifest(signed, hotline.public_key)


def _receipt_line(receipt: Receipt, **labels: str) -> str:
    return json.dumps({**labels, **receipt.to_json()}) + "\n"


@pytest.fixture
def key_file(hotline: Hotline, tmp_path: Path) -> Path:
    path = tmp_path / "hotline.pub"
    path.write_text(hotline.public_key.base64 + "\n")
    return path


def test_cli_verify_exits_0_when_all_are_valid(
    hotline: Hotline,
    key_file: Path,
    tmp_path: Path,
    make_hash: MakeHash,
    capsys: pytest.CaptureFixture[str],
) -> None:
    known = make_hash(Algorithm.SHA1, 12)
    receipts = tmp_path / "receipts.jsonl"
    receipts.write_text(
        _receipt_line(hotline.receipt(known), hash=known.hex(), algorithm="sha1")
        + "\n"
        + _receipt_line(hotline.receipt(known))
    )

    status = main(["verify", "--public-key", str(key_file), str(receipts)])

    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert status == 0
    assert [line["source"] for line in lines] == [
        f"{receipts}:1",
        f"{receipts}:3",
    ]
    assert lines[0]["valid"] and lines[0]["hash"] == known.hex()
    assert lines[0]["tenant"] == "acme" and lines[0]["generation"] == 12


def test_cli_verify_exits_1_when_any_is_invalid(
    hotline: Hotline,
    key_file: Path,
    tmp_path: Path,
    make_hash: MakeHash,
    capsys: pytest.CaptureFixture[str],
) -> None:
    receipt = hotline.receipt(make_hash(Algorithm.SHA1, 13))
    tampered = Receipt(_flip(receipt.body, 5), receipt.signature, receipt.key_id)
    relabelled = _receipt_line(receipt, hash=make_hash(Algorithm.SHA1, 14).hex())
    receipts = tmp_path / "receipts.jsonl"
    receipts.write_text(
        _receipt_line(receipt) + _receipt_line(tampered) + relabelled + "{oops\n"
    )

    status = main(["verify", "--public-key", str(key_file), str(receipts)])

    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert status == 1
    assert [line["valid"] for line in lines] == [True, False, False, False]
    assert "edited" in lines[2]["error"]


def test_cli_verify_checks_each_receipt_against_the_key_it_names(
    hotline: Hotline,
    key_file: Path,
    tmp_path: Path,
    make_hash: MakeHash,
    capsys: pytest.CaptureFixture[str],
) -> None:
    rotated = Hotline()
    receipts = tmp_path / "receipts.jsonl"
    receipts.write_text(
        _receipt_line(hotline.receipt(make_hash(Algorithm.SHA1, 15)))
        + _receipt_line(rotated.receipt(make_hash(Algorithm.SHA1, 16)))
    )
    arguments = ["verify", "--public-key", str(key_file), str(receipts)]

    with_one_key = main(arguments)
    capsys.readouterr()
    with_both = main([*arguments, "--public-key", rotated.public_key.base64])

    assert (with_one_key, with_both) == (1, 0)


@pytest.mark.parametrize("problem", ["missing-file", "bad-key", "no-receipts"], ids=str)
def test_cli_verify_exits_2_on_errors(
    key_file: Path, tmp_path: Path, problem: str
) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    arguments = {
        "missing-file": ["--public-key", str(key_file), str(tmp_path / "absent")],
        "bad-key": ["--public-key", "not-a-key", str(empty)],
        "no-receipts": ["--public-key", str(key_file), str(empty)],
    }[problem]

    assert main(["verify", *arguments]) == 2


def test_cli_verify_manifest(hotline: Hotline, key_file: Path, tmp_path: Path) -> None:
    signed = hotline.manifest(_manifest_content())
    good = tmp_path / "good.json"
    good.write_text(json.dumps(signed))
    signed["manifest"]["generation"]["number"] = 5  # type: ignore[index]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(signed))

    def run(path: Path) -> int:
        return main(["verify-manifest", "--public-key", str(key_file), str(path)])

    assert (run(good), run(bad), run(tmp_path / "absent")) == (0, 1, 2)


_WITHOUT_CRYPTOGRAPHY = """
import importlib.abc
import sys


class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "cryptography":
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


sys.meta_path.insert(0, Block())

import hashcheck
from hashcheck._cli import main

key = hashcheck.PublicKey.from_text("A" * 43 + "=")
try:
    hashcheck.verify_receipt(hashcheck.Receipt(b"", b"", key.key_id), key)
except ImportError as error:
    print(error)
sys.stdout.flush()
sys.exit(main(["verify", "--public-key", "A" * 43 + "=", "-"]))
"""


def test_sdk_imports_without_cryptography_and_says_what_to_install() -> None:
    completed = subprocess.run(
        [sys.executable, "-c", _WITHOUT_CRYPTOGRAPHY],
        input="",
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert "pip install 'hashcheck[verify]'" in completed.stdout, completed.stderr
    assert completed.returncode == 2
    assert "hashcheck[verify]" in completed.stderr
