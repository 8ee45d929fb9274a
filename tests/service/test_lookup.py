"""The lookup against a plain Python set, on random and adversarial tables."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hashcheck_server.lookup import SortedTable
from hashcheck_server.table import (
    TableIndex,
    build_index,
    leading_bits,
    sort_unique_labelled_rows,
    sort_unique_rows,
)

WIDTHS = [
    pytest.param(16, id="md5"),
    pytest.param(20, id="sha1"),
    pytest.param(32, id="sha256"),
]


def _table(rows: np.ndarray) -> tuple[SortedTable, np.ndarray]:
    unique, _ = sort_unique_rows(rows)
    return SortedTable(unique, build_index(unique), rows.shape[1]), unique


def _oracle(unique: np.ndarray, batch: np.ndarray) -> list[tuple[int, int]]:
    row_of = {row.tobytes(): number for number, row in enumerate(unique)}
    return [
        (position, row_of[query.tobytes()])
        for position, query in enumerate(batch)
        if query.tobytes() in row_of
    ]


def _found(table: SortedTable, batch: np.ndarray) -> list[tuple[int, int]]:
    matches = table.find(np.ascontiguousarray(batch).tobytes())
    return list(zip(matches.positions.tolist(), matches.rows.tolist(), strict=True))


@pytest.mark.parametrize("width", WIDTHS)
def test_find_random_table_matches_set(width: int) -> None:
    generator = np.random.default_rng(width)
    rows = generator.integers(0, 256, size=(20_000, width), dtype=np.uint8)
    table, unique = _table(rows)
    batch = np.concatenate(
        [rows[::7], generator.integers(0, 256, size=(5_000, width), dtype=np.uint8)]
    )
    generator.shuffle(batch)

    assert _found(table, batch) == _oracle(unique, batch)


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("shared_bytes", [4, 8, 12, 15], ids=lambda n: f"prefix{n}")
def test_find_shared_prefixes_exact(width: int, shared_bytes: int) -> None:
    generator = np.random.default_rng(shared_bytes)
    rows = generator.integers(0, 256, size=(3_000, width), dtype=np.uint8)
    rows[:2_000, :shared_bytes] = 0xAB
    table, unique = _table(rows)
    near = rows[:500].copy()
    near[:, -1] ^= 1
    batch = np.concatenate([rows[:1_500], near, rows[2_500:]])

    assert _found(table, batch) == _oracle(unique, batch)


def test_find_scanned_and_searched_buckets_in_one_batch() -> None:
    """Buckets on both sides of the scan limit, hit and missed in one batch."""
    generator = np.random.default_rng(3)
    rows = generator.integers(0, 256, size=(4_000, 16), dtype=np.uint8)
    for first, size in enumerate([30, 64, 65, 200]):
        start = first * 1_000
        rows[start : start + size, :4] = [0x10 * (first + 1), 0, 0, 0]
    table, unique = _table(rows)
    missed = rows[::3].copy()
    missed[:, -1] ^= 0x55
    batch = np.concatenate([rows[::2], missed])
    generator.shuffle(batch)

    assert _found(table, batch) == _oracle(unique, batch)


def _one_bit_index(unique: np.ndarray) -> TableIndex:
    """The index as stores written before filter blocks hold it: one bit a hash."""
    index = build_index(unique)
    bit_numbers = leading_bits(unique) >> np.uint32(32 - index.filter_bits)
    bitset = np.zeros((1 << index.filter_bits) // 8, dtype=np.uint8)
    np.bitwise_or.at(
        bitset, bit_numbers >> 3, np.left_shift(1, bit_numbers & 7).astype(np.uint8)
    )
    return TableIndex(index.filter_bits, index.directory_bits, bitset, index.directory)


@pytest.mark.parametrize("width", WIDTHS)
def test_find_with_an_older_stores_one_bit_filter(width: int) -> None:
    generator = np.random.default_rng(width + 1)
    rows = generator.integers(0, 256, size=(20_000, width), dtype=np.uint8)
    unique, _ = sort_unique_rows(rows)
    table = SortedTable(unique, _one_bit_index(unique), width)
    batch = np.concatenate(
        [rows[::5], generator.integers(0, 256, size=(5_000, width), dtype=np.uint8)]
    )

    assert _found(table, batch) == _oracle(unique, batch)


def test_filter_passes_few_random_misses() -> None:
    """Three bits of a 64-bit block: a few in a hundred misses get past it."""
    generator = np.random.default_rng(5)
    rows = generator.integers(0, 256, size=(200_000, 16), dtype=np.uint8)
    unique, _ = sort_unique_rows(rows)
    table = SortedTable(unique, build_index(unique), 16)
    misses = generator.integers(0, 256, size=(100_000, 16), dtype=np.uint8)
    heads = np.ndarray((100_000,), dtype=">u8", buffer=misses.data, strides=(16,))

    passed = table._pass_filter(heads.astype(np.uint64)).size / 100_000

    assert passed < 0.04


def test_find_empty_batch_and_empty_table() -> None:
    table, _ = _table(
        np.random.default_rng(1).integers(0, 256, (10, 16), dtype=np.uint8)
    )
    empty_table, _ = _table(np.empty((0, 16), dtype=np.uint8))

    assert table.find(b"").positions.size == 0
    assert empty_table.find(bytes(32)).positions.size == 0


def test_find_all_hits_with_duplicates() -> None:
    rows = np.random.default_rng(2).integers(0, 256, (1_000, 16), dtype=np.uint8)
    table, unique = _table(rows)
    batch = np.concatenate([rows, rows[::-1], rows[:10]])

    found = _found(table, batch)

    assert len(found) == batch.shape[0]
    assert found == _oracle(unique, batch)


def test_sort_unique_rows_last_record_wins() -> None:
    rows = np.array([[3] * 16, [1] * 16, [3] * 16, [2] * 16], dtype=np.uint8)

    unique, source = sort_unique_rows(rows)

    assert unique[:, 0].tolist() == [1, 2, 3]
    assert source.tolist() == [1, 3, 2]


@pytest.mark.parametrize(
    ("labels", "regraded"),
    [
        ([0, 0, 0, 0, 0], 0),  # repeats that agree are no regrading
        ([0, 0, 1, 0, 0], 1),  # row 3: A1, then B2
        ([0, 1, 1, 1, 1], 1),  # row 1 agrees; row 3 is regraded
        ([1, 0, 0, 0, 1], 1),  # row 3: B2, A1, then B2 again: still one
        ([0, 1, 2, 2, 1], 2),  # rows 3 and 1 both
    ],
)
def test_sort_unique_labelled_rows_counts_hashes_graded_two_ways(
    labels: list[int], regraded: int
) -> None:
    rows = np.array([[3] * 16, [1] * 16, [3] * 16, [1] * 16, [3] * 16], np.uint8)

    unique, source, counted = sort_unique_labelled_rows(
        rows, np.array(labels, np.int32)
    )

    assert unique[:, 0].tolist() == [1, 3]
    assert source.tolist() == [3, 4]
    assert counted == regraded


def _hash_sets(width: int) -> st.SearchStrategy[tuple[list[bytes], list[bytes]]]:
    """Tables and batches drawn from a small alphabet, so prefixes collide often."""
    byte = st.sampled_from([0, 1, 0x7F, 0x80, 0xFF])
    hash_ = st.lists(byte, min_size=width, max_size=width).map(bytes)
    mixed = st.one_of(hash_, st.binary(min_size=width, max_size=width))
    return st.tuples(st.lists(mixed, max_size=300), st.lists(mixed, max_size=300))


@pytest.mark.parametrize("width", WIDTHS)
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_find_matches_set_property(width: int, data: st.DataObject) -> None:
    table_hashes, extra = data.draw(_hash_sets(width))
    batch = (
        extra + data.draw(st.lists(st.sampled_from(table_hashes), max_size=50))
        if table_hashes
        else extra
    )
    rows = np.frombuffer(b"".join(table_hashes), dtype=np.uint8).reshape(-1, width)
    table, unique = _table(rows)
    queries = np.frombuffer(b"".join(batch), dtype=np.uint8).reshape(-1, width)

    known = set(table_hashes)
    found = table.find(b"".join(batch))

    assert found.positions.tolist() == [i for i, h in enumerate(batch) if h in known]
    assert [unique[row].tobytes() for row in found.rows] == [
        h for h in batch if h in known
    ]
    assert _found(table, queries) == _oracle(unique, queries)
