"""What a reader returns, and the builders readers fill while they read.

A ParsedHashes holds the hashes of one algorithm as parallel numpy arrays, one
row per hash in file order: `hashes[i]` came from line (or record) `lines[i]`
with category `category_names[categories[i]]`, or no category where
`categories[i] == -1`. Duplicates are kept; merging is the store's job.

Builders take hashes either a block at a time (the text reader) or one at a
time (CSV and VICS). Both end up in one set of arrays per algorithm, which
grow by doubling; single hashes wait in compact Python arrays and move over
in batches, always before the next block, so file order holds.
"""

from __future__ import annotations

import array
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt

from hashcheck._algorithms import Algorithm
from hashcheck_server.errors import ImportRejected
from hashcheck_server.formats._hex import HexDecoder
from hashcheck_server.formats._problems import ProblemLog

__all__ = [
    "NO_CATEGORY",
    "CategoryTable",
    "Destination",
    "Destinations",
    "HashesBuilder",
    "ParsedFile",
    "ParsedHashes",
    "finish_file",
    "reject_empty",
]

NO_CATEGORY = -1

_Scalar = TypeVar("_Scalar", bound=np.generic)

# Single hashes wait in compact Python arrays and move to numpy in batches.
_PENDING_LIMIT = 1 << 16
_INITIAL_CAPACITY = 1 << 16


# eq=False: the generated __eq__ would compare numpy arrays, whose truth value
# is ambiguous; identity is the only comparison that cannot raise.
@dataclass(frozen=True, eq=False)
class ParsedHashes:
    """The hashes of one algorithm in one file, as parallel arrays in file order."""

    algorithm: Algorithm
    hashes: npt.NDArray[np.uint8]
    categories: npt.NDArray[np.int32]
    category_names: tuple[str, ...]
    lines: npt.NDArray[np.int64]
    #: PDQ: each hash's quality score (0-100), -1 where the file gave none;
    #: None when the file has no quality scores at all.
    qualities: npt.NDArray[np.int16] | None = None

    def __post_init__(self) -> None:
        count = len(self.lines)
        _check_array("hashes", self.hashes, (count, self.algorithm.width), np.uint8)
        _check_array("categories", self.categories, (count,), np.int32)
        _check_array("lines", self.lines, (count,), np.int64)
        if self.qualities is not None:
            _check_array("qualities", self.qualities, (count,), np.int16)


def _check_array(
    name: str,
    values: npt.NDArray[Any],
    shape: tuple[int, ...],
    dtype: type[np.generic],
) -> None:
    if values.shape != shape or values.dtype != dtype:
        raise ValueError(
            f"ParsedHashes.{name} must have shape {shape} and dtype "
            f"{np.dtype(dtype)}, not {values.shape} {values.dtype}."
        )


@dataclass(frozen=True)
class ParsedFile:
    """Every hash read from one file, by algorithm.

    Formats with tombstones (NCMEC) also say what the file withdraws:
    `withdrawn` hashes by algorithm and `withdrawn_ids` of earlier entries;
    and, for entries that carry an id, `record_ids` maps the id to its
    hashes so that a later tombstone naming only the id can withdraw them.
    `skipped` counts records passed over because they hold no hash to read
    (NCMEC entries with only PhotoDNA, say); `skipped_reason` says why, as in
    "skipped 3 entries without an md5 fingerprint".
    """

    source: str
    format: str
    records: int
    by_algorithm: dict[Algorithm, ParsedHashes]
    withdrawn: dict[Algorithm, npt.NDArray[np.uint8]] = field(default_factory=dict)
    withdrawn_ids: tuple[str, ...] = ()
    record_ids: dict[str, tuple[tuple[Algorithm, bytes], ...]] = field(
        default_factory=dict
    )
    skipped: int = 0
    skipped_reason: str = ""


class CategoryTable:
    """Category names in the order a reader met them, each with an int32 code."""

    def __init__(self) -> None:
        self._codes: dict[str, int] = {}

    def code(self, name: str | None) -> int:
        """The code of a category name; NO_CATEGORY for None or an empty name."""
        if not name:
            return NO_CATEGORY
        return self._codes.setdefault(name, len(self._codes))

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self._codes)


class HashesBuilder:
    """Collects the hashes of one algorithm, in file order, into growing arrays.

    Blocks are copied into arrays that double when full, so a file costs about
    one copy of its hashes rather than a copy per block plus a final
    concatenation. A `capacity` that bounds the count up front (the text
    reader derives one from the file size) avoids regrowing altogether; pages
    of it that are never written are never touched.
    """

    def __init__(self, algorithm: Algorithm, capacity: int = 0) -> None:
        self.algorithm = algorithm
        self._count = 0
        self._hashes = np.empty((capacity, algorithm.width), dtype=np.uint8)
        self._categories = np.empty(capacity, dtype=np.int32)
        self._lines = np.empty(capacity, dtype=np.int64)
        self._pending_hashes = bytearray()
        self._pending_categories = array.array("i")
        self._pending_lines = array.array("q")

    def __len__(self) -> int:
        return self._count + len(self._pending_lines)

    def add(self, digest: bytes, category: int, line: int) -> None:
        """Append one hash (exactly `algorithm.width` bytes)."""
        self._pending_hashes += digest
        self._pending_categories.append(category)
        self._pending_lines.append(line)
        if len(self._pending_lines) >= _PENDING_LIMIT:
            self._flush_pending()

    def add_block(
        self,
        hashes: npt.NDArray[np.uint8],
        categories: npt.NDArray[np.int32],
        lines: npt.NDArray[np.int64],
    ) -> None:
        """Append parallel arrays of hashes, category codes and line numbers."""
        self._flush_pending()
        self._append(hashes, categories, lines)

    def build(self, categories: CategoryTable) -> ParsedHashes:
        """The collected hashes, with only the category names they use."""
        self._flush_pending()

        count = self._count
        codes, names = _compact_categories(self._categories[:count], categories.names)
        return ParsedHashes(
            algorithm=self.algorithm,
            hashes=self._hashes[:count],
            categories=codes,
            category_names=names,
            lines=self._lines[:count],
        )

    def _append(
        self,
        hashes: npt.NDArray[np.uint8],
        categories: npt.NDArray[np.int32],
        lines: npt.NDArray[np.int64],
    ) -> None:
        start = self._count
        stop = start + len(lines)
        self._reserve(stop)

        self._hashes[start:stop] = hashes
        self._categories[start:stop] = categories
        self._lines[start:stop] = lines
        self._count = stop

    def _reserve(self, needed: int) -> None:
        capacity = len(self._lines)
        if needed <= capacity:
            return

        capacity = max(needed, 2 * capacity, _INITIAL_CAPACITY)
        count = self._count
        self._hashes = _regrown(self._hashes, capacity, count)
        self._categories = _regrown(self._categories, capacity, count)
        self._lines = _regrown(self._lines, capacity, count)

    def _flush_pending(self) -> None:
        if not self._pending_lines:
            return

        hashes = np.frombuffer(self._pending_hashes, dtype=np.uint8)
        self._append(
            hashes.reshape(-1, self.algorithm.width),
            np.frombuffer(self._pending_categories, dtype=np.int32),
            np.frombuffer(self._pending_lines, dtype=np.int64),
        )

        self._pending_hashes = bytearray()
        self._pending_categories = array.array("i")
        self._pending_lines = array.array("q")


@dataclass(frozen=True, eq=False)
class Destination:
    """Where the hashes of one algorithm go, and the decoder that checks them."""

    decoder: HexDecoder
    builder: HashesBuilder


class Destinations:
    """One Destination per algorithm, made when a reader first needs it.

    Readers of cells and fields look a Destination up once per column or field
    and keep it, rather than once per hash.
    """

    def __init__(self) -> None:
        self._by_algorithm: dict[Algorithm, Destination] = {}

    def __getitem__(self, algorithm: Algorithm) -> Destination:
        destination = self._by_algorithm.get(algorithm)
        if destination is None:
            destination = Destination(HexDecoder(algorithm), HashesBuilder(algorithm))
            self._by_algorithm[algorithm] = destination
        return destination

    def builders(self) -> list[HashesBuilder]:
        return [destination.builder for destination in self._by_algorithm.values()]


def _regrown(
    values: npt.NDArray[_Scalar], capacity: int, count: int
) -> npt.NDArray[_Scalar]:
    grown = np.empty((capacity, *values.shape[1:]), dtype=values.dtype)
    grown[:count] = values[:count]
    return grown


def _compact_categories(
    codes: npt.NDArray[np.int32], names: tuple[str, ...]
) -> tuple[npt.NDArray[np.int32], tuple[str, ...]]:
    """Renumber codes so that the names table holds only names in use.

    The category table is shared by every algorithm of a file; an algorithm's
    ParsedHashes should not list categories that none of its hashes has.
    """
    if not names:
        return codes, names

    used = np.zeros(len(names) + 1, dtype=np.bool_)
    used[codes + 1] = True
    used_codes = np.flatnonzero(used[1:])
    if len(used_codes) == len(names):
        return codes, names

    renumber = np.full(len(names) + 1, NO_CATEGORY, dtype=np.int32)
    renumber[used_codes + 1] = np.arange(len(used_codes), dtype=np.int32)
    compact_names = tuple(names[code] for code in used_codes)
    return renumber[codes + 1], compact_names


def finish_file(
    *,
    source: str,
    format: str,
    records: int,
    builders: Iterable[HashesBuilder],
    categories: CategoryTable,
    problems: ProblemLog,
    algorithm: Algorithm | None,
) -> ParsedFile:
    """The ParsedFile of a fully read file, or the error that rejects it.

    Problems win over "no hashes": a file of nothing but bad lines is better
    explained by its bad lines.
    """
    problems.raise_if_any()

    by_algorithm = {
        builder.algorithm: builder.build(categories)
        for builder in builders
        if len(builder)
    }
    if not by_algorithm:
        named = f"{algorithm.value} " if algorithm is not None else ""
        raise ImportRejected(
            f"{source} holds no {named}hashes ({records} records read as "
            f"{format}); nothing was imported. Check the format and algorithm."
        )

    return ParsedFile(
        source=source, format=format, records=records, by_algorithm=by_algorithm
    )


def reject_empty(source: str) -> ImportRejected:
    """The error for an input of zero bytes."""
    return ImportRejected(f"{source} is empty; nothing was imported.")
