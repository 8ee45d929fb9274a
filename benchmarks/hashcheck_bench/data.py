"""The synthetic data: a table of random MD5 hashes and queries against it.

Only random bytes are used, never real hashes. The table holds `size` random
16-byte hashes; the queries are `count` hashes of which `hit_fraction` are
drawn from the table (distinct rows) and the rest are fresh random hashes,
in shuffled order. A fresh random 128-bit hash equals one of the table's with
a probability near 1e-25, so the expected hit count is known exactly; the
Python set peer checks it independently in every run.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

__all__ = ["WIDTH", "Workload", "make_workload", "split_batches", "write_hex_lines"]

#: Bytes per MD5 hash.
WIDTH = 16

Rows = npt.NDArray[np.uint8]

_HEX_DIGITS = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)

#: Rows encoded per step when writing hex, to keep memory flat.
_HEX_CHUNK_ROWS = 1 << 20


@dataclass(frozen=True)
class Workload:
    """One table size's data: the table, the queries and the hits they hold."""

    table: Rows
    queries: Rows
    expected_hits: int

    @property
    def size(self) -> int:
        return int(self.table.shape[0])

    @property
    def packed_queries(self) -> bytes:
        """The queries as they travel: N * 16 bytes."""
        return self.queries.tobytes()


def make_workload(size: int, count: int, hit_fraction: float, seed: int) -> Workload:
    """The table and queries for one size, the same for a given seed."""
    rng = np.random.default_rng([seed, size])
    table = rng.integers(0, 256, size=(size, WIDTH), dtype=np.uint8)

    hits = min(round(count * hit_fraction), size)
    hit_rows = rng.choice(size, size=hits, replace=False)
    queries = rng.integers(0, 256, size=(count, WIDTH), dtype=np.uint8)
    queries[:hits] = table[hit_rows]
    rng.shuffle(queries, axis=0)
    return Workload(table, queries, hits)


def split_batches(packed: bytes, batch_hashes: int) -> list[bytes]:
    """Packed hashes cut into batches of `batch_hashes` (the last may be short)."""
    step = batch_hashes * WIDTH
    return [packed[start : start + step] for start in range(0, len(packed), step)]


def write_hex_lines(rows: Rows, path: Path) -> None:
    """One lowercase hex hash a line, as `hashcheck-server import` reads them."""
    with path.open("wb") as out:
        for start in range(0, rows.shape[0], _HEX_CHUNK_ROWS):
            out.write(_hex_lines(rows[start : start + _HEX_CHUNK_ROWS]))


def _hex_lines(rows: Rows) -> bytes:
    width = rows.shape[1]
    lines = np.empty((rows.shape[0], 2 * width + 1), dtype=np.uint8)
    lines[:, 0 : 2 * width : 2] = _HEX_DIGITS[rows >> 4]
    lines[:, 1 : 2 * width : 2] = _HEX_DIGITS[rows & 15]
    lines[:, -1] = ord("\n")
    return lines.tobytes()
