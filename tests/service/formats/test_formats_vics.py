"""Project VIC / CAID VICS JSON: header checks, media, cases, and the 2.0 hash objects.

Documents are built here from random hashes; the field names are the ones
open-source importers know, the values are synthetic.
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence

import numpy as np
import pytest

from hashcheck._algorithms import Algorithm
from hashcheck_server.errors import ImportRejected, MalformedInput
from hashcheck_server.formats import ParsedFile, ParsedHashes, read_hash_file

V1_MODEL = "http://github.com/ICMEC/ProjectVic/DataModels/1.2.xml#Media"
V2_CONTEXT = "http://github.com/ICMEC/ProjectVic/DataModels/2.0.xml/$metadata#Media"


def random_hex(count: int, width: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    return [rng.bytes(width).hex() for _ in range(count)]


def v1(value: Sequence[object]) -> dict[str, object]:
    return {"odata.metadata": V1_MODEL, "value": value}


def v2(value: Sequence[object]) -> dict[str, object]:
    return {"@odata.context": V2_CONTEXT, "value": value}


def read_vics(document: object, algorithm: Algorithm | None = None) -> ParsedFile:
    data = json.dumps(document).encode()
    parsed = read_hash_file(io.BytesIO(data), format="vics", algorithm=algorithm)
    assert parsed.format == "vics"
    return parsed


def rows_of(hashes: ParsedHashes) -> list[tuple[int, str, str | None]]:
    names = hashes.category_names
    return [
        (int(line), row.tobytes().hex(), names[code] if code >= 0 else None)
        for line, row, code in zip(
            hashes.lines, hashes.hashes, hashes.categories, strict=True
        )
    ]


def test_vics_1_reads_media_with_categories_by_record_number() -> None:
    md5 = random_hex(3, 16, seed=1)
    sha1 = random_hex(3, 20, seed=2)
    media = [
        {"MediaID": 1, "Category": 1, "MD5": md5[0], "SHA1": sha1[0], "MediaSize": 9},
        {"MediaID": 2, "Category": 3, "MD5": md5[1].upper(), "SHA1": None},
        {"MediaID": 3, "MD5": "", "SHA1": sha1[2], "PhotoDNA": "AAAA"},
    ]

    parsed = read_vics(v1(media))

    assert parsed.records == 3
    assert rows_of(parsed.by_algorithm[Algorithm.MD5]) == [
        (1, md5[0], "1"),
        (2, md5[1], "3"),
    ]
    assert rows_of(parsed.by_algorithm[Algorithm.SHA1]) == [
        (1, sha1[0], "1"),
        (3, sha1[2], None),
    ]
    assert parsed.by_algorithm[Algorithm.SHA1].category_names == ("1",)


def test_vics_reads_cases_of_media_and_keeps_shared_hashes() -> None:
    shared, other = random_hex(2, 16, seed=3)
    cases = [
        {"CaseID": 7, "Media": [{"MD5": shared, "Category": 1}]},
        {"CaseID": 8, "Media": [{"MD5": other}, {"MD5": shared, "Category": 2}]},
        {"CaseID": 9, "Media": None},
    ]

    parsed = read_vics(v1(cases))

    assert parsed.records == 3
    assert rows_of(parsed.by_algorithm[Algorithm.MD5]) == [
        (1, shared, "1"),
        (2, other, None),
        (3, shared, "2"),
    ]


def test_vics_2_reads_nested_hash_objects_once_per_media() -> None:
    md5 = random_hex(2, 16, seed=4)
    sha256 = random_hex(1, 32, seed=5)
    media = [
        {
            "Category": "2",
            "MD5": md5[0],
            "Hashes": [
                {"HashName": "MD5", "HashValue": md5[0].upper()},
                {"HashName": "SHA-256", "HashValue": sha256[0]},
                {"HashName": "PhotoDNA", "HashValue": "AAAA"},
            ],
        },
        {"Hashes": [{"HashName": "md5", "HashValue": md5[1]}]},
    ]

    parsed = read_vics(v2(media))

    assert rows_of(parsed.by_algorithm[Algorithm.MD5]) == [
        (1, md5[0], "2"),
        (2, md5[1], None),
    ]
    assert rows_of(parsed.by_algorithm[Algorithm.SHA256]) == [(1, sha256[0], "2")]


def test_vics_reads_only_the_algorithm_asked_for() -> None:
    (md5,) = random_hex(1, 16, seed=6)
    media = [{"MD5": md5, "SHA1": "not checked when only MD5 is wanted"}]

    parsed = read_vics(v1(media), algorithm=Algorithm.MD5)

    assert list(parsed.by_algorithm) == [Algorithm.MD5]


def test_vics_reports_bad_media_by_record_number() -> None:
    md5 = random_hex(2, 16, seed=7)
    media: list[object] = [
        {"MD5": md5[0]},
        {"MD5": md5[1][:31]},
        "not a media",
        {"MD5": md5[0], "Category": "grave"},
        {"SHA1": 12},
        {"Hashes": [{"HashName": "SHA1", "HashValue": "xyz"}]},
    ]

    with pytest.raises(MalformedInput) as caught:
        read_vics(v2(media))

    assert [(p.line, p.reason) for p in caught.value.problems] == [
        (2, "MD5: expected 32 hex digits for md5, found 31"),
        (3, "expected a media object, found a string"),
        (4, "Category must be an integer, found a string"),
        (5, "SHA1 must be a hex string, found a number"),
        (6, "Hashes SHA1: not hex: a hash holds only the digits 0-9 and letters a-f"),
    ]
    assert md5[1][:31] not in str(caught.value)


@pytest.mark.parametrize(
    ("document", "found"),
    [
        ({"value": []}, "found neither"),
        ({"odata.metadata": V1_MODEL.replace("1.2", "3.0"), "value": []}, "3.0.xml"),
        ({"odata.metadata": V2_CONTEXT, "value": []}, "2.0.xml"),
        ({"@odata.context": V1_MODEL, "value": []}, "1.2.xml"),
        ([1, 2], "found a top-level list"),
    ],
    ids=["no-header", "unknown-version", "v2-model-v1-key", "v1-model-v2-key", "list"],
)
def test_vics_rejects_a_document_that_is_not_vics(document: object, found: str) -> None:
    with pytest.raises(ImportRejected) as caught:
        read_vics(document)

    message = str(caught.value)
    assert "odata.metadata" in message
    assert "DataModels/2.0.xml" in message
    assert found in message
    assert not isinstance(caught.value, MalformedInput)


def test_vics_rejects_a_document_without_a_value_list() -> None:
    with pytest.raises(ImportRejected, match='has no "value" list'):
        read_vics({"@odata.context": V2_CONTEXT, "value": {"MD5": "00"}})


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "is empty"),
        (b"  \n", "is empty"),
        (b'{"odata.metadata": ', "is not valid JSON"),
        (b"\xff\xfe\x00", "cannot be read as JSON"),
    ],
    ids=["empty", "blank", "truncated", "not-utf8"],
)
def test_vics_rejects_what_is_not_json(data: bytes, message: str) -> None:
    with pytest.raises(ImportRejected, match=message):
        read_hash_file(io.BytesIO(data), format="vics")


def test_vics_rejects_media_without_hashes() -> None:
    with pytest.raises(ImportRejected, match="holds no md5 hashes"):
        read_vics(v1([{"SHA1": random_hex(1, 20, seed=8)[0]}]), Algorithm.MD5)
