"""CSV hash lists with a header row, such as the Interpol ICSE export.

Layout. The first line is the header. Its delimiter is whichever of `,`, `;`
and tab it holds most often (a comma if it holds none); the csv module reads
quoted fields. Every later row is one record. A hash's line number is the
line on which its row ends; the header is line 1.

Hash columns. Header names are matched ignoring case, spaces, `-` and `_`, so
`SHA-256`, `sha256` and `SHA256 Hash` all name SHA-256:
- `hash_column` given: that column, of `algorithm`, else of the algorithm its
  name says, else of the algorithm the first hash in it tells by its length;
- else `algorithm` given: the column named after it, else a column `hash`;
- else every column named after an algorithm (MD5, SHA1, SHA256, PDQ), each
  giving hashes of its own algorithm; if there is none, a column `hash`.
An empty hash cell is skipped, not an error: ICSE rows may lack an MD5.

Categories. From `category_column` if given; else from a column `category`;
else from the ICSE `Baseline` column, whose true values (1, true, yes, y)
give the category "baseline" and whose false values (0, false, no, n) give
"non-baseline". An empty Baseline cell gives no category, and any other value
is a Problem: guessing would decide which hashes a baseline-only tenant
matches.

Quality. A column `quality` (or `PDQ quality`) gives each PDQ hash of its row
the quality score its hasher reported, a whole number from 0 to 100; an
empty cell means unknown. The importer can hold back low-quality hashes
(`import --min-quality`). Other algorithms ignore the column.
"""

from __future__ import annotations

import array
import csv
import dataclasses
import re
from dataclasses import dataclass
from typing import BinaryIO, TextIO

import numpy as np

from hashcheck._algorithms import Algorithm, infer_algorithm
from hashcheck_server.errors import ImportRejected
from hashcheck_server.formats._hex import NOT_HEX_REASON, BadHash, is_hex
from hashcheck_server.formats._parsed import (
    NO_CATEGORY,
    CategoryTable,
    Destination,
    Destinations,
    ParsedFile,
    finish_file,
    reject_empty,
)
from hashcheck_server.formats._problems import ProblemLog
from hashcheck_server.formats._source import Progress, text_reader

__all__ = ["read_csv"]

_DELIMITERS = (",", ";", "\t")
_NAME_NOISE = re.compile(r"[\s_-]")
_TRUE_VALUES = frozenset({"1", "true", "yes", "y"})
_FALSE_VALUES = frozenset({"0", "false", "no", "n"})
_BASELINE = "baseline"
_NON_BASELINE = "non-baseline"
_QUALITY_COLUMNS = ("quality", "pdq quality")
_UNKNOWN_QUALITY = -1
_HIGHEST_QUALITY = 100


@dataclass
class _HashColumn:
    """A column of hashes; `algorithm` is None until its first hash tells it."""

    index: int
    name: str
    algorithm: Algorithm | None
    destination: Destination | None = None


@dataclass(frozen=True)
class _CategorySource:
    """Where a row's category comes from: a plain column or a Baseline flag."""

    index: int
    name: str
    is_baseline_flag: bool


def read_csv(
    stream: BinaryIO,
    source: str,
    *,
    algorithm: Algorithm | None,
    hash_column: str | None,
    category_column: str | None,
    progress: Progress | None,
    max_problems: int,
) -> ParsedFile:
    """Read a CSV file with a header row; see the module docstring."""
    with text_reader(stream, progress) as text:
        delimiter, header = _read_header(text, source)
        reader = _CsvReader(
            hash_columns=_hash_columns(header, source, algorithm, hash_column),
            category=_category_source(header, source, category_column),
            problems=ProblemLog(source, max_problems),
            quality=_quality_column(header),
        )
        _read_rows(text, delimiter, reader, source)

    return reader.finish(source, algorithm)


def _read_header(text: TextIO, source: str) -> tuple[str, list[str]]:
    """The delimiter and the column names, from the first line."""
    header_line = text.readline()
    if not header_line:
        raise reject_empty(source)

    delimiter = max(_DELIMITERS, key=header_line.count)
    header = next(csv.reader([header_line], delimiter=delimiter), [])
    return delimiter, [name.strip() for name in header]


def _read_rows(text: TextIO, delimiter: str, reader: _CsvReader, source: str) -> None:
    rows = csv.reader(text, delimiter=delimiter)
    try:
        for row in rows:
            # The header was read apart, so the csv reader counts from line 2.
            reader.read_row(row, rows.line_num + 1)
    except csv.Error as error:
        raise ImportRejected(
            f"{source}:{rows.line_num + 1}: {error}; the file is not a readable CSV."
        ) from error


def _normalized(name: str) -> str:
    return _NAME_NOISE.sub("", name).casefold()


def _algorithm_named(name: str) -> Algorithm | None:
    """The algorithm a column header names (`MD5`, `SHA-1 hash`), if any."""
    normalized = _normalized(name).removesuffix("hash")
    for algorithm in Algorithm:
        if normalized == algorithm.value:
            return algorithm
    return None


def _find_column(header: list[str], name: str) -> int | None:
    wanted = _normalized(name)
    for index, column in enumerate(header):
        if _normalized(column) == wanted:
            return index
    return None


def _missing_column(source: str, header: list[str], what: str) -> ImportRejected:
    columns = ", ".join(repr(name) for name in header)
    return ImportRejected(
        f"{source} has no {what}; its columns are {columns}. "
        "Name the column to read, or check the file."
    )


def _hash_columns(
    header: list[str],
    source: str,
    algorithm: Algorithm | None,
    hash_column: str | None,
) -> list[_HashColumn]:
    """The columns to read hashes from; see the module docstring for the rules."""
    if hash_column is not None:
        index = _find_column(header, hash_column)
        if index is None:
            raise _missing_column(source, header, f"column {hash_column!r}")
        named = algorithm or _algorithm_named(header[index])
        return [_HashColumn(index, header[index], named)]

    by_algorithm: dict[Algorithm, int] = {}
    for index, name in enumerate(header):
        named = _algorithm_named(name)
        if named is not None and (algorithm is None or named is algorithm):
            by_algorithm.setdefault(named, index)
    if by_algorithm:
        return [
            _HashColumn(index, header[index], named)
            for named, index in by_algorithm.items()
        ]

    index = _find_column(header, "hash")
    if index is None:
        wanted = f"{algorithm.value} or hash" if algorithm else "hash"
        raise _missing_column(source, header, f"{wanted} column")
    return [_HashColumn(index, header[index], algorithm)]


def _category_source(
    header: list[str], source: str, category_column: str | None
) -> _CategorySource | None:
    if category_column is not None:
        index = _find_column(header, category_column)
        if index is None:
            raise _missing_column(source, header, f"column {category_column!r}")
        return _CategorySource(index, header[index], is_baseline_flag=False)

    for name, is_flag in (("category", False), ("baseline", True)):
        index = _find_column(header, name)
        if index is not None:
            return _CategorySource(index, header[index], is_baseline_flag=is_flag)
    return None


def _quality_column(header: list[str]) -> int | None:
    for name in _QUALITY_COLUMNS:
        index = _find_column(header, name)
        if index is not None:
            return index
    return None


def _quality(value: str) -> int:
    """A quality score cell: 0-100, or unknown when empty."""
    if not value:
        return _UNKNOWN_QUALITY
    if value.isascii() and value.isdigit() and int(value) <= _HIGHEST_QUALITY:
        return int(value)
    raise BadHash(f"quality must be a whole number from 0 to 100, not {value[:8]!r}")


class _CsvReader:
    """Rows to hashes, one builder per algorithm."""

    def __init__(
        self,
        *,
        hash_columns: list[_HashColumn],
        category: _CategorySource | None,
        problems: ProblemLog,
        quality: int | None = None,
    ) -> None:
        self._hash_columns = hash_columns
        self._category = category
        self._problems = problems
        self._categories = CategoryTable()
        self._destinations = Destinations()
        self._records = 0
        #: The quality column, and the score of each PDQ hash read, in order.
        self._quality = quality
        self._qualities = array.array("h")

    def read_row(self, row: list[str], line: int) -> None:
        if not row:
            return
        self._records += 1

        try:
            category = self._category_code(row)
            quality = self._quality_of(row)
        except BadHash as bad:
            self._problems.add(line, str(bad))
            return

        for column in self._hash_columns:
            self._read_cell(row, column, category, line, quality)

    def finish(self, source: str, algorithm: Algorithm | None) -> ParsedFile:
        parsed = finish_file(
            source=source,
            format="csv",
            records=self._records,
            builders=self._destinations.builders(),
            categories=self._categories,
            problems=self._problems,
            algorithm=algorithm,
        )
        pdq = parsed.by_algorithm.get(Algorithm.PDQ)
        if pdq is not None and self._quality is not None:
            qualities = np.frombuffer(self._qualities, dtype=np.int16)
            parsed.by_algorithm[Algorithm.PDQ] = dataclasses.replace(
                pdq, qualities=qualities
            )
        return parsed

    def _quality_of(self, row: list[str]) -> int:
        if self._quality is None:
            return _UNKNOWN_QUALITY
        return _quality(_cell(row, self._quality))

    def _category_code(self, row: list[str]) -> int:
        if self._category is None:
            return NO_CATEGORY

        value = _cell(row, self._category.index)
        if not self._category.is_baseline_flag:
            return self._categories.code(value)
        return self._categories.code(_baseline_category(value, self._category.name))

    def _read_cell(
        self,
        row: list[str],
        column: _HashColumn,
        category: int,
        line: int,
        quality: int,
    ) -> None:
        digits = _cell(row, column.index)
        if not digits:
            return

        try:
            destination = column.destination or self._settle(column, digits)
            digest = destination.decoder.decode(digits)
        except BadHash as bad:
            self._problems.add(line, f"{column.name}: {bad}")
            return

        destination.builder.add(digest, category, line)
        if self._quality is not None and column.algorithm is Algorithm.PDQ:
            self._qualities.append(quality)

    def _settle(self, column: _HashColumn, first_hash: str) -> Destination:
        """Fix a column's algorithm, from its name or else from its first hash."""
        algorithm = column.algorithm or _first_hash_algorithm(first_hash)
        column.algorithm = algorithm
        column.destination = self._destinations[algorithm]
        return column.destination


def _cell(row: list[str], index: int) -> str:
    return row[index].strip() if index < len(row) else ""


def _baseline_category(value: str, column: str) -> str | None:
    """The category an ICSE Baseline flag stands for; None for an empty cell."""
    flag = value.casefold()
    if not flag:
        return None
    if flag in _TRUE_VALUES:
        return _BASELINE
    if flag in _FALSE_VALUES:
        return _NON_BASELINE
    raise BadHash(
        f"{column}: expected 1/0, true/false, yes/no or y/n, found {value[:20]!r}"
    )


def _first_hash_algorithm(digits: str) -> Algorithm:
    """The algorithm of a hash column whose name does not say it."""
    if not is_hex(digits):
        raise BadHash(NOT_HEX_REASON)
    try:
        return infer_algorithm(digits)
    except ValueError as error:
        raise BadHash(str(error)) from None
