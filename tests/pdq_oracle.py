"""Synthetic PDQ hashes and a brute-force oracle for the near-duplicate tests.

Every hash here is random bits from a seeded generator, or such a hash with
chosen bits flipped; none is the PDQ hash of any real image.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

Hashes = npt.NDArray[np.uint8]

BITS = 256


def random_pdq(count: int, rng: np.random.Generator) -> Hashes:
    return rng.integers(0, 256, size=(count, 32), dtype=np.uint8)


def flipped(hashes: Hashes, bits: int, rng: np.random.Generator) -> Hashes:
    """Each hash with exactly `bits` distinct bits flipped, chosen at random."""
    unpacked = np.unpackbits(hashes, axis=1)
    for row in unpacked:
        row[rng.choice(BITS, size=bits, replace=False)] ^= 1
    return np.packbits(unpacked, axis=1)


def flipped_per_slot(
    hashes: Hashes, per_slot: list[int], rng: np.random.Generator
) -> Hashes:
    """Each hash with per_slot[s] bits flipped inside 16-bit slot s (bytes 2s, 2s+1)."""
    unpacked = np.unpackbits(hashes, axis=1)
    for row in unpacked:
        for slot, bits in enumerate(per_slot):
            chosen = 16 * slot + rng.choice(16, size=bits, replace=False)
            row[chosen] ^= 1
    return np.packbits(unpacked, axis=1)


def distances(queries: Hashes, known: Hashes) -> npt.NDArray[np.int64]:
    """(queries, known) Hamming distances, by comparing unpacked bits."""
    query_bits = np.unpackbits(queries, axis=1).astype(bool)
    known_bits = np.unpackbits(known, axis=1).astype(bool)
    return np.array(
        [(known_bits != bits).sum(axis=1) for bits in query_bits], dtype=np.int64
    ).reshape(queries.shape[0], known.shape[0])


def brute_force(
    queries: Hashes, known: Hashes, max_distance: int
) -> list[tuple[int, int, int]]:
    """Every (position, distance, known row) within the threshold, sorted."""
    if queries.shape[0] == 0 or known.shape[0] == 0:
        return []
    table = distances(queries, known)
    positions, rows = np.nonzero(table <= max_distance)
    return sorted(
        zip(
            positions.tolist(),
            table[positions, rows].tolist(),
            rows.tolist(),
            strict=True,
        )
    )
