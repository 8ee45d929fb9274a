"""CSV hash lists: column choice, delimiters, categories and the ICSE export.

Every hash here is random bytes from a seeded generator.
"""

from __future__ import annotations

import io

import numpy as np
import pytest

from hashcheck._algorithms import Algorithm
from hashcheck_server.errors import ImportRejected, MalformedInput
from hashcheck_server.formats import ParsedFile, ParsedHashes, read_hash_file

ICSE_HEADER = (
    "MD5;SHA1;PhotoDNA;Image ID;Is distributed;Victim identified;"
    "Offender identified;Series name;Number of submissions;File Available;"
    "Media Type;Baseline"
)


def random_hex(count: int, width: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    return [rng.bytes(width).hex() for _ in range(count)]


def read_csv(
    text: str,
    *,
    algorithm: Algorithm | None = None,
    hash_column: str | None = None,
    category_column: str | None = None,
) -> ParsedFile:
    parsed = read_hash_file(
        io.BytesIO(text.encode()),
        format="csv",
        algorithm=algorithm,
        hash_column=hash_column,
        category_column=category_column,
    )
    assert parsed.format == "csv"
    return parsed


def rows_of(hashes: ParsedHashes) -> list[tuple[int, str, str | None]]:
    names = hashes.category_names
    return [
        (int(line), row.tobytes().hex(), names[code] if code >= 0 else None)
        for line, row, code in zip(
            hashes.lines, hashes.hashes, hashes.categories, strict=True
        )
    ]


def icse_row(md5: str, sha1: str, baseline: str, image_id: int) -> str:
    photodna = "AAAA" * 4
    return (
        f"{md5};{sha1};{photodna};{image_id};Yes;No;No;"
        f'"Series; with semicolon";{image_id % 7};Yes;Image;{baseline}'
    )


def test_csv_reads_the_icse_export_into_md5_and_sha1() -> None:
    md5 = random_hex(4, 16, seed=1)
    sha1 = random_hex(4, 20, seed=2)
    rows = [
        icse_row(md5[0], sha1[0], "1", 100),
        icse_row("", sha1[1], "0", 101),
        icse_row(md5[2].upper(), sha1[2], "", 102),
        icse_row(md5[3], "", "true", 103),
    ]
    text = "\r\n".join([ICSE_HEADER, *rows]) + "\r\n"

    parsed = read_csv(text)

    assert parsed.records == 4
    assert set(parsed.by_algorithm) == {Algorithm.MD5, Algorithm.SHA1}
    assert rows_of(parsed.by_algorithm[Algorithm.MD5]) == [
        (2, md5[0], "baseline"),
        (4, md5[2], None),
        (5, md5[3], "baseline"),
    ]
    assert rows_of(parsed.by_algorithm[Algorithm.SHA1]) == [
        (2, sha1[0], "baseline"),
        (3, sha1[1], "non-baseline"),
        (4, sha1[2], None),
    ]


def test_csv_reads_only_the_algorithm_asked_for() -> None:
    md5 = random_hex(1, 16, seed=3)
    text = f"{ICSE_HEADER}\n{icse_row(md5[0], 'not even hex', '1', 1)}\n"

    parsed = read_csv(text, algorithm=Algorithm.MD5)

    assert list(parsed.by_algorithm) == [Algorithm.MD5]
    assert rows_of(parsed.by_algorithm[Algorithm.MD5]) == [(2, md5[0], "baseline")]


def test_csv_reports_an_unknown_baseline_value() -> None:
    (md5,) = random_hex(1, 16, seed=5)
    text = f"{ICSE_HEADER}\n{icse_row(md5, '', 'maybe', 1)}\n"

    with pytest.raises(MalformedInput) as caught:
        read_csv(text)

    (problem,) = caught.value.problems
    assert problem.line == 2
    assert problem.reason.startswith("Baseline: expected 1/0")


@pytest.mark.parametrize("delimiter", [",", ";", "\t"], ids=["comma", "semi", "tab"])
def test_csv_detects_the_delimiter_from_the_header(delimiter: str) -> None:
    digests = random_hex(3, 32, seed=6)
    lines = [delimiter.join(["id", "SHA-256", "Category"])]
    lines += [delimiter.join([str(i), d, f"cat {i}"]) for i, d in enumerate(digests)]

    parsed = read_csv("\n".join(lines))

    assert rows_of(parsed.by_algorithm[Algorithm.SHA256]) == [
        (2, digests[0], "cat 0"),
        (3, digests[1], "cat 1"),
        (4, digests[2], "cat 2"),
    ]


def test_csv_reads_quoted_fields_and_a_bom() -> None:
    (digest,) = random_hex(1, 16, seed=7)
    text = f'\ufeff"md5","category"\n" {digest} ","A, with comma"\n'

    parsed = read_csv(text)

    assert rows_of(parsed.by_algorithm[Algorithm.MD5]) == [(2, digest, "A, with comma")]


def test_csv_numbers_lines_by_where_a_row_ends() -> None:
    digests = random_hex(2, 16, seed=8)
    text = f'md5,note\n{digests[0]},"two\nlines"\n{digests[1]},x\n'

    parsed = read_csv(text)

    assert parsed.by_algorithm[Algorithm.MD5].lines.tolist() == [3, 4]


def test_csv_uses_the_columns_it_is_told() -> None:
    digests = random_hex(2, 16, seed=9)
    text = (
        "MD5,Other,Grade,Category\n"
        f"{random_hex(1, 16, seed=99)[0]},{digests[0]},A1,ignored\n"
        f"{random_hex(1, 16, seed=98)[0]},{digests[1]},,ignored\n"
    )

    parsed = read_csv(text, hash_column="other", category_column="GRADE")

    (hashes,) = parsed.by_algorithm.values()
    assert hashes.algorithm is Algorithm.MD5
    assert rows_of(hashes) == [(2, digests[0], "A1"), (3, digests[1], None)]


def test_csv_infers_the_algorithm_of_a_hash_column() -> None:
    digests = random_hex(2, 20, seed=10)
    text = "Hash\n" + "\n".join(digests) + "\n"

    parsed = read_csv(text)

    assert list(parsed.by_algorithm) == [Algorithm.SHA1]


def test_csv_reads_a_named_pdq_column_but_no_photodna() -> None:
    (digest,) = random_hex(1, 32, seed=11)
    text = f"PhotoDNA,PDQ\nAAAA,{digest}\n"

    parsed = read_csv(text)

    assert list(parsed.by_algorithm) == [Algorithm.PDQ]


def test_csv_reports_malformed_cells_with_column_and_line() -> None:
    md5 = random_hex(3, 16, seed=12)
    text = f"MD5,SHA1\n{md5[0]},\n{md5[1][:30]},\n,zz{md5[2]}xx\n"

    with pytest.raises(MalformedInput) as caught:
        read_csv(text)

    assert [(p.line, p.reason) for p in caught.value.problems] == [
        (3, "MD5: expected 32 hex digits for md5, found 30"),
        (4, "SHA1: not hex: a hash holds only the digits 0-9 and letters a-f"),
    ]


@pytest.mark.parametrize(
    ("header", "options", "message"),
    [
        ("id,name", {}, "has no hash column; its columns are 'id', 'name'"),
        ("id,MD5", {"algorithm": Algorithm.SHA1}, "has no sha1 or hash column"),
        ("id,MD5", {"hash_column": "digest"}, "has no column 'digest'"),
        ("id,MD5", {"category_column": "grade"}, "has no column 'grade'"),
    ],
    ids=["none", "algorithm", "hash-column", "category-column"],
)
def test_csv_rejects_a_file_without_the_wanted_column(
    header: str, options: dict[str, object], message: str
) -> None:
    (digest,) = random_hex(1, 16, seed=13)

    with pytest.raises(ImportRejected, match=message) as caught:
        read_csv(f"{header}\n1,{digest}\n", **options)  # type: ignore[arg-type]

    assert not isinstance(caught.value, MalformedInput)


def test_csv_rejects_an_empty_file_and_one_without_hashes() -> None:
    with pytest.raises(ImportRejected, match="is empty"):
        read_csv("")
    with pytest.raises(ImportRejected, match="holds no hashes"):
        read_csv(f"{ICSE_HEADER}\n;;;;;;;;;;;\n\n")
