"""read_hash_file as callers use it: sources, format choice, progress and arguments.

Every hash here is random bytes from a seeded generator.
"""

from __future__ import annotations

import io
import sys
from pathlib import Path
from unittest import mock

import numpy as np
import pytest

from hashcheck._algorithms import Algorithm
from hashcheck_server import formats
from hashcheck_server.errors import ImportRejected, MalformedInput
from hashcheck_server.formats import (
    ParsedHashes,
    _text,
    infer_format,
    read_hash_file,
)


def random_hex(count: int, width: int = 16, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    return [rng.bytes(width).hex() for _ in range(count)]


def test_formats_exports_the_contract_names() -> None:
    contract = {"ParsedFile", "ParsedHashes", "infer_format", "read_hash_file"}

    assert contract <= set(formats.__all__)
    assert formats.__all__ == sorted(formats.__all__)
    assert all(hasattr(formats, name) for name in formats.__all__)


@pytest.mark.parametrize(
    ("name", "format"),
    [
        ("list.txt", "text"),
        ("police.hashes", "text"),
        ("LIST.MD5", "text"),
        ("list.sha1", "text"),
        ("no-suffix", "text"),
        ("<stdin>", "text"),
        ("export.csv", "csv"),
        ("Export.TSV", "csv"),
        ("/data/vics/case.json", "vics"),
    ],
)
def test_infer_format_goes_by_the_suffix(name: str, format: str) -> None:
    assert infer_format(name) == format


def test_read_hash_file_reads_a_path_and_infers_the_format(tmp_path: Path) -> None:
    digests = random_hex(3, width=20, seed=1)
    path = tmp_path / "list.csv"
    path.write_text("SHA1\n" + "\n".join(digests) + "\n")

    for source in (path, str(path)):
        parsed = read_hash_file(source)

        assert parsed.source == str(path)
        assert parsed.format == "csv"
        assert parsed.records == 3
        assert list(parsed.by_algorithm) == [Algorithm.SHA1]


def test_read_hash_file_format_overrides_the_name(tmp_path: Path) -> None:
    (digest,) = random_hex(1, seed=2)
    path = tmp_path / "list.csv"
    path.write_text(digest + "\n")

    parsed = read_hash_file(path, format="text")

    assert parsed.format == "text"


def test_read_hash_file_reads_stdin_for_a_dash() -> None:
    digests = random_hex(2, seed=3)
    stdin = mock.Mock(buffer=io.BytesIO("\n".join(digests).encode()))

    with mock.patch.object(sys, "stdin", stdin):
        parsed = read_hash_file("-", algorithm=Algorithm.MD5)

    assert parsed.source == "<stdin>"
    hashes = parsed.by_algorithm[Algorithm.MD5]
    assert [row.tobytes().hex() for row in hashes.hashes] == digests


def test_read_hash_file_leaves_a_stream_open_and_names_problems_after_it() -> None:
    stream = io.BytesIO(b"not a hash\n")
    stream.name = "upload.txt"

    with pytest.raises(MalformedInput) as caught:
        read_hash_file(stream, algorithm=Algorithm.MD5)

    assert not stream.closed
    assert str(caught.value.problems[0]).startswith("upload.txt:1: ")


def test_read_hash_file_rejects_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ImportRejected, match="Cannot open .*missing.txt"):
        read_hash_file(tmp_path / "missing.txt")


@pytest.mark.parametrize("format", ["text", "csv", "vics"])
def test_read_hash_file_reports_progress_up_to_the_file_size(
    tmp_path: Path, format: str
) -> None:
    digests = random_hex(2000, seed=4)
    body = {
        "text": "\n".join(digests),
        "csv": "md5\n" + "\n".join(digests),
        "vics": '{"odata.metadata": "x/DataModels/1.3.xml#Media", "value": ['
        + ",".join(f'{{"MD5": "{d}"}}' for d in digests)
        + "]}",
    }[format]
    path = tmp_path / "list"
    path.write_text(body)
    seen: list[int] = []

    with (
        mock.patch.object(_text, "_CHUNK_BYTES", 4096),
        mock.patch("hashcheck_server.formats._source._BLOCK_BYTES", 4096),
    ):
        read_hash_file(path, format=format, progress=seen.append)

    assert len(seen) > 1
    assert seen == sorted(seen)
    assert seen[-1] == path.stat().st_size


def test_read_hash_file_refuses_arguments_that_make_no_sense() -> None:
    with pytest.raises(ValueError, match="Unknown hash-list format 'xml'"):
        read_hash_file(io.BytesIO(b""), format="xml")
    with pytest.raises(ValueError, match="CSV files only"):
        read_hash_file(io.BytesIO(b""), format="text", hash_column="md5")
    with pytest.raises(ValueError, match="max_problems"):
        read_hash_file(io.BytesIO(b"00"), max_problems=-1)


def test_parsed_hashes_checks_its_arrays() -> None:
    with pytest.raises(ValueError, match=r"hashes must have shape \(1, 16\)"):
        ParsedHashes(
            algorithm=Algorithm.MD5,
            hashes=np.zeros((1, 20), dtype=np.uint8),
            categories=np.full(1, -1, dtype=np.int32),
            category_names=(),
            lines=np.ones(1, dtype=np.int64),
        )


def test_category_names_are_per_algorithm() -> None:
    md5 = random_hex(1, seed=5)[0]
    sha1 = random_hex(1, width=20, seed=6)[0]
    text = f"MD5,SHA1,Category\n{md5},,only-md5\n,{sha1},only-sha1\n"

    parsed = read_hash_file(io.BytesIO(text.encode()), format="csv")

    md5_hashes = parsed.by_algorithm[Algorithm.MD5]
    sha1_hashes = parsed.by_algorithm[Algorithm.SHA1]
    assert md5_hashes.category_names == ("only-md5",)
    assert sha1_hashes.category_names == ("only-sha1",)
    assert md5_hashes.categories.tolist() == sha1_hashes.categories.tolist() == [0]
