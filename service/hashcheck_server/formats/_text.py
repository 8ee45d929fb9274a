"""Plain hash lists: one hex hash a line, read in chunks with a vectorised fast path.

A line, stripped of surrounding whitespace (a CR included), is one of:

    (empty)                          skipped
    # any text                       a comment, skipped
    HEX                              a hash
    TYPE SEP HEX                     a hash named by type: md5:HEX, MD5 HEX, sha1;HEX
    [TYPE SEP] HEX SEP2 CATEGORY     a hash with a category

HEX is 2 * width hex digits in any case. TYPE is an algorithm name in any case
(md5, SHA-1, sha256, pdq) and must name the import's algorithm; SEP is `:`,
`;`, `,` or whitespace. SEP2 is `,`, `;` or a tab: text after a plain space is
rejected, so `md5sum` output (`HEX  filename`) does not turn file names into
categories. Anything else is a Problem on that line.

Chunks. The file is read _CHUNK_BYTES at a time and cut after the last newline;
the rest is carried into the next chunk. Every chunk thus holds whole lines,
and the number of a line is the count of newlines before its chunk, plus its
index in the chunk, plus one. Working memory is a few chunks, whatever the
file's size; only the output arrays grow with it.

Fast path. In a hash list nearly every line looks alike: the digits at the same
offset, the same bytes around them (a prefix, a category, a CR, the newline).
Lines are taken in groups of one length: if all lines of a chunk have one
length, the chunk is reshaped into rows without a copy; otherwise the lines of
the few most common lengths are gathered into rows. In each group a template
line is picked and parsed by the per-line parser; every row with the
template's bytes outside the digits and hex digits inside is then decoded in
one numpy step (see _hex) and gets the template's category. Rows left over get
another template, a few times over, so that a few categories stay fast.

Slow path. Every other line (blank, comment, of a rare length or shape,
malformed) goes through the per-line parser, which defines what a line means:
the fast path accepts only lines that the parser accepts, with the same result.
Category codes are handed out in the order the reader meets the categories,
which is not always file order.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np
import numpy.typing as npt

from hashcheck._algorithms import Algorithm, infer_algorithm
from hashcheck_server.errors import ImportRejected
from hashcheck_server.formats._hex import (
    NOT_HEX_REASON,
    BadHash,
    decode_hex,
    decode_hex_rows,
    is_hex,
)
from hashcheck_server.formats._parsed import (
    CategoryTable,
    HashesBuilder,
    ParsedFile,
    finish_file,
    reject_empty,
)
from hashcheck_server.formats._problems import ProblemLog
from hashcheck_server.formats._source import Progress, remaining_bytes

__all__ = ["read_text"]

# Big enough that numpy's per-call overhead vanishes, small enough to keep
# memory flat. Tests shrink it to put chunk boundaries everywhere.
_CHUNK_BYTES = 4 << 20

# A longer line cannot be a hash line; refusing it keeps a file without
# newlines (a binary file, minified JSON) from being buffered whole.
_MAX_LINE_BYTES = 1 << 20

# The fast path's reach in a chunk whose lines differ in length: the most
# common lengths, each with enough lines to be worth a numpy pass, and a few
# templates per length (one per category or prefix); rows tried per template.
_MAX_GROUPS = 4
_MIN_GROUP_LINES = 8
_TEMPLATES_PER_GROUP = 4
_TEMPLATE_ATTEMPTS = 8

# Lines longer than this are never template rows; the cap keeps the search for
# the most common line length from allocating a count per possible length.
_MAX_TEMPLATE_BYTES = 1024

_NEWLINE = ord("\n")
_UTF8_BOM = b"\xef\xbb\xbf"

_LINE = re.compile(
    r"""
    \s*
    (?:
        (?P<prefix>[A-Za-z][\w-]{0,9})
        (?:\s*[:;,]\s*|\s+)
        (?=[^\s:;,])
    )?
    (?P<digits>[^\s:;,]+)
    (?:\s*[,;\t]\s*(?P<category>.*?))?
    \s*
    """,
    re.VERBOSE,
)

_LAYOUT_REASON = (
    "expected a hex hash, optionally prefixed by its type (md5:HEX) and "
    "followed by a comma or tab and a category"
)


def read_text(
    stream: BinaryIO,
    source: str,
    *,
    algorithm: Algorithm | None,
    progress: Progress | None,
    max_problems: int,
) -> ParsedFile:
    """Read a plain hash list; see the module docstring for the line syntax."""
    problems = ProblemLog(source, max_problems)
    reader = _TextReader(algorithm, problems, remaining_bytes(stream))

    for chunk in _whole_line_chunks(stream, source, progress):
        reader.read_chunk(chunk)

    if reader.lines_read == 0:
        raise reject_empty(source)
    return reader.finish(source)


def _whole_line_chunks(
    stream: BinaryIO, source: str, progress: Progress | None
) -> Iterator[bytes]:
    """The stream in chunks that each end with a newline, the last one included."""
    carry = b""
    consumed = 0
    while block := stream.read(_CHUNK_BYTES):
        consumed += len(block)
        data = carry + block if carry else block

        cut = data.rfind(b"\n") + 1
        carry = data[cut:]
        if len(carry) > _MAX_LINE_BYTES:
            raise ImportRejected(
                f"{source} has a line longer than {_MAX_LINE_BYTES} bytes; "
                "a hash list has one hash a line. Check the format."
            )

        if cut:
            yield data[:cut]
        if progress is not None:
            progress(consumed)

    if carry:
        yield carry + b"\n"


@dataclass(frozen=True, slots=True)
class _Line:
    """One hash line, split into its parts."""

    prefix: str | None
    digits: str
    digits_start: int
    category: str | None


def _split_line(text: str) -> _Line | None:
    """The parts of a line; None for blank and comment lines."""
    stripped = text.strip()
    if not stripped or stripped.startswith("#"):
        return None

    match = _LINE.fullmatch(text)
    if match is None:
        raise BadHash(_LAYOUT_REASON)

    category = (match["category"] or "").strip(" \t,;")
    return _Line(
        prefix=match["prefix"],
        digits=match["digits"],
        digits_start=match.start("digits"),
        category=category or None,
    )


def _named_algorithm(prefix: str) -> Algorithm:
    try:
        return Algorithm.from_name(prefix)
    except ValueError:
        raise BadHash(f"unknown hash type prefix {prefix!r}") from None


def _algorithm_of_first_hash(line: _Line) -> Algorithm | None:
    """The algorithm a line names or implies, if it can tell (PDQ must be named)."""
    if line.prefix is not None:
        try:
            return _named_algorithm(line.prefix)
        except BadHash:
            return None

    if not is_hex(line.digits):
        return None
    try:
        return infer_algorithm(line.digits)
    except ValueError:
        return None


@dataclass(frozen=True, slots=True)
class _RowGroup:
    """Lines of one length, one per row, with their positions in the chunk."""

    positions: npt.NDArray[np.int64]
    rows: npt.NDArray[np.uint8]


@dataclass(frozen=True, slots=True)
class _ChunkLayout:
    """Where the lines of a chunk are, and its most common line lengths as rows.

    `starts` has one entry per line plus the chunk's length, so line i is
    `chunk[starts[i]:starts[i + 1]]`, newline included.
    """

    starts: npt.NDArray[np.int64]
    groups: list[_RowGroup]


def _chunk_layout(data: npt.NDArray[np.uint8], count: int) -> _ChunkLayout:
    uniform = _uniform_rows(data, count)
    if uniform is not None:
        starts = np.arange(count + 1, dtype=np.int64) * uniform.shape[1]
        everything = _RowGroup(np.arange(count, dtype=np.int64), uniform)
        return _ChunkLayout(starts=starts, groups=[everything])

    newlines = np.flatnonzero(data == _NEWLINE)
    starts = np.concatenate(([0], newlines + 1)).astype(np.int64)
    return _ChunkLayout(starts=starts, groups=_groups_by_length(data, starts))


def _uniform_rows(
    data: npt.NDArray[np.uint8], count: int
) -> npt.NDArray[np.uint8] | None:
    """The chunk as a (lines, length) view if every line has the same length."""
    if count == 0 or len(data) % count:
        return None

    rows = data.reshape(count, len(data) // count)
    # Exactly `count` newlines, and one ends every row: so none is inside a row.
    if not (rows[:, -1] == _NEWLINE).all():
        return None
    return rows


def _groups_by_length(
    data: npt.NDArray[np.uint8], starts: npt.NDArray[np.int64]
) -> list[_RowGroup]:
    """The lines of the most common lengths, gathered into rows per length."""
    lengths = np.diff(starts)
    counts = np.bincount(np.minimum(lengths, _MAX_TEMPLATE_BYTES))
    most_common = np.argsort(counts, kind="stable")[::-1][:_MAX_GROUPS]

    groups = []
    for length in most_common.tolist():
        if counts[length] < _MIN_GROUP_LINES:
            break
        positions = np.flatnonzero(lengths == length)
        # Indexing a window view copies only the chosen rows, not a row per byte.
        windows = np.lib.stride_tricks.sliding_window_view(data, length)
        groups.append(_RowGroup(positions, windows[starts[positions]]))
    return groups


@dataclass(frozen=True, slots=True)
class _Template:
    """The shape the fast path looks for: a line's bytes, and where its digits are.

    Rows equal to `frame` outside [start, stop) and hex inside it are hash
    lines with the template's prefix and category.
    """

    frame: npt.NDArray[np.uint8]
    start: int
    stop: int
    category: int

    def decode(
        self, rows: npt.NDArray[np.uint8]
    ) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.uint8]]:
        """Which rows have this shape, and their hashes."""
        hashes, matches = decode_hex_rows(rows[:, self.start : self.stop])
        matches &= _rows_equal(rows[:, : self.start], self.frame[: self.start])
        matches &= _rows_equal(rows[:, self.stop :], self.frame[self.stop :])
        return matches, hashes


def _rows_equal(
    rows: npt.NDArray[np.uint8], expected: npt.NDArray[np.uint8]
) -> npt.NDArray[np.bool_]:
    if rows.shape[1] == 0:
        return np.ones(len(rows), dtype=np.bool_)
    return np.asarray((rows == expected).all(axis=1))


class _TextReader:
    """The state carried from chunk to chunk: algorithm, line count, results."""

    def __init__(
        self,
        algorithm: Algorithm | None,
        problems: ProblemLog,
        size_bytes: int | None,
    ) -> None:
        self._algorithm: Algorithm | None = None
        self._builder: HashesBuilder | None = None
        self._problems = problems
        self._categories = CategoryTable()
        self._size_bytes = size_bytes
        self.lines_read = 0
        if algorithm is not None:
            self._settle_algorithm(algorithm)

    def read_chunk(self, chunk: bytes) -> None:
        """Parse one chunk of whole lines, each ending with a newline."""
        if self.lines_read == 0 and chunk.startswith(_UTF8_BOM):
            chunk = chunk[len(_UTF8_BOM) :]
        if self._algorithm is None:
            self._infer_algorithm(chunk)

        count = chunk.count(b"\n")
        layout = _chunk_layout(np.frombuffer(chunk, dtype=np.uint8), count)
        found = _ChunkHashes()
        if self._algorithm is not None:
            for group in layout.groups:
                self._decode_alike_lines(group, found)

        self._read_other_lines(chunk, layout, found)
        self._add_in_line_order(found)
        self.lines_read += count

    def finish(self, source: str) -> ParsedFile:
        builders = [] if self._builder is None else [self._builder]
        return finish_file(
            source=source,
            format="text",
            records=sum(len(builder) for builder in builders),
            builders=builders,
            categories=self._categories,
            problems=self._problems,
            algorithm=self._algorithm,
        )

    def _infer_algorithm(self, chunk: bytes) -> None:
        """Settle the algorithm from the first line in the chunk that tells it."""
        for raw in chunk.split(b"\n"):
            try:
                line = _split_line(raw.decode("utf-8", "replace"))
            except BadHash:
                continue
            algorithm = None if line is None else _algorithm_of_first_hash(line)
            if algorithm is not None:
                self._settle_algorithm(algorithm)
                return

    def _settle_algorithm(self, algorithm: Algorithm) -> None:
        # Every hash line takes at least its digits and a newline, so the file
        # size bounds the hash count; unused capacity is never touched.
        capacity = 0
        if self._size_bytes is not None:
            capacity = self._size_bytes // (2 * algorithm.width + 1) + 1

        self._algorithm = algorithm
        self._builder = HashesBuilder(algorithm, capacity)

    def _decode_alike_lines(self, group: _RowGroup, found: _ChunkHashes) -> None:
        """Decode the lines of one length that match a template, a few deep.

        A template covers the lines that differ from it only in their digits,
        so a list with a few categories or prefixes needs one for each.
        """
        positions, rows = group.positions, group.rows
        for _ in range(_TEMPLATES_PER_GROUP):
            template = self._find_template(rows[:_TEMPLATE_ATTEMPTS])
            if template is None:
                return

            matches, hashes = template.decode(rows)
            if matches.all():
                found.add(positions, hashes, template.category)
                return

            found.add(positions[matches], hashes[matches], template.category)
            positions, rows = positions[~matches], rows[~matches]

    def _find_template(self, rows: npt.NDArray[np.uint8]) -> _Template | None:
        for row in rows:
            template = self._template_from(row)
            if template is not None:
                return template
        return None

    def _template_from(self, row: npt.NDArray[np.uint8]) -> _Template | None:
        """A template from a row that the line parser reads as a hash line."""
        raw = row.tobytes()
        if not raw.isascii():
            return None

        try:
            line = _split_line(raw.decode("ascii"))
            if line is None:
                return None
            decode_hex(line.digits, self._check_line(line))
        except BadHash:
            return None

        return _Template(
            frame=row.copy(),
            start=line.digits_start,
            stop=line.digits_start + len(line.digits),
            category=self._categories.code(line.category),
        )

    def _read_other_lines(
        self, chunk: bytes, layout: _ChunkLayout, found: _ChunkHashes
    ) -> None:
        """Parse, one by one, the lines that no template covered."""
        count = len(layout.starts) - 1
        others = np.flatnonzero(~found.covers(count))

        slow = _SlowLines()
        starts = layout.starts[others].tolist()
        stops = layout.starts[others + 1].tolist()
        for position, start, stop in zip(others.tolist(), starts, stops, strict=True):
            self._read_line(chunk[start:stop], position, slow)

        if len(slow) and self._algorithm is not None:
            width = self._algorithm.width
            found.add(slow.positions(), slow.hashes(width), slow.categories())

    def _read_line(self, raw: bytes, position: int, slow: _SlowLines) -> None:
        try:
            line = _split_line(raw.decode("utf-8", "replace"))
            if line is None:
                return
            digest = decode_hex(line.digits, self._check_line(line))
        except BadHash as bad:
            self._problems.add(self.lines_read + position + 1, str(bad))
            return

        slow.add(position, digest, self._categories.code(line.category))

    def _check_line(self, line: _Line) -> Algorithm:
        """The import's algorithm, if the line's prefix agrees with it."""
        if line.prefix is not None:
            named = _named_algorithm(line.prefix)
            if self._algorithm is not None and named is not self._algorithm:
                raise BadHash(
                    f"hash type prefix {line.prefix!r} in an import of "
                    f"{self._algorithm.value} hashes"
                )

        if self._algorithm is None:
            # Only lines that could not settle the algorithm get here.
            if not is_hex(line.digits):
                raise BadHash(NOT_HEX_REASON)
            raise BadHash(_undecidable_reason(line.digits))
        return self._algorithm

    def _add_in_line_order(self, found: _ChunkHashes) -> None:
        if self._builder is None or not found:
            return

        positions, hashes, categories = found.in_line_order()
        lines = positions + (self.lines_read + 1)
        self._builder.add_block(hashes, categories, lines)


def _undecidable_reason(digits: str) -> str:
    try:
        infer_algorithm(digits)
    except ValueError as error:
        return str(error)
    return "the hash type cannot be told from this line"


_Part = tuple[npt.NDArray[np.int64], npt.NDArray[np.uint8], npt.NDArray[np.int32]]


class _ChunkHashes:
    """Hashes found in one chunk, by template or line by line, with positions."""

    def __init__(self) -> None:
        self._parts: list[_Part] = []

    def __bool__(self) -> bool:
        return bool(self._parts)

    def add(
        self,
        positions: npt.NDArray[np.int64],
        hashes: npt.NDArray[np.uint8],
        categories: npt.NDArray[np.int32] | int,
    ) -> None:
        if not len(positions):
            return
        if isinstance(categories, int):
            categories = np.full(len(positions), categories, dtype=np.int32)
        self._parts.append((positions, hashes, categories))

    def covers(self, count: int) -> npt.NDArray[np.bool_]:
        """Which of the chunk's `count` lines have a hash already."""
        covered = np.zeros(count, dtype=np.bool_)
        for positions, _, _ in self._parts:
            covered[positions] = True
        return covered

    def in_line_order(self) -> _Part:
        if len(self._parts) == 1:
            return self._parts[0]

        positions = np.concatenate([part[0] for part in self._parts])
        hashes = np.concatenate([part[1] for part in self._parts])
        categories = np.concatenate([part[2] for part in self._parts])
        # Each part is in line order, but parts interleave: one sort merges them.
        order = np.argsort(positions, kind="stable")
        return positions[order], hashes[order], categories[order]


class _SlowLines:
    """Hashes parsed line by line in one chunk, with their positions in it."""

    def __init__(self) -> None:
        self._positions: list[int] = []
        self._digests: list[bytes] = []
        self._categories: list[int] = []

    def __len__(self) -> int:
        return len(self._positions)

    def add(self, position: int, digest: bytes, category: int) -> None:
        self._positions.append(position)
        self._digests.append(digest)
        self._categories.append(category)

    def positions(self) -> npt.NDArray[np.int64]:
        return np.array(self._positions, dtype=np.int64)

    def hashes(self, width: int) -> npt.NDArray[np.uint8]:
        joined = np.frombuffer(b"".join(self._digests), dtype=np.uint8)
        return joined.reshape(-1, width)

    def categories(self) -> npt.NDArray[np.int32]:
        return np.array(self._categories, dtype=np.int32)
