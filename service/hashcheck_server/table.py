"""The sorted hash table of one algorithm, and the index that makes it fast.

Layout (every part is one LMDB value, mapped zero-copy by the server):

- rows: N hashes of W bytes each, concatenated, sorted bytewise ascending and
  unique. A hash's row number is its identity in the list bitmaps.
- filter: a bitset of 2**F bits. Bit p is set when some row's leading F bits
  equal p. Most checked hashes are misses, and for a miss one random byte read
  here is usually the whole lookup. F grows with N so that about one bit in
  eight to sixteen is set; the filter never says no to a hash that is present.
- directory: 2**D + 1 uint32 row numbers. The rows whose leading D bits equal b
  are rows[directory[b]:directory[b + 1]]. D is about log2(N) - 3, so a bucket
  holds some five rows on average and the directory costs under a byte a hash.

Invariants: rows are strictly ascending (so bucket ranges are contiguous and
duplicates impossible); filter and directory are derived from rows alone and are
rebuilt whenever rows change. N stays below 2**32 (row numbers are uint32).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

__all__ = [
    "TableIndex",
    "build_index",
    "leading_bits",
    "sort_unique_rows",
]

Rows = npt.NDArray[np.uint8]

#: The fewest filter and directory bits, so that tiny tables still work.
_MIN_FILTER_BITS = 10
_MIN_DIRECTORY_BITS = 4

#: Leading bits are read as one big-endian uint32, so neither part may use more.
_MAX_INDEX_BITS = 32


@dataclass(frozen=True)
class TableIndex:
    """The filter and directory built over one sorted table."""

    filter_bits: int
    directory_bits: int
    filter: npt.NDArray[np.uint8]
    directory: npt.NDArray[np.uint32]


def filter_bits_for(count: int) -> int:
    """F for a table of `count` rows: 8 to 16 filter bits per hash."""
    wanted = math.ceil(math.log2(max(count, 1))) + 3
    return min(max(wanted, _MIN_FILTER_BITS), _MAX_INDEX_BITS)


def directory_bits_for(count: int) -> int:
    """D for a table of `count` rows: about 4 to 8 rows per bucket."""
    wanted = math.ceil(math.log2(max(count, 1))) - 3
    return min(max(wanted, _MIN_DIRECTORY_BITS), _MAX_INDEX_BITS)


def leading_bits(rows: Rows) -> npt.NDArray[np.uint32]:
    """The first four bytes of each row as a native uint32 (big-endian read)."""
    width = rows.shape[1]
    leading = np.ndarray(
        (rows.shape[0],), dtype=">u4", buffer=rows.data, strides=(width,)
    )
    return leading.astype(np.uint32)


def _prefix_keys(rows: Rows) -> npt.NDArray[np.uint64]:
    """The first eight bytes of each row as a big-endian number, for sorting."""
    width = rows.shape[1]
    keys = np.ndarray((rows.shape[0],), dtype=">u8", buffer=rows.data, strides=(width,))
    return keys.astype(np.uint64)


def sort_unique_rows(rows: Rows) -> tuple[Rows, npt.NDArray[np.intp]]:
    """Sort rows bytewise and drop repeats.

    Returns the sorted unique rows and, for each of them, the index in `rows` of
    the last occurrence (so a later record of the same hash wins, as a later
    line of an import file should).
    """
    rows = np.ascontiguousarray(rows)
    if rows.shape[0] == 0:
        return rows, np.empty(0, dtype=np.intp)

    order = _bytewise_order(rows)
    ordered = rows[order]
    is_last_of_run = np.ones(len(order), dtype=bool)
    is_last_of_run[:-1] = np.any(ordered[1:] != ordered[:-1], axis=1)
    return ordered[is_last_of_run], order[is_last_of_run]


def _bytewise_order(rows: Rows) -> npt.NDArray[np.intp]:
    """A stable permutation that sorts rows bytewise.

    Sorting on the 8-byte prefix alone is exact for random hashes; rows that
    share their prefix (rare, but adversarial lists have them) are put in
    order by a full lexicographic sort of just those rows.
    """
    keys = _prefix_keys(rows)
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]

    tied = np.zeros(len(order), dtype=bool)
    same_as_next = sorted_keys[1:] == sorted_keys[:-1]
    tied[:-1] |= same_as_next
    tied[1:] |= same_as_next
    if not tied.any() or rows.shape[1] <= 8:
        return order

    tied_positions = np.flatnonzero(tied)
    tied_rows = rows[order[tied_positions]]
    # np.lexsort sorts by the last key first, so feed the bytes in reverse.
    within = np.lexsort(tied_rows.T[::-1])
    order[tied_positions] = order[tied_positions][within]
    return order


def build_index(rows: Rows) -> TableIndex:
    """The filter and directory for sorted unique rows."""
    count = rows.shape[0]
    filter_bits = filter_bits_for(count)
    directory_bits = directory_bits_for(count)
    leading = leading_bits(rows) if count else np.empty(0, dtype=np.uint32)

    bitset = np.zeros((1 << filter_bits) // 8, dtype=np.uint8)
    positions = leading >> np.uint32(_MAX_INDEX_BITS - filter_bits)
    np.bitwise_or.at(
        bitset,
        positions >> np.uint32(3),
        np.left_shift(1, positions & 7).astype(np.uint8),
    )

    buckets = leading >> np.uint32(_MAX_INDEX_BITS - directory_bits)
    bucket_starts = np.arange((1 << directory_bits) + 1, dtype=np.uint64)
    directory = np.searchsorted(buckets, bucket_starts, side="left").astype(np.uint32)
    return TableIndex(filter_bits, directory_bits, bitset, directory)
