"""hash_file against hashlib, for sizes around its 1 MiB chunks."""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

import pytest

from hashcheck import Algorithm, FileHashes, hash_file

_MIB = 1024 * 1024


@pytest.mark.parametrize(
    "size_bytes",
    [0, 1, _MIB - 1, _MIB, _MIB + 1, 3 * _MIB + 12_345],
    ids=["empty", "one-byte", "chunk-less-one", "one-chunk", "chunk-plus-one", "many"],
)
def test_hash_file_matches_hashlib(tmp_path: Path, size_bytes: int) -> None:
    content = random.Random(size_bytes).randbytes(size_bytes)
    path = tmp_path / "generated.bin"
    path.write_bytes(content)

    hashes = hash_file(path)

    assert hashes == FileHashes(
        md5=hashlib.md5(content).digest(),
        sha1=hashlib.sha1(content).digest(),
        sha256=hashlib.sha256(content).digest(),
        size_bytes=size_bytes,
    )


def test_hash_file_accepts_str_path(tmp_path: Path) -> None:
    path = tmp_path / "note.txt"
    path.write_bytes(b"a harmless generated file\n")

    assert hash_file(str(path)) == hash_file(path)


def test_hash_file_missing_raises_os_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        hash_file(tmp_path / "absent")


@pytest.mark.parametrize(
    "algorithm",
    [Algorithm.MD5, Algorithm.SHA1, Algorithm.SHA256],
    ids=lambda algorithm: algorithm.value,
)
def test_file_hashes_digest_by_algorithm(tmp_path: Path, algorithm: Algorithm) -> None:
    path = tmp_path / "note.txt"
    path.write_bytes(b"x")

    digest = hash_file(path).digest(algorithm)

    assert digest == hashlib.new(algorithm.value, b"x").digest()


def test_file_hashes_digest_pdq_raises(tmp_path: Path) -> None:
    path = tmp_path / "note.txt"
    path.write_bytes(b"x")

    with pytest.raises(ValueError, match="pdq"):
        hash_file(path).digest(Algorithm.PDQ)
