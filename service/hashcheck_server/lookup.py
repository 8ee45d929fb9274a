"""The lookup: which hashes of a packed batch are rows of a sorted table.

A batch is N hashes of W bytes in one bytes object, as it arrives on the wire.
The lookup never makes a Python object per hash: every step below is one numpy
operation over the whole batch, or over the few hashes still in question.

1. Filter. Read each hash's filter block and test the three bits its next
   bits choose (hashcheck_server.table). Hashes missing one of them are
   misses: some 97 to 99 in a hundred random hashes, decided with one random
   8-byte read each.
2. Bucket scan. For the survivors, read the directory bucket of their leading
   D bits and compare their 8-byte prefix with every row of the bucket: each
   survivor is repeated once per row of its bucket (about five), so that one
   gather and one comparison cover them all, with no loop per bucket length.
3. Long buckets. Hashes whose bucket holds more than a few dozen rows (rare,
   unless a list holds many hashes that share a prefix) are found by a
   vectorised binary search over whole hashes within their bucket instead,
   so that such a bucket costs a handful of steps, not a scan.
4. Verify. A prefix match is confirmed by comparing all W bytes, so hashes
   that share 8 or more leading bytes are still told apart exactly.

The result is exact for any input: duplicates in the batch, shared prefixes,
an empty batch, a batch of nothing but hits.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from hashcheck_server.table import FILTER_PROBES, TableIndex, filter_probes_of

__all__ = ["LayeredTable", "Matches", "SortedTable"]

#: The longest bucket step 2 scans; longer ones take the binary search of
#: step 3. Buckets average about five rows, and all but adversarial ones stay
#: far below this.
_SCAN_LIMIT = 64

_EMPTY_POSITIONS = np.empty(0, dtype=np.intp)


@dataclass(frozen=True)
class Matches:
    """The hashes of a batch found in the table.

    `positions` are indices into the batch, ascending; `rows` are the table
    rows they equal, in the same order.
    """

    positions: npt.NDArray[np.intp]
    rows: npt.NDArray[np.intp]

    @classmethod
    def none(cls) -> Matches:
        return cls(_EMPTY_POSITIONS, _EMPTY_POSITIONS)


class SortedTable:
    """A sorted, unique table of fixed-width hashes and its index, read-only.

    The arrays may be views of LMDB's memory map: nothing here copies them or
    writes to them, and the caller keeps the map alive while this object is
    in use.
    """

    def __init__(
        self, rows: npt.NDArray[np.uint8], index: TableIndex, width: int
    ) -> None:
        self.width = width
        self.count = rows.shape[0] if rows.size else 0
        self._rows = rows.reshape(self.count, width)
        self._filter = index.filter
        self._filter_bits = index.filter_bits
        self._filter_probes = index.filter_probes
        if index.filter_probes == FILTER_PROBES:
            self._filter_blocks = index.filter.view("<u8")
        self._directory = index.directory
        self._directory_shift = np.uint64(64 - index.directory_bits)
        self._prefixes = _strided_words(self._rows, "<u8")

    def find(self, batch: bytes | memoryview) -> Matches:
        """The batch's hashes that are rows of this table (see the module doc).

        `batch` holds whole hashes only; the caller checks its length.
        """
        hashes = np.frombuffer(batch, dtype=np.uint8).reshape(-1, self.width)
        if hashes.shape[0] == 0 or self.count == 0:
            return Matches.none()

        heads = _strided_words(hashes, ">u8").astype(np.uint64)
        if self._filter_probes == FILTER_PROBES:
            candidates = self._pass_filter(heads)
        else:
            candidates = self._pass_bitset(heads)
        if candidates.size == 0:
            return Matches.none()

        buckets = heads[candidates] >> self._directory_shift
        starts = self._directory[buckets].astype(np.intp)
        lengths = self._directory[buckets + 1].astype(np.intp) - starts

        scanned = lengths <= _SCAN_LIMIT
        pairs = [
            self._scan_buckets(
                hashes, candidates[scanned], starts[scanned], lengths[scanned]
            )
        ]
        if not scanned.all():
            searched = ~scanned
            pairs.append(
                self._search_long_buckets(
                    hashes, candidates[searched], starts[searched], lengths[searched]
                )
            )
        return self._verify(hashes, pairs)

    def _pass_filter(self, heads: npt.NDArray[np.uint64]) -> npt.NDArray[np.intp]:
        """Positions whose three bits are all set in their filter block."""
        blocks, masks = filter_probes_of(heads, self._filter_bits)
        return np.flatnonzero((self._filter_blocks[blocks] & masks) == masks)

    def _pass_bitset(self, heads: npt.NDArray[np.uint64]) -> npt.NDArray[np.intp]:
        """Positions whose leading bits are set in a one-bit-a-hash filter."""
        bit_numbers = heads >> np.uint64(64 - self._filter_bits)
        filter_bytes = self._filter[bit_numbers >> np.uint64(3)]
        bits = (filter_bytes >> (bit_numbers & np.uint64(7)).astype(np.uint8)) & 1
        return np.flatnonzero(bits)

    def _scan_buckets(
        self,
        hashes: npt.NDArray[np.uint8],
        candidates: npt.NDArray[np.intp],
        starts: npt.NDArray[np.intp],
        lengths: npt.NDArray[np.intp],
    ) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.intp]]:
        """(position, row) pairs whose 8-byte prefixes agree, over whole buckets."""
        owners = np.repeat(np.arange(candidates.size), lengths)
        # Row of each repeated survivor: its bucket's start plus its rank
        # among the repeats of that survivor.
        first_repeat = np.cumsum(lengths) - lengths
        rows = np.arange(owners.size) + np.repeat(starts - first_repeat, lengths)

        query_prefixes = _strided_words(hashes, "<u8")[candidates]
        agree = self._prefixes[rows] == query_prefixes[owners]
        return candidates[owners[agree]], rows[agree]

    def _search_long_buckets(
        self,
        hashes: npt.NDArray[np.uint8],
        positions: npt.NDArray[np.intp],
        starts: npt.NDArray[np.intp],
        lengths: npt.NDArray[np.intp],
    ) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.intp]]:
        """Binary search over whole hashes, for buckets longer than the window.

        Finds, for each position, the first row of its bucket not below the
        hash; _verify then keeps the pairs that are equal.
        """
        low = starts.copy()
        high = starts + lengths
        queries = hashes[positions]
        while True:
            open_ = low < high
            if not open_.any():
                break
            middle = (low + high) // 2
            below = _is_row_below(
                self._rows[np.minimum(middle, self.count - 1)], queries
            )
            below &= open_
            low = np.where(below, middle + 1, low)
            high = np.where(open_ & ~below, middle, high)

        inside = low < starts + lengths
        return positions[inside], low[inside]

    def _verify(
        self,
        hashes: npt.NDArray[np.uint8],
        pairs: list[tuple[npt.NDArray[np.intp], npt.NDArray[np.intp]]],
    ) -> Matches:
        """Keep pairs whose whole hashes are equal, ordered by position."""
        positions = np.concatenate([position for position, _ in pairs])
        rows = np.concatenate([row for _, row in pairs])
        if positions.size == 0:
            return Matches.none()

        equal = np.all(self._rows[rows] == hashes[positions], axis=1)
        positions, rows = positions[equal], rows[equal]
        # Each part lists its positions ascending, and a hash equals at most
        # one row of a unique table: only the parts need merging.
        if len(pairs) > 1:
            order = np.argsort(positions, kind="stable")
            positions, rows = positions[order], rows[order]
        return Matches(positions, rows)


def _strided_words(rows: npt.NDArray[np.uint8], dtype: str) -> npt.NDArray[np.generic]:
    """A view of the first bytes of each row as one number of `dtype`.

    Equality does not care about byte order, so the prefix compare uses the
    native order and costs no byte swap; the leading bits need big-endian.
    """
    return np.ndarray(
        (rows.shape[0],),
        dtype=np.dtype(dtype),
        buffer=rows.data
        if rows.flags.c_contiguous
        else np.ascontiguousarray(rows).data,
        strides=(rows.shape[1],),
    )


def _is_row_below(
    table_rows: npt.NDArray[np.uint8], queries: npt.NDArray[np.uint8]
) -> npt.NDArray[np.bool_]:
    """Row-wise bytewise comparison: is each table row less than its query?"""
    differs = table_rows != queries
    first_difference = np.argmax(differs, axis=1)
    picked = np.arange(len(queries))
    is_below: npt.NDArray[np.bool_] = differs[picked, first_difference] & (
        table_rows[picked, first_difference] < queries[picked, first_difference]
    )
    return is_below


class LayeredTable:
    """An algorithm's table as its parts: the base, then the delta.

    Rows are numbered across the parts in order (a delta row r is row
    base.count + r), and a hash is in at most one part, so a batch's matches
    are the union of each part's, with their rows offset.
    """

    def __init__(self, parts: list[SortedTable]) -> None:
        self.parts = parts
        self.offsets = np.cumsum([0] + [part.count for part in parts])[:-1]
        self.count = int(sum(part.count for part in parts))

    def find(self, batch: bytes | memoryview) -> Matches:
        found = [part.find(batch) for part in self.parts]
        found = [
            Matches(matches.positions, matches.rows + offset)
            for matches, offset in zip(found, self.offsets.tolist(), strict=True)
            if matches.positions.size
        ]
        if len(found) <= 1:
            return found[0] if found else Matches.none()

        positions = np.concatenate([matches.positions for matches in found])
        rows = np.concatenate([matches.rows for matches in found])
        order = np.argsort(positions, kind="stable")
        return Matches(positions[order], rows[order])
