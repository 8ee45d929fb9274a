"""The sorted hash table of one algorithm, and the index that makes it fast.

Layout (every part is one LMDB value, mapped zero-copy by the server):

- rows: N hashes of W bytes each, concatenated, sorted bytewise ascending and
  unique. A hash's row number is its identity in the list bitmaps.
- filter: a bitset of 2**F bits, 8 to 16 per row, in blocks of 64 bits (one
  little-endian uint64 each). A hash's leading F - 6 bits choose its block,
  and the 12 bits after them choose three bits within the block (the probe
  masks below); every row sets its three bits. A checked hash whose three
  bits are not all set is a miss, decided with one random 8-byte read. Some
  1 to 3% of random hashes get past it, against the 6 to 12% that one bit a
  hash let through (the filters of stores written before `filter_probes` was
  recorded, which are still read). The filter never says no to a present
  hash.
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
    "FILTER_PROBES",
    "TableIndex",
    "build_index",
    "filter_probes_of",
    "leading_bits",
    "sort_unique_labelled_rows",
    "sort_unique_rows",
]

Rows = npt.NDArray[np.uint8]

#: The fewest filter and directory bits, so that tiny tables still work.
_MIN_FILTER_BITS = 10
_MIN_DIRECTORY_BITS = 4

#: Leading bits are read as one big-endian uint32, so neither part may use more.
_MAX_INDEX_BITS = 32

#: Bits of its filter block that each hash sets; 1 in stores written before.
FILTER_PROBES = 3
#: A filter block is 2**6 = 64 bits.
_BLOCK_BITS = 6
#: The hash bits after the block number that choose a probe mask.
_PROBE_KEY_BITS = 12


def _probe_masks() -> npt.NDArray[np.uint64]:
    """For each 12-bit probe key, the three bits of a block it stands for.

    Two bits are the key's two 6-bit halves; the third is a fixed mix of
    them, so that keys that share a half still differ in the third bit. The
    table is part of the store's format: changing it changes every filter.
    """
    keys = np.arange(1 << _PROBE_KEY_BITS, dtype=np.uint64)
    low_six = np.uint64(63)
    first = keys & low_six
    second = keys >> np.uint64(6)
    mixed = first * np.uint64(5) + second * np.uint64(11) + np.uint64(29)
    third = mixed & low_six
    one = np.uint64(1)
    masks: npt.NDArray[np.uint64] = (one << first) | (one << second) | (one << third)
    return masks


_PROBE_MASKS = _probe_masks()


@dataclass(frozen=True)
class TableIndex:
    """The filter and directory built over one sorted table."""

    filter_bits: int
    directory_bits: int
    filter: npt.NDArray[np.uint8]
    directory: npt.NDArray[np.uint32]
    #: Bits a hash sets in its filter block: FILTER_PROBES, or 1 for a plain
    #: bitset over the leading bits (stores written before blocks).
    filter_probes: int = 1


def filter_probes_of(
    heads: npt.NDArray[np.uint64], filter_bits: int
) -> tuple[npt.NDArray[np.uint64], npt.NDArray[np.uint64]]:
    """Each hash's filter block number and the mask of its three bits.

    `heads` are the hashes' first eight bytes as big-endian numbers.
    """
    block_bits = filter_bits - _BLOCK_BITS
    blocks = heads >> np.uint64(64 - block_bits)
    keys = (heads >> np.uint64(64 - block_bits - _PROBE_KEY_BITS)) & np.uint64(
        (1 << _PROBE_KEY_BITS) - 1
    )
    return blocks, _PROBE_MASKS[keys]


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
    unique, last, _ = sort_unique_labelled_rows(rows, None)
    return unique, last


def sort_unique_labelled_rows(
    rows: Rows, labels: npt.NDArray[np.int32] | None
) -> tuple[Rows, npt.NDArray[np.intp], int]:
    """`sort_unique_rows`, and how many unique rows had records whose labels
    differ (a hash graded twice, differently, in one list file)."""
    rows = np.ascontiguousarray(rows)
    if rows.shape[0] == 0:
        return rows, np.empty(0, dtype=np.intp), 0

    order = _bytewise_order(rows)
    ordered = rows[order]
    is_last_of_run = np.ones(len(order), dtype=bool)
    is_last_of_run[:-1] = np.any(ordered[1:] != ordered[:-1], axis=1)
    relabelled = (
        0 if labels is None else _runs_with_two_labels(labels[order], is_last_of_run)
    )
    return ordered[is_last_of_run], order[is_last_of_run], relabelled


def _runs_with_two_labels(
    labels: npt.NDArray[np.int32], is_last_of_run: npt.NDArray[np.bool_]
) -> int:
    """Runs of equal rows (ending where is_last_of_run) whose labels differ."""
    within_run = ~is_last_of_run[:-1]
    changes = np.flatnonzero(within_run & (labels[1:] != labels[:-1]))
    if changes.size == 0:
        return 0
    run_of: npt.NDArray[np.intp] = np.cumsum(is_last_of_run) - is_last_of_run
    return int(np.unique(run_of[changes]).size)


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

    blocks = np.zeros(1 << (filter_bits - _BLOCK_BITS), dtype="<u8")
    if count:
        block_numbers, masks = filter_probes_of(_prefix_keys(rows), filter_bits)
        np.bitwise_or.at(blocks, block_numbers, masks)

    buckets = leading >> np.uint32(_MAX_INDEX_BITS - directory_bits)
    bucket_starts = np.arange((1 << directory_bits) + 1, dtype=np.uint64)
    directory = np.searchsorted(buckets, bucket_starts, side="left").astype(np.uint32)
    return TableIndex(
        filter_bits,
        directory_bits,
        blocks.view(np.uint8),
        directory,
        filter_probes=FILTER_PROBES,
    )
