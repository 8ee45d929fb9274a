"""The NCMEC-style XML reader: entries, classifications and tombstones."""

from __future__ import annotations

import io

import pytest

from hashcheck._algorithms import Algorithm
from hashcheck_server.errors import ImportRejected, MalformedInput
from hashcheck_server.formats import infer_format, read_hash_file
from synthetic import random_hashes

NAMESPACE = "https://hashsharing.example/v2"


def _page(entries: str) -> io.BytesIO:
    document = (
        f'<?xml version="1.0" encoding="UTF-8"?>\n<queryResult xmlns="{NAMESPACE}">'
        f"{entries}</queryResult>"
    )
    return io.BytesIO(document.encode())


def _image(entry_id: str, classification: str, **fingerprints: str) -> str:
    prints = "".join(
        f"<{name}>{value}</{name}>" for name, value in fingerprints.items()
    )
    return (
        f"<image><id>{entry_id}</id><classification>{classification}</classification>"
        f"<fingerprints>{prints}<pdna>AAAA</pdna></fingerprints></image>"
    )


def test_reads_entries_with_classification_as_category() -> None:
    md5, sha1 = random_hashes(2, 16, seed=1), random_hashes(2, 20, seed=2)
    page = _page(
        "<images count='2'>"
        + _image("1", "A1", md5=md5[0].tobytes().hex(), sha1=sha1[0].tobytes().hex())
        + _image("2", "B2", md5=md5[1].tobytes().hex().upper())
        + "</images><videos>"
        + "<video><id>3</id><classification>A1</classification><fingerprints>"
        + f"<sha1>{sha1[1].tobytes().hex()}</sha1></fingerprints></video></videos>"
    )

    parsed = read_hash_file(page, format="ncmec")

    assert parsed.records == 3
    md5_part = parsed.by_algorithm[Algorithm.MD5]
    assert md5_part.hashes.tolist() == md5.tolist()
    names = [md5_part.category_names[code] for code in md5_part.categories]
    assert names == ["A1", "B2"]
    assert parsed.by_algorithm[Algorithm.SHA1].hashes.shape == (2, 20)
    assert parsed.record_ids["1"] == (
        (Algorithm.MD5, md5[0].tobytes()),
        (Algorithm.SHA1, sha1[0].tobytes()),
    )


def test_reads_tombstones_by_id_and_fingerprint() -> None:
    md5 = random_hashes(1, seed=3)
    page = _page(
        "<images><deletedImage><id>17</id></deletedImage>"
        f"<deletedImage><id>18</id><fingerprints><md5>{md5[0].tobytes().hex()}"
        "</md5></fingerprints></deletedImage></images>"
    )

    parsed = read_hash_file(page, format="ncmec")

    assert parsed.by_algorithm == {}
    assert parsed.withdrawn_ids == ("17", "18")
    assert parsed.withdrawn[Algorithm.MD5].tolist() == md5.tolist()


@pytest.mark.parametrize(
    ("entries", "fragment"),
    [
        pytest.param(_image("1", "A1", md5="xyz"), "md5 fingerprint", id="bad-hex"),
        pytest.param("<deletedVideo></deletedVideo>", "tombstone without", id="tomb"),
    ],
)
def test_malformed_entries_are_problems_with_record_numbers(
    entries: str, fragment: str
) -> None:
    with pytest.raises(MalformedInput) as rejected:
        read_hash_file(_page(entries), format="ncmec")

    assert fragment in str(rejected.value)
    assert ":1:" in str(rejected.value)


def test_entries_without_a_readable_fingerprint_are_skipped_and_counted() -> None:
    md5 = random_hashes(1, seed=4)
    page = _page(
        "<images>"
        + _image("1", "A1", md5=md5[0].tobytes().hex())
        + _image("2", "A1")  # PhotoDNA only
        + "<deletedImage><fingerprints><pdna>AAAA</pdna></fingerprints>"
        "</deletedImage></images>"
    )

    parsed = read_hash_file(page, format="ncmec")

    assert (parsed.records, parsed.skipped) == (3, 2)
    assert parsed.skipped_reason == "without an md5, sha1, sha256 or pdq fingerprint"
    assert parsed.by_algorithm[Algorithm.MD5].lines.tolist() == [1]


def test_entries_of_another_algorithm_are_skipped_when_one_is_chosen() -> None:
    md5 = random_hashes(1, seed=6)
    sha1 = random_hashes(1, 20, seed=7)
    page = _page(
        "<images>" + _image("1", "A1", md5=md5[0].tobytes().hex()) + "</images>"
        "<videos><video><id>2</id><fingerprints>"
        f"<sha1>{sha1[0].tobytes().hex()}</sha1></fingerprints></video></videos>"
    )

    parsed = read_hash_file(page, format="ncmec", algorithm=Algorithm.MD5)

    assert parsed.skipped == 1
    assert parsed.skipped_reason == "without an md5 fingerprint"
    assert parsed.by_algorithm[Algorithm.MD5].hashes.tolist() == md5.tolist()


def test_page_of_only_skipped_entries_is_read_empty() -> None:
    page = _page("<images>" + _image("1", "A1") + "</images>")

    parsed = read_hash_file(page, format="ncmec")

    assert (parsed.by_algorithm, parsed.skipped) == ({}, 1)


def test_bad_hex_beside_skipped_entries_still_rejects_the_page() -> None:
    page = _page(
        "<images>" + _image("1", "A1") + _image("2", "A1", md5="xyz") + "</images>"
    )

    with pytest.raises(MalformedInput, match=r"<stream>:2: md5 fingerprint"):
        read_hash_file(page, format="ncmec")


def test_not_xml_is_rejected() -> None:
    with pytest.raises(ImportRejected, match="not well-formed XML"):
        read_hash_file(io.BytesIO(b"<queryResult><image>"), format="ncmec")


def test_xml_suffix_means_ncmec() -> None:
    assert infer_format("page-0001.XML") == "ncmec"
