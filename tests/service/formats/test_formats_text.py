"""Plain hash lists: line syntax, algorithms, problems, and the chunked fast path.

Every hash here is synthetic: random bytes from a seeded generator or from
Hypothesis.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass
from unittest import mock

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hashcheck._algorithms import Algorithm
from hashcheck_server.errors import ImportRejected, MalformedInput
from hashcheck_server.formats import ParsedHashes, _text, read_hash_file

RNG_SEED = 20240601


def random_hashes(count: int, width: int = 16, seed: int = RNG_SEED) -> list[bytes]:
    rng = np.random.default_rng(seed)
    return [rng.bytes(width) for _ in range(count)]


def read_text(data: bytes, algorithm: Algorithm | None = None) -> ParsedHashes:
    parsed = read_hash_file(io.BytesIO(data), format="text", algorithm=algorithm)
    assert parsed.format == "text"
    (hashes,) = parsed.by_algorithm.values()
    assert parsed.records == len(hashes.lines)
    return hashes


def problems_of(
    data: bytes, algorithm: Algorithm | None = None, max_problems: int = 20
) -> MalformedInput:
    with pytest.raises(MalformedInput) as caught:
        read_hash_file(
            io.BytesIO(data),
            format="text",
            algorithm=algorithm,
            max_problems=max_problems,
        )
    return caught.value


def as_rows(hashes: ParsedHashes) -> list[tuple[int, bytes, str | None]]:
    """(line, hash, category) per hash, for comparing with expectations."""
    names = hashes.category_names
    return [
        (int(line), row.tobytes(), names[code] if code >= 0 else None)
        for line, row, code in zip(
            hashes.lines, hashes.hashes, hashes.categories, strict=True
        )
    ]


# A reference parser: plain string operations, one line at a time, written
# apart from the reader's regular expression and fast path.


@dataclass(frozen=True)
class Reference:
    rows: list[tuple[int, bytes, str | None]]
    bad_lines: list[int]


_PREFIXES = {
    "md5": Algorithm.MD5,
    "sha1": Algorithm.SHA1,
    "sha-1": Algorithm.SHA1,
    "sha256": Algorithm.SHA256,
    "sha-256": Algorithm.SHA256,
    "pdq": Algorithm.PDQ,
}


def reference_parse(text: str, algorithm: Algorithm) -> Reference:
    rows: list[tuple[int, bytes, str | None]] = []
    bad_lines: list[int] = []
    for number, raw in enumerate(text.split("\n"), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        parsed = reference_line(line, algorithm)
        if parsed is None:
            bad_lines.append(number)
        else:
            rows.append((number, *parsed))
    return Reference(rows, bad_lines)


def reference_line(line: str, algorithm: Algorithm) -> tuple[bytes, str | None] | None:
    head = re.split(r"[\s:;,]+", line, maxsplit=1)
    if len(head) == 2 and not all(c in "0123456789abcdefABCDEF" for c in head[0]):
        if _PREFIXES.get(head[0].lower()) is not algorithm:
            return None
        line = head[1]

    category: str | None = None
    parts = re.split(r"\s*[,;\t]\s*", line, maxsplit=1)
    digits = parts[0]
    if len(parts) == 2:
        category = parts[1].strip(" \t,;") or None

    if len(digits) != 2 * algorithm.width:
        return None
    if not all(c in "0123456789abcdefABCDEF" for c in digits):
        return None
    return bytes.fromhex(digits), category


# Hypothesis: files built from random lines, each with what it should yield.

PREFIX_FORMS = ["md5:", "MD5 ", "md5,", "Md5;", "md5 : ", "MD5\t"]
CATEGORY_SEPARATORS = [",", "\t", ";", " , ", " \t"]
WHITESPACE = st.sampled_from(["", "", " ", "  ", "\t", " \t "])


@st.composite
def hex_digits(draw: st.DrawFn, width: int = 16) -> str:
    digest = draw(st.binary(min_size=width, max_size=width))
    case = draw(st.sampled_from(["lower", "upper", "mixed"]))
    digits = digest.hex()
    if case == "upper":
        return digits.upper()
    if case == "mixed":
        flips = draw(
            st.lists(st.booleans(), min_size=len(digits), max_size=len(digits))
        )
        return "".join(
            c.upper() if f else c for c, f in zip(digits, flips, strict=True)
        )
    return digits


@st.composite
def good_line(draw: st.DrawFn, style: str) -> str:
    """A hash line: in the file's common style, or any allowed variation."""
    digits = draw(hex_digits())
    if style == "plain" and draw(st.integers(0, 3)):
        return digits
    if style.startswith("prefix") and draw(st.integers(0, 3)):
        return style.removeprefix("prefix") + digits

    lead, trail = draw(WHITESPACE), draw(WHITESPACE)
    prefix = draw(st.sampled_from(["", *PREFIX_FORMS]))
    category = ""
    if draw(st.booleans()):
        separator = draw(st.sampled_from(CATEGORY_SEPARATORS))
        name = draw(st.sampled_from(["A1", "baseline", "other", "cat 2"]))
        category = separator + name
    return f"{lead}{prefix}{digits}{category}{trail}"


@st.composite
def other_line(draw: st.DrawFn) -> str:
    return draw(
        st.sampled_from(["", "   ", "\t", "# a comment", "  # indented, comment", "#"])
    )


@st.composite
def bad_line(draw: st.DrawFn) -> str:
    digits = draw(hex_digits())
    kind = draw(st.sampled_from(["short", "long", "nothex", "prefix", "wrongtype"]))
    if kind == "short":
        return digits[: draw(st.integers(1, 31))]
    if kind == "long":
        return digits + draw(st.sampled_from(["0", "ab", digits]))
    if kind == "nothex":
        at = draw(st.integers(0, 31))
        return digits[:at] + draw(st.sampled_from("gxz-!")) + digits[at + 1 :]
    if kind == "prefix":
        return "xyz:" + digits
    return "sha1:" + digits


@st.composite
def text_files(draw: st.DrawFn, with_bad: bool) -> tuple[bytes, list[int]]:
    """A file, and the numbers of its bad lines."""
    style = draw(st.sampled_from(["plain", "prefixmd5:", "prefixMD5 ", "any"]))
    kinds = ["good", "good", "good", "other"] + (["bad"] if with_bad else [])
    lines: list[str] = []
    bad_numbers: list[int] = []
    for kind in draw(st.lists(st.sampled_from(kinds), max_size=60)):
        if kind == "good":
            lines.append(draw(good_line(style)))
        elif kind == "other":
            lines.append(draw(other_line()))
        else:
            lines.append(draw(bad_line()))
            bad_numbers.append(len(lines))

    ending = draw(st.sampled_from(["\n", "\r\n"]))
    ends_with_newline = draw(st.booleans())
    text = ending.join(lines)
    if lines and ends_with_newline:
        text += ending
    return text.encode(), bad_numbers


@settings(max_examples=150, deadline=None)
@given(text_files(with_bad=False), st.integers(1, 300), st.sampled_from([1, 8]))
def test_text_matches_reference_parser_at_any_chunk_size(
    file: tuple[bytes, list[int]], chunk_bytes: int, min_group_lines: int
) -> None:
    data, _ = file
    expected = reference_parse(data.decode(), Algorithm.MD5)
    assert not expected.bad_lines

    with (
        mock.patch.object(_text, "_CHUNK_BYTES", chunk_bytes),
        mock.patch.object(_text, "_MIN_GROUP_LINES", min_group_lines),
    ):
        if not expected.rows:
            with pytest.raises(ImportRejected):
                read_text(data, algorithm=Algorithm.MD5)
            return
        hashes = read_text(data, algorithm=Algorithm.MD5)

    assert as_rows(hashes) == expected.rows


@settings(max_examples=100, deadline=None)
@given(text_files(with_bad=True), st.integers(1, 300))
def test_text_reports_malformed_lines_by_number(
    file: tuple[bytes, list[int]], chunk_bytes: int
) -> None:
    data, bad_numbers = file
    reference = reference_parse(data.decode(), Algorithm.MD5)
    assert reference.bad_lines == bad_numbers

    with (
        mock.patch.object(_text, "_CHUNK_BYTES", chunk_bytes),
        mock.patch.object(_text, "_MIN_GROUP_LINES", 1),
    ):
        if not bad_numbers:
            return
        error = problems_of(data, algorithm=Algorithm.MD5, max_problems=1000)

    assert [problem.line for problem in error.problems] == bad_numbers
    assert error.total == len(bad_numbers)


# Seeded files large enough to have many chunks, fast path and slow path mixed.


def mixed_file(
    count: int, seed: int
) -> tuple[bytes, list[tuple[int, bytes, str | None]]]:
    """Mostly plain lines with CRLF; a few blanks, comments, categories, prefixes."""
    rng = np.random.default_rng(seed)
    lines: list[str] = []
    expected: list[tuple[int, bytes, str | None]] = []
    for digest in random_hashes(count, seed=seed):
        roll = rng.random()
        if roll < 0.02:
            lines.append("# comment")
        elif roll < 0.04:
            lines.append("")
        number = len(lines) + 1
        if roll < 0.9:
            lines.append(digest.hex())
            expected.append((number, digest, None))
        elif roll < 0.95:
            lines.append(f"  MD5:{digest.hex().upper()},category {int(roll * 100)}")
            expected.append((number, digest, f"category {int(roll * 100)}"))
        else:
            lines.append(f"md5 {digest.hex()}\t")
            expected.append((number, digest, None))
    return "\r\n".join(lines).encode(), expected


@pytest.mark.parametrize("chunk_bytes", [64, 1000, 4096, 1 << 20])
def test_text_large_mixed_file_matches_expectations(chunk_bytes: int) -> None:
    data, expected = mixed_file(5000, seed=7)

    with mock.patch.object(_text, "_CHUNK_BYTES", chunk_bytes):
        hashes = read_text(data)

    assert hashes.algorithm is Algorithm.MD5
    assert as_rows(hashes) == expected
    assert as_rows(hashes) == reference_parse(data.decode(), Algorithm.MD5).rows


def test_text_fast_path_and_line_parser_agree() -> None:
    data, _ = mixed_file(3000, seed=11)

    with mock.patch.object(_text, "_CHUNK_BYTES", 8192):
        fast = read_text(data)
        with mock.patch.object(_text, "_TEMPLATE_ATTEMPTS", 0):
            slow = read_text(data)

    assert as_rows(fast) == as_rows(slow)


@pytest.mark.parametrize("ending", [b"\n", b"\r\n"], ids=["lf", "crlf"])
def test_text_uniform_file_is_decoded_without_the_line_parser(ending: bytes) -> None:
    digests = random_hashes(2000, width=20)
    data = b"".join(b"sha1:" + digest.hex().encode() + ending for digest in digests)

    with (
        mock.patch.object(_text, "_CHUNK_BYTES", 4096),
        mock.patch.object(
            _text._TextReader, "_read_line", side_effect=AssertionError("slow path")
        ),
    ):
        hashes = read_text(data)

    assert hashes.algorithm is Algorithm.SHA1
    assert [row.tobytes() for row in hashes.hashes] == digests
    assert hashes.lines.tolist() == list(range(1, 2001))


# Line syntax.


@pytest.mark.parametrize(
    "line",
    [
        "{h}",
        "{H}",
        "  {h}  ",
        "\t{h}",
        "md5:{h}",
        "MD5 {h}",
        "md5,{h}",
        "md5;{h}",
        "Md5 : {h}",
        "MD5\t{h}",
    ],
)
def test_text_accepts_line_forms(line: str) -> None:
    (digest,) = random_hashes(1)
    text = "# list\n\n" + line.format(h=digest.hex(), H=digest.hex().upper()) + "\r\n"

    hashes = read_text(text.encode())

    assert as_rows(hashes) == [(3, digest, None)]
    assert hashes.hashes.dtype == np.uint8
    assert hashes.hashes.shape == (1, 16)


@pytest.mark.parametrize(
    ("suffix", "category"),
    [
        (",A1", "A1"),
        ("\tbaseline", "baseline"),
        (";other", "other"),
        (" , investigative material ", "investigative material"),
        (",", None),
    ],
    ids=["comma", "tab", "semicolon", "spaces", "empty"],
)
def test_text_reads_a_category_after_the_hash(
    suffix: str, category: str | None
) -> None:
    (digest,) = random_hashes(1)

    hashes = read_text(f"md5:{digest.hex()}{suffix}\n".encode())

    assert as_rows(hashes) == [(1, digest, category)]


def test_text_category_codes_index_category_names() -> None:
    digests = random_hashes(4)
    text = "".join(
        f"{d.hex()}{suffix}\n"
        for d, suffix in zip(digests, [",B", "", ",A", ",B"], strict=True)
    )

    hashes = read_text(text.encode())

    assert sorted(hashes.category_names) == ["A", "B"]
    assert [category for _, _, category in as_rows(hashes)] == ["B", None, "A", "B"]
    assert hashes.categories.dtype == np.int32


def test_text_lines_with_a_few_categories_take_the_fast_path() -> None:
    digests = random_hashes(3000)
    names = ["A1", "B2", "baseline", "investigative"]
    text = "".join(f"{d.hex()},{names[i % 4]}\n" for i, d in enumerate(digests))

    with (
        mock.patch.object(_text, "_CHUNK_BYTES", 8192),
        mock.patch.object(
            _text._TextReader, "_read_line", side_effect=AssertionError("slow path")
        ),
    ):
        hashes = read_text(text.encode())

    assert [category for _, _, category in as_rows(hashes)] == [
        names[i % 4] for i in range(3000)
    ]


def test_text_many_categories_match_the_reference_parser() -> None:
    digests = random_hashes(3000)
    text = "".join(f"{d.hex()};c{i % 37}\n" for i, d in enumerate(digests))

    with mock.patch.object(_text, "_CHUNK_BYTES", 8192):
        hashes = read_text(text.encode())

    assert as_rows(hashes) == reference_parse(text, Algorithm.MD5).rows


def test_text_keeps_duplicates_in_file_order() -> None:
    first, second = random_hashes(2)
    text = f"{first.hex()}\n{second.hex()}\n{first.hex().upper()}\n"

    hashes = read_text(text.encode())

    assert as_rows(hashes) == [(1, first, None), (2, second, None), (3, first, None)]


def test_text_reads_a_last_line_without_newline_and_a_bom() -> None:
    first, second = random_hashes(2)
    data = b"\xef\xbb\xbf" + f"{first.hex()}\n{second.hex()}".encode()

    hashes = read_text(data)

    assert as_rows(hashes) == [(1, first, None), (2, second, None)]


# Algorithms.


@pytest.mark.parametrize(
    "algorithm", [Algorithm.MD5, Algorithm.SHA1, Algorithm.SHA256], ids=str
)
def test_text_infers_the_algorithm_from_the_first_hash_length(
    algorithm: Algorithm,
) -> None:
    digests = random_hashes(3, width=algorithm.width)
    text = "# header\n" + "\n".join(d.hex() for d in digests)

    hashes = read_text(text.encode())

    assert hashes.algorithm is algorithm
    assert [row.tobytes() for row in hashes.hashes] == digests


def test_text_never_infers_pdq_from_length() -> None:
    (digest,) = random_hashes(1, width=32)

    assert read_text(digest.hex().encode()).algorithm is Algorithm.SHA256


@pytest.mark.parametrize(
    ("prefix", "algorithm"),
    [
        ("pdq:", Algorithm.PDQ),
        ("SHA-256 ", Algorithm.SHA256),
        ("sha1,", Algorithm.SHA1),
    ],
)
def test_text_takes_the_algorithm_a_prefix_names(
    prefix: str, algorithm: Algorithm
) -> None:
    (digest,) = random_hashes(1, width=algorithm.width)

    hashes = read_text(f"{prefix}{digest.hex()}\n".encode())

    assert hashes.algorithm is algorithm


def test_text_reads_pdq_when_asked() -> None:
    digests = random_hashes(3, width=32)
    text = "\n".join(d.hex() for d in digests)

    hashes = read_text(text.encode(), algorithm=Algorithm.PDQ)

    assert hashes.algorithm is Algorithm.PDQ


def test_text_settles_the_algorithm_on_the_first_line_that_tells_it() -> None:
    digests = random_hashes(2)
    text = f"{digests[0].hex()[:31]}\n{digests[1].hex()}\n"

    error = problems_of(text.encode())

    assert [str(problem) for problem in error.problems] == [
        "<stream>:1: expected 32 hex digits for md5, found 31"
    ]


def test_text_cannot_tell_the_algorithm_of_an_odd_length() -> None:
    error = problems_of(b"abcdef0123\n")

    assert error.problems[0].reason.startswith("Cannot tell the algorithm")


# Problems.


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("{h31}", "expected 32 hex digits for md5, found 31"),
        ("{h}0", "expected 32 hex digits for md5, found 33"),
        ("{hz}", "not hex: a hash holds only the digits 0-9 and letters a-f"),
        ("sha1:{h}", "hash type prefix 'sha1' in an import of md5 hashes"),
        ("xyz:{h}", "unknown hash type prefix 'xyz'"),
        (
            "{h}  photo.jpg",
            "expected a hex hash, optionally prefixed by its type "
            "(md5:HEX) and followed by a comma or tab and a category",
        ),
    ],
    ids=["short", "long", "not-hex", "other-type", "unknown-type", "md5sum"],
)
def test_text_reports_why_a_line_is_malformed(line: str, reason: str) -> None:
    (digest,) = random_hashes(1)
    digits = digest.hex()
    bad = line.format(h=digits, h31=digits[:31], hz="z" + digits[1:])
    data = f"{digits}\n\n{bad}\n{digits}\n".encode()

    error = problems_of(data, algorithm=Algorithm.MD5)

    assert [(p.line, p.reason) for p in error.problems] == [(3, reason)]
    assert digits not in str(error)


def test_text_keeps_max_problems_and_counts_all() -> None:
    text = "".join(f"bad line {i}\n" for i in range(50))

    error = problems_of(text.encode(), algorithm=Algorithm.MD5, max_problems=3)

    assert [problem.line for problem in error.problems] == [1, 2, 3]
    assert error.total == 50
    assert "and 47 more" in str(error)


def test_text_rejects_an_empty_input() -> None:
    with pytest.raises(ImportRejected, match="is empty"):
        read_text(b"")


def test_text_rejects_a_file_without_hashes() -> None:
    with pytest.raises(ImportRejected, match="holds no hashes") as caught:
        read_text(b"# nothing here\n\n\r\n")

    assert not isinstance(caught.value, MalformedInput)


def test_text_rejects_a_line_too_long_for_a_hash_list() -> None:
    with (
        mock.patch.object(_text, "_CHUNK_BYTES", 64),
        mock.patch.object(_text, "_MAX_LINE_BYTES", 256),
        pytest.raises(ImportRejected, match="longer than 256 bytes"),
    ):
        read_text(b"0" * 1000)
