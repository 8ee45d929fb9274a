"""Client.check, check_packed and info against the fake server."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import pytest

from hashcheck import (
    Algorithm,
    Client,
    InvalidHash,
    InvalidRequest,
    ListMatch,
    pack_hashes,
)

if TYPE_CHECKING:
    from conftest import FakeHashCheck

MakeHash = Callable[[Algorithm, int], bytes]

_CRYPTOGRAPHIC = [Algorithm.MD5, Algorithm.SHA1, Algorithm.SHA256]


@pytest.mark.parametrize("algorithm", _CRYPTOGRAPHIC, ids=lambda a: a.value)
def test_check_hex_reports_hits(
    client: Client, fake: FakeHashCheck, make_hash: MakeHash, algorithm: Algorithm
) -> None:
    known = make_hash(algorithm, 1)
    fake.add(known, ("police", "A1"), ("hotline", ""))
    hashes = [make_hash(algorithm, 0).hex(), known.hex(), make_hash(algorithm, 2).hex()]

    result = client.check(hashes, algorithm)

    assert result.checked == 3
    assert result.generation == 7
    assert result.algorithm is algorithm
    assert [hit.position for hit in result.hits] == [1]
    hit = result.hits[0]
    assert hit.hash == known
    assert hit.hex == known.hex()
    assert hit.algorithm is algorithm
    assert hit.lists == (ListMatch("police", "A1"), ListMatch("hotline", ""))
    assert hit.list_names == ("police", "hotline")
    assert hit.generation == 7


def test_check_bytes_reports_hits(
    client: Client, fake: FakeHashCheck, make_hash: MakeHash
) -> None:
    known = make_hash(Algorithm.SHA1, 5)
    fake.add(known)

    result = client.check([make_hash(Algorithm.SHA1, 4), known], "sha1")

    assert [(hit.position, hit.hash) for hit in result.hits] == [(1, known)]


def test_check_mixed_hex_and_bytes_reports_hits(
    client: Client, fake: FakeHashCheck, make_hash: MakeHash
) -> None:
    known = make_hash(Algorithm.MD5, 9)
    fake.add(known)

    result = client.check([make_hash(Algorithm.MD5, 8), f"  {known.hex().upper()}\n"])

    assert [hit.hash for hit in result.hits] == [known]


@pytest.mark.parametrize(
    ("kind", "algorithm"),
    [
        ("hex", Algorithm.MD5),
        ("hex", Algorithm.SHA1),
        ("hex", Algorithm.SHA256),
        ("bytes", Algorithm.MD5),
        ("bytes", Algorithm.SHA1),
        ("bytes", Algorithm.SHA256),
    ],
    ids=lambda value: value if isinstance(value, str) else value.value,
)
def test_check_infers_algorithm_from_width(
    client: Client,
    fake: FakeHashCheck,
    make_hash: MakeHash,
    kind: str,
    algorithm: Algorithm,
) -> None:
    known = make_hash(algorithm, 3)
    fake.add(known)
    given: str | bytes = known.hex() if kind == "hex" else known

    result = client.check([given])

    assert result.algorithm is algorithm
    assert [hit.hash for hit in result.hits] == [known]


@pytest.mark.parametrize(
    ("hashes", "algorithm", "message"),
    [
        (["abc"], None, "3-digit"),
        (["00" * 16, "00" * 20], None, "Hash 1"),
        (["00" * 20], "md5", "md5 hashes have 32"),
        (["zz" * 16], "md5", "not a hex hash"),
        ([b"\x00" * 17], None, "17 raw bytes"),
        ([b"\x00" * 16, b"\x00" * 20], None, "Hash 1 is 20 raw bytes"),
        ([b"\x00" * 32], "sha1", "sha1 hashes have 20"),
        (["00" * 16], "crc32", "Unknown hash algorithm"),
        ([], None, "empty batch"),
        ([16], "md5", "Hash 0 is a int"),
    ],
    ids=[
        "short-hex",
        "mixed-hex-widths",
        "hex-of-other-algorithm",
        "not-hex",
        "unknown-raw-width",
        "mixed-raw-widths",
        "raw-of-other-algorithm",
        "unknown-algorithm",
        "empty-without-algorithm",
        "not-a-hash",
    ],
)
def test_check_bad_hashes_raise_invalid_hash_before_calling(
    client: Client,
    fake: FakeHashCheck,
    hashes: list[str | bytes],
    algorithm: str | None,
    message: str,
) -> None:
    with pytest.raises(InvalidHash, match=message) as raised:
        client.check(hashes, algorithm)

    assert isinstance(raised.value, ValueError)
    assert fake.calls == []


@pytest.mark.parametrize("lone", ["00" * 16, b"\x00" * 16], ids=["str", "bytes"])
def test_check_lone_hash_raises_type_error(client: Client, lone: str | bytes) -> None:
    with pytest.raises(TypeError, match="wrap a single hash in a list"):
        client.check(lone)


def test_check_empty_batch_answers_nothing(client: Client, fake: FakeHashCheck) -> None:
    result = client.check([], "sha256")

    assert result.checked == 0
    assert result.hits == ()
    assert not result.has_hits
    assert result.generation == 7
    assert fake.calls == ["Check"]


def test_check_all_hits_share_provenances(
    client: Client, fake: FakeHashCheck, make_hash: MakeHash
) -> None:
    hashes = [make_hash(Algorithm.MD5, number) for number in range(2_000)]
    for number, known in enumerate(hashes):
        fake.add(known, ("police", "A1" if number % 2 else "B2"))

    result = client.check(hashes)

    assert [hit.position for hit in result.hits] == list(range(2_000))
    assert [hit.hash for hit in result.hits] == hashes
    assert {hit.lists for hit in result.hits} == {
        (ListMatch("police", "A1"),),
        (ListMatch("police", "B2"),),
    }


def test_check_pdq_is_rejected_by_server(client: Client) -> None:
    with pytest.raises(InvalidRequest, match="Unknown algorithm"):
        client.check(["00" * 32], "pdq")


def test_check_packed_reports_hits(
    client: Client, fake: FakeHashCheck, make_hash: MakeHash
) -> None:
    known = make_hash(Algorithm.SHA256, 1)
    fake.add(known)
    algorithm, packed = pack_hashes([make_hash(Algorithm.SHA256, 0), known.hex()])

    result = client.check_packed(packed, algorithm)

    assert algorithm is Algorithm.SHA256
    assert [(hit.position, hit.hash) for hit in result.hits] == [(1, known)]


def test_check_packed_ragged_raises_invalid_hash(client: Client) -> None:
    with pytest.raises(InvalidHash, match="multiple of 16 bytes"):
        client.check_packed(b"\x00" * 17, Algorithm.MD5)


@pytest.mark.parametrize("source", ["argument", "environment"])
def test_client_sends_api_key_as_bearer(
    target: str, fake: FakeHashCheck, monkeypatch: pytest.MonkeyPatch, source: str
) -> None:
    fake.api_keys = {"key-123"}
    if source == "environment":
        monkeypatch.setenv("HASHCHECK_API_KEY", "key-123")
    api_key = "key-123" if source == "argument" else None

    with Client(target, api_key=api_key) as client:
        client.check(["00" * 16])
        client.info()
        list(client.check_stream(["00" * 16]))

    assert fake.authorizations == ["Bearer key-123"] * 3


def test_client_without_api_key_sends_no_authorization(
    client: Client, fake: FakeHashCheck
) -> None:
    client.check(["00" * 16])

    assert fake.authorizations == [None]


def test_client_api_key_with_spaces_raises_value_error(target: str) -> None:
    with pytest.raises(ValueError, match="printable ASCII"):
        Client(target, api_key="two words")


def test_client_target_from_environment(
    target: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HASHCHECK_SERVER", target)

    with Client() as client:
        assert client.target == target
        assert client.check(["00" * 16]).checked == 1


def test_client_target_defaults_to_local_port() -> None:
    with Client() as client:
        assert client.target == "127.0.0.1:50051"


def test_client_accepts_dns_target(target: str) -> None:
    with Client(f"dns:///{target}") as client:
        assert client.check(["00" * 20]).checked == 1


@pytest.mark.parametrize("show_counts", [False, True], ids=["company", "operator"])
def test_info_describes_server(
    client: Client, fake: FakeHashCheck, make_hash: MakeHash, show_counts: bool
) -> None:
    fake.show_counts = show_counts
    fake.add(make_hash(Algorithm.MD5, 1))
    fake.add(make_hash(Algorithm.SHA1, 1))

    info = client.info()

    assert info.service_version == "0.0.0-fake"
    assert info.generation == 7
    assert info.generation_committed_at == 1_700_000_000.5
    assert info.max_batch_hashes == 100_000
    described = {entry.algorithm: entry for entry in info.algorithms}
    assert set(described) == set(_CRYPTOGRAPHIC)
    assert described[Algorithm.SHA1].width == 20
    expected_md5_count = 1 if show_counts else None
    assert described[Algorithm.MD5].hash_count == expected_md5_count
