"""The near-duplicate index finds exactly what a brute-force scan finds.

Known hashes are random, in clusters of near duplicates, or sharing slot
values; queries are copies, copies with bits flipped right at the threshold
and one past it, flips spread so that the pigeonhole bound is tight, exact
complements, and plain random hashes.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hashcheck_server import pdq_index
from hashcheck_server.pdq_index import NearIndex, probe_radius
from pdq_oracle import brute_force, flipped, flipped_per_slot, random_pdq

# Thresholds where the probe radius changes, the field's 31, the scan beyond.
_EDGE_THRESHOLDS = [0, 1, 15, 16, 30, 31, 32, 47, 48, 64, 255, 256]


def _found(
    index: NearIndex, queries: np.ndarray, threshold: int
) -> list[tuple[int, int, int]]:
    matches = index.search(queries.tobytes(), threshold)
    return list(
        zip(
            matches.positions.tolist(),
            matches.distances.tolist(),
            matches.rows.tolist(),
            strict=True,
        )
    )


def _known(rng: np.random.Generator, count: int, clustered: bool) -> np.ndarray:
    """Sorted unique hashes, as a table holds them."""
    known = random_pdq(count, rng)
    if clustered and count > 4:
        # A quarter are near duplicates of one hash, a quarter share slot 3.
        centre = known[:1]
        quarter = count // 4
        spread = rng.integers(1, 24)
        known[1 : quarter + 1] = flipped(
            np.repeat(centre, quarter, axis=0), spread, rng
        )
        known[quarter + 1 : 2 * quarter + 1, 6:8] = known[0, 6:8]
    unique = np.unique(known, axis=0)
    return np.ascontiguousarray(unique)


def _queries(
    rng: np.random.Generator, known: np.ndarray, threshold: int, count: int
) -> np.ndarray:
    picks = known[rng.integers(0, known.shape[0], size=count)]
    exact_flips = min(threshold, 256)
    kinds = [
        picks,
        flipped(picks, exact_flips, rng),
        flipped(picks, min(exact_flips + 1, 256), rng),
        flipped(picks, int(rng.integers(0, 64)), rng),
        ~picks,
        random_pdq(count, rng),
    ]
    return np.concatenate(kinds)


@settings(max_examples=120, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    count=st.integers(1, 400),
    clustered=st.booleans(),
    threshold=st.one_of(st.sampled_from(_EDGE_THRESHOLDS), st.integers(0, 70)),
)
def test_search_equals_brute_force(
    seed: int, count: int, clustered: bool, threshold: int
) -> None:
    rng = np.random.default_rng(seed)
    known = _known(rng, count, clustered)
    queries = _queries(rng, known, threshold, count=4)
    index = NearIndex.build(known)

    assert _found(index, queries, threshold) == brute_force(queries, known, threshold)


@pytest.mark.parametrize(
    ("per_slot", "threshold", "hits"),
    [
        ([2] * 15 + [1], 31, True),
        ([1] + [2] * 15, 31, True),
        ([2] * 16, 31, False),
        ([2] * 16, 32, True),
        ([3] * 15 + [2], 47, True),
        ([3] * 16, 47, False),
        ([3] * 16, 48, True),
        ([1] * 15 + [0], 15, True),
        ([1] * 16, 15, False),
        ([1] * 16, 16, True),
    ],
    ids=lambda value: str(value) if not isinstance(value, list) else "slots",
)
def test_search_finds_hashes_at_the_pigeonhole_bound(
    per_slot: list[int], threshold: int, hits: bool
) -> None:
    """Flips spread so evenly that only one slot is within the probe radius."""
    rng = np.random.default_rng(7)
    known = np.unique(random_pdq(300, rng), axis=0)
    queries = flipped_per_slot(known[:20], per_slot, rng)
    index = NearIndex.build(known)

    found = _found(index, queries, threshold)

    assert found == brute_force(queries, known, threshold)
    assert {position for position, _, _ in found} == (set(range(20)) if hits else set())


def test_search_of_an_empty_batch_or_table_finds_nothing() -> None:
    rng = np.random.default_rng(1)
    known = np.unique(random_pdq(50, rng), axis=0)

    assert NearIndex.build(known).search(b"", 31).count == 0
    assert NearIndex.build(known[:0]).search(known.tobytes(), 256).count == 0


def test_search_counts_a_complement_as_256_not_0() -> None:
    """Four uint8 popcounts of 64 add up to 256, which must not wrap to 0."""
    rng = np.random.default_rng(2)
    known = np.unique(random_pdq(10, rng), axis=0)
    index = NearIndex.build(known)
    complement = ~known[:1]

    assert 0 not in index.search(complement.tobytes(), 255).rows
    assert _found(index, complement, 256)[-1] == (0, 256, 0)


def test_search_repeats_positions_for_duplicates_in_the_batch() -> None:
    rng = np.random.default_rng(3)
    known = np.unique(random_pdq(100, rng), axis=0)
    query = flipped(known[5:6], 10, rng)
    batch = np.concatenate([query, query, random_pdq(1, rng), query])

    found = _found(NearIndex.build(known), batch, 31)

    assert found == [(0, 10, 5), (1, 10, 5), (3, 10, 5)]


def test_search_splits_work_into_runs_and_blocks(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Tiny budgets put run and block boundaries between every few queries."""
    monkeypatch.setattr(pdq_index, "_CANDIDATE_BUDGET", 3)
    monkeypatch.setattr(pdq_index, "_QUERY_BLOCK", 5)
    monkeypatch.setattr(pdq_index, "_SCAN_ROWS", 7)
    rng = np.random.default_rng(4)
    known = _known(rng, 200, clustered=True)
    queries = _queries(rng, known, 31, count=6)
    index = NearIndex.build(known)

    for threshold in (31, 40, 60):
        assert _found(index, queries, threshold) == brute_force(
            queries, known, threshold
        )


@pytest.mark.parametrize(
    ("threshold", "radius"),
    [(0, 0), (15, 0), (16, 1), (31, 1), (32, 2), (47, 2), (48, None), (256, None)],
)
def test_probe_radius_follows_the_pigeonhole(
    threshold: int, radius: int | None
) -> None:
    assert probe_radius(threshold) == radius
