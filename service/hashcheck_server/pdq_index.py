"""Near-duplicate lookup for PDQ: multi-index hashing over the exact table's rows.

PDQ hashes live in the same sorted table as every other algorithm (see
hashcheck_server.table), so rows, list bitmaps, categories, generations and
removals work unchanged. What PDQ adds is a second index over those rows that
finds every row within a Hamming distance of a query, the threshold.

The index. A 256-bit hash is cut into 16 slots of 16 bits (slot s is bytes 2s
and 2s + 1, read as one little-endian uint16). For each slot there is a
directory of 65,536 buckets: the rows whose slot s holds value v are
ids[s][buckets[s, v]:buckets[s, v + 1]], ascending. `buckets` is one
(16, 65537) uint32 array; each ids[s] is N uint32 row numbers. Both are LMDB
values written in the same transaction as the rows they index, so they are
mapped zero-copy and change with the generation.

Why it is exact (the pigeonhole): the distance between two hashes is the sum
of the distances of their 16 slots. If every slot differed in r + 1 bits or
more, the distance would be at least 16(r + 1). So any row within
16(r + 1) - 1 of the query has some slot within r bits of the query's slot,
and probing every value within r bits of each query slot finds it:

    threshold  0-15  radius 0     1 probe per slot
    threshold 16-31  radius 1    17 probes per slot (the field's default, 31)
    threshold 32-47  radius 2   137 probes per slot

Above 47 the probes would cost more than they save, and a linear scan
answers instead: the result is exact for every threshold, only the speed
differs.

The search, for a block of queries at once, all in numpy:

1. Probe. Each query slot value XOR each probe mask gives a bucket; its
   start and length come from `buckets`.
2. Gather. The buckets' row numbers are expanded into (query, row) candidate
   pairs, a slot at a time. Queries are taken in runs small enough that the
   candidates of one run stay in cache.
3. Verify. Each candidate row is read as four uint64 words, XORed with its
   query and counted with np.bitwise_count; pairs within the threshold stay.
4. Dedupe. A close row is usually found through several slots; each
   (query, row) pair is kept once, and the pairs are ordered by query, then
   distance, then row.

Random 256-bit hashes are about 128 bits apart, so buckets hold N / 65,536
rows on average and almost every candidate is rejected by step 3. Real PDQ
lists are clustered; their fuller buckets cost more candidates per query.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from hashcheck._algorithms import Algorithm
from hashcheck_server.errors import StoreCorrupt

__all__ = [
    "DEFAULT_MAX_DISTANCE",
    "NEAREST_MATCHES",
    "NEAR_ALGORITHMS",
    "LayeredNearIndex",
    "NearIndex",
    "NearMatches",
    "build_near_index",
    "map_near_index",
    "near_index_values",
]

logger = logging.getLogger(__name__)

#: The field's threshold: two PDQ hashes match at a distance of 31 or less.
DEFAULT_MAX_DISTANCE = 31

#: The most matches a checked hash gets back, nearest first.
NEAREST_MATCHES = 8

#: The algorithms matched within a distance rather than exactly.
NEAR_ALGORITHMS = frozenset({Algorithm.PDQ})

#: The largest distance a hash can have from another.
HASH_BITS = 256

SLOTS = 16
SLOT_BITS = 16
BUCKETS = 1 << SLOT_BITS

#: Probes within this many bits of each slot; a larger threshold scans.
MAX_PROBE_RADIUS = 2

#: The scheme's name in the index header; a store with another is rebuilt.
SCHEME = "mih-16x16"

#: Candidates verified at once. About 200,000 (some 6 MB of gathered rows)
#: keeps one run in the caches of a small server: at 1.4 million hashes,
#: runs of 400,000 were some 30% slower, and of 25,000 some 15% slower, from
#: numpy's per-call overhead (benchmarks/pdq/RESULTS.md).
_CANDIDATE_BUDGET = 200_000

#: Queries probed at once: bounds the (queries, slots, probes) arrays.
_QUERY_BLOCK = 1024

#: Rows compared per step of a linear scan.
_SCAN_ROWS = 1 << 15

_WORDS = HASH_BITS // 64

Array = npt.NDArray[Any]


@dataclass(frozen=True)
class NearMatches:
    """Every (query, row) pair within the threshold, each once.

    Sorted by position, then distance, then row: each position's nearest
    match comes first. A position appears once per matching row.
    """

    positions: npt.NDArray[np.intp]
    rows: npt.NDArray[np.intp]
    distances: npt.NDArray[np.intp]

    @classmethod
    def none(cls) -> NearMatches:
        empty = np.empty(0, dtype=np.intp)
        return cls(empty, empty, empty)

    @property
    def count(self) -> int:
        return int(self.positions.size)


def _probe_masks(radius: int) -> npt.NDArray[np.uint16]:
    """Every 16-bit mask of at most `radius` bits, fewest bits first."""
    values = np.arange(BUCKETS, dtype=np.uint16)
    bits = np.bitwise_count(values)
    masks = values[bits <= radius]
    return masks[np.argsort(bits[bits <= radius], kind="stable")]


_PROBE_MASKS = [_probe_masks(radius) for radius in range(MAX_PROBE_RADIUS + 1)]


def probe_radius(max_distance: int) -> int | None:
    """The radius whose probes find every row within `max_distance`; None: scan."""
    radius = max_distance // SLOTS
    return radius if radius <= MAX_PROBE_RADIUS else None


def _slot_values(hashes: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint16]:
    """(n, 16) slot values of (n, 32) hashes, without a copy when contiguous."""
    return np.ascontiguousarray(hashes).view("<u2")


def build_near_index(
    rows: npt.NDArray[np.uint8],
) -> tuple[npt.NDArray[np.uint32], list[npt.NDArray[np.uint32]]]:
    """The bucket directory and the 16 slot row lists of (N, 32) rows."""
    count = rows.shape[0]
    slot_values = _slot_values(rows.reshape(count, SLOTS * SLOT_BITS // 8))
    buckets = np.zeros((SLOTS, BUCKETS + 1), dtype=np.uint32)
    ids = []
    for slot in range(SLOTS):
        values = slot_values[:, slot]
        np.cumsum(np.bincount(values, minlength=BUCKETS), out=buckets[slot, 1:])
        # A stable sort of uint16 is a radix sort: linear, and rows stay
        # ascending within a bucket.
        ids.append(np.argsort(values, kind="stable").astype(np.uint32))
    return buckets, ids


class NearIndex:
    """Finds the rows of a PDQ table within a distance of each hash of a batch.

    The arrays may be views of LMDB's memory map; nothing here writes to them.
    """

    def __init__(
        self,
        rows: npt.NDArray[np.uint8],
        buckets: npt.NDArray[np.uint32],
        ids: list[npt.NDArray[np.uint32]],
    ) -> None:
        self.count = rows.size // (HASH_BITS // 8)
        flat = np.ascontiguousarray(rows).reshape(-1)
        self._words = flat.view(np.uint64).reshape(self.count, _WORDS)
        self._buckets = buckets.reshape(SLOTS, BUCKETS + 1)
        self._ids = ids
        # Slot s's buckets start at s * (BUCKETS + 1) in the flat directory.
        self._directory = self._buckets.reshape(-1)
        self._slot_starts = np.arange(SLOTS, dtype=np.intp) * (BUCKETS + 1)

    @classmethod
    def build(cls, rows: npt.NDArray[np.uint8]) -> NearIndex:
        """An index built in memory (tests, benchmarks, stores from before it)."""
        rows = np.ascontiguousarray(rows).reshape(-1, HASH_BITS // 8)
        buckets, ids = build_near_index(rows)
        return cls(rows, buckets, ids)

    def search(
        self, batch: bytes | memoryview | npt.NDArray[np.uint8], max_distance: int
    ) -> NearMatches:
        """Every row within `max_distance` of each hash of a packed batch.

        `batch` holds whole 32-byte hashes; the caller checks its length.
        Exact for any threshold from 0 to 256 (see the module docstring).
        """
        queries = np.frombuffer(batch, dtype=np.uint8).reshape(-1, HASH_BITS // 8)
        if queries.shape[0] == 0 or self.count == 0 or max_distance < 0:
            return NearMatches.none()

        radius = probe_radius(max_distance)
        parts: list[tuple[Array, Array, Array]] = []
        for start in range(0, queries.shape[0], _QUERY_BLOCK):
            block = queries[start : start + _QUERY_BLOCK]
            if radius is None:
                parts.append(self._scan(block, start, max_distance))
            else:
                parts.extend(self._probe(block, start, radius, max_distance))
        return _ordered(parts)

    def _probe(
        self,
        block: npt.NDArray[np.uint8],
        offset: int,
        radius: int,
        max_distance: int,
    ) -> list[tuple[Array, Array, Array]]:
        """Probe a block of queries, a run of queries at a time."""
        masks = _PROBE_MASKS[radius]
        probed = _slot_values(block)[:, :, None] ^ masks
        flat = probed.astype(np.intp) + self._slot_starts[:, None]
        starts = self._directory.take(flat).astype(np.intp)
        lengths = self._directory.take(flat + 1).astype(np.intp) - starts
        # starts, lengths: (queries, slots, probes)

        per_query = lengths.reshape(block.shape[0], -1).sum(axis=1)
        words = np.frombuffer(block.tobytes(), np.uint64).reshape(-1, _WORDS)
        found = []
        for first, stop in _runs(per_query, _CANDIDATE_BUDGET):
            queries, rows = self._candidates(
                starts[first:stop], lengths[first:stop], first
            )
            found.append(self._verify(words, queries, rows, max_distance, offset))
        return found

    def _candidates(
        self, starts: Array, lengths: Array, first: int
    ) -> tuple[Array, Array]:
        """(query, row) pairs of the probed buckets of a run of queries."""
        run_queries = np.arange(first, first + starts.shape[0], dtype=np.intp)
        queries = []
        rows = []
        for slot in range(SLOTS):
            slot_lengths = lengths[:, slot].reshape(-1)
            total = int(slot_lengths.sum())
            if total == 0:
                continue
            # Position k of the expansion reads ids[start + (k - ends_before)].
            ends = np.cumsum(slot_lengths)
            shift = starts[:, slot].reshape(-1) - (ends - slot_lengths)
            positions = np.repeat(shift, slot_lengths)
            positions += np.arange(total, dtype=np.intp)
            rows.append(self._ids[slot].take(positions))
            queries.append(np.repeat(run_queries, lengths[:, slot].sum(axis=1)))
        if not rows:
            empty = np.empty(0, dtype=np.intp)
            return empty, empty
        return np.concatenate(queries), np.concatenate(rows).astype(np.intp)

    def _verify(
        self,
        words: npt.NDArray[np.uint64],
        queries: Array,
        rows: Array,
        max_distance: int,
        offset: int,
    ) -> tuple[Array, Array, Array]:
        """The candidate pairs within the threshold, with their distances."""
        candidates = self._words.take(rows, axis=0)
        candidates ^= words.take(queries, axis=0)
        distances = _distances(candidates)
        close = np.flatnonzero(distances <= max_distance)
        return queries[close] + offset, rows[close], distances[close]

    def _scan(
        self, block: npt.NDArray[np.uint8], offset: int, max_distance: int
    ) -> tuple[Array, Array, Array]:
        """Compare a block of queries with every row: for large thresholds."""
        words = np.frombuffer(block.tobytes(), np.uint64).reshape(-1, _WORDS)
        found: list[tuple[Array, Array, Array]] = []
        for first in range(0, self.count, _SCAN_ROWS):
            rows = self._words[first : first + _SCAN_ROWS]
            for query in range(words.shape[0]):
                distances = _distances(rows ^ words[query])
                close = np.flatnonzero(distances <= max_distance)
                if close.size:
                    found.append(
                        (
                            np.full(close.size, offset + query, dtype=np.intp),
                            close + first,
                            distances[close],
                        )
                    )
        if not found:
            empty = np.empty(0, dtype=np.intp)
            return empty, empty, empty
        return (
            np.concatenate([part[0] for part in found]),
            np.concatenate([part[1] for part in found]),
            np.concatenate([part[2] for part in found]),
        )


def _distances(differences: npt.NDArray[np.uint64]) -> npt.NDArray[np.intp]:
    """The popcount of each row of (n, 4) XORed words.

    np.bitwise_count gives one uint8 per word. Adding the four in uint8 would
    wrap 256 (a hash and its complement) to 0, so they are added pairwise in
    16-bit lanes of a uint32: no lane can overflow.
    """
    counts = np.bitwise_count(differences)
    if counts.shape[0] == 0:
        return np.empty(0, dtype=np.intp)
    packed = np.ascontiguousarray(counts).view(np.uint32).reshape(-1)
    pairs = (packed & np.uint32(0x00FF00FF)) + (
        (packed >> np.uint32(8)) & np.uint32(0x00FF00FF)
    )
    total = (pairs * np.uint32(0x00010001)) >> np.uint32(16)
    return total.astype(np.intp)


def _runs(per_query: Array, budget: int) -> list[tuple[int, int]]:
    """Consecutive runs of queries whose candidates add up to about `budget`.

    A run holds at least one query, however many candidates that one has.
    """
    ends = np.cumsum(per_query)
    runs = []
    first = 0
    count = per_query.shape[0]
    while first < count:
        before = int(ends[first - 1]) if first else 0
        stop = int(np.searchsorted(ends, before + budget, side="right"))
        stop = max(stop, first + 1)
        runs.append((first, stop))
        first = stop
    return runs


def _ordered(parts: list[tuple[Array, Array, Array]]) -> NearMatches:
    """One NearMatches from parts: each (query, row) once, nearest first."""
    parts = [part for part in parts if part[0].size]
    if not parts:
        return NearMatches.none()
    positions = np.concatenate([part[0] for part in parts])
    rows = np.concatenate([part[1] for part in parts])
    distances = np.concatenate([part[2] for part in parts])

    order = np.lexsort((rows, distances, positions))
    positions, rows, distances = positions[order], rows[order], distances[order]
    # Equal pairs have equal distances, so after the sort they are adjacent.
    repeated = np.zeros(positions.size, dtype=bool)
    repeated[1:] = (positions[1:] == positions[:-1]) & (rows[1:] == rows[:-1])
    keep = ~repeated
    return NearMatches(positions[keep], rows[keep], distances[keep])


# -- Storage -----------------------------------------------------------------
#
# An index is stored as LMDB values beside the table part it indexes (see
# hashcheck_server.layout, which names the keys): "near/header" (JSON: scheme
# and row count), "near/buckets" (the (16, 65537) uint32 directory) and
# "near/slot00" to "near/slot15" (each N uint32 row numbers).

#: The value names of one part's index, header first.
VALUE_NAMES = (
    "near/header",
    "near/buckets",
    *(f"near/slot{slot:02d}" for slot in range(SLOTS)),
)


def near_index_values(
    rows: npt.NDArray[np.uint8],
) -> Iterator[tuple[str, bytes | memoryview]]:
    """(name, value) pairs to store for the index of one part's sorted rows."""
    started = time.perf_counter()
    rows = np.ascontiguousarray(rows).reshape(-1, HASH_BITS // 8)
    buckets, ids = build_near_index(rows)
    header = {"scheme": SCHEME, "count": rows.shape[0]}
    yield VALUE_NAMES[0], json.dumps(header).encode()
    yield VALUE_NAMES[1], buckets.reshape(-1).data
    for name, slot_ids in zip(VALUE_NAMES[2:], ids, strict=True):
        yield name, slot_ids.data
    logger.info(
        "built the near-duplicate index of %d hashes in %.1f s",
        rows.shape[0],
        time.perf_counter() - started,
    )


def map_near_index(
    rows: npt.NDArray[np.uint8],
    read: Callable[[str], Any],
    where: str,
) -> NearIndex:
    """The index of one part from its stored values, zero-copy.

    `read(name)` returns the stored value (a buffer) or None. A part stored
    before PDQ had an index has none: it is built here in memory, with a
    warning, until the next rewrite of that part stores it.
    """
    rows = rows.reshape(-1, HASH_BITS // 8)
    raw_header = read(VALUE_NAMES[0])
    header = None if raw_header is None else json.loads(bytes(raw_header))
    if header is None or header.get("scheme") != SCHEME:
        logger.warning(
            "%s has no near-duplicate index; building one in memory. "
            "`hashcheck-server merge` stores it.",
            where,
        )
        return NearIndex.build(rows)
    if header.get("count") != rows.shape[0]:
        raise StoreCorrupt(
            f"{where}: the near-duplicate index covers {header.get('count')} "
            f"hashes, the table {rows.shape[0]}. Restore the data directory "
            "from a snapshot."
        )

    values = [read(name) for name in VALUE_NAMES[1:]]
    if any(value is None for value in values):
        raise StoreCorrupt(
            f"{where}: the near-duplicate index is incomplete. Restore the data "
            "directory from a snapshot."
        )
    buckets, *ids = [np.frombuffer(value, dtype=np.uint32) for value in values]
    return NearIndex(rows, buckets, ids)


class LayeredNearIndex:
    """The near-duplicate index of a table stored in parts (base, then delta).

    Rows are numbered across the parts in order, as in
    hashcheck_server.lookup.LayeredTable; a hash is in at most one part.
    """

    def __init__(self, parts: list[NearIndex]) -> None:
        self.parts = parts
        self.offsets = [0]
        for part in parts[:-1]:
            self.offsets.append(self.offsets[-1] + part.count)

    def search(
        self, batch: bytes | memoryview | npt.NDArray[np.uint8], max_distance: int
    ) -> NearMatches:
        found = [part.search(batch, max_distance) for part in self.parts]
        if len(found) == 1:
            return found[0]
        return _ordered(
            [
                (matches.positions, matches.rows + offset, matches.distances)
                for matches, offset in zip(found, self.offsets, strict=True)
            ]
        )
