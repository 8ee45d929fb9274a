"""Synthetic hashes for tests: random bytes from seeded generators, never real."""

from __future__ import annotations

import numpy as np

from hashcheck._algorithms import Algorithm
from hashcheck_server.store import Entries


def random_hashes(count: int, width: int = 16, seed: int = 0) -> np.ndarray:
    """`count` random hashes of `width` bytes, as an (count, width) uint8 array."""
    generator = np.random.default_rng(seed)
    return generator.integers(0, 256, size=(count, width), dtype=np.uint8)


def md5_entries(hashes: np.ndarray, category: str = "") -> Entries:
    return Entries.graded_alike(Algorithm.MD5, hashes, category)
