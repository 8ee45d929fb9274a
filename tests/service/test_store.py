"""Imports, removals and retirements, each as one generation, and their failures."""

from __future__ import annotations

from pathlib import Path

import lmdb
import numpy as np
import pytest

from hashcheck._algorithms import Algorithm
from hashcheck_server import layout
from hashcheck_server.errors import (
    ImportRejected,
    StoreCorrupt,
    StoreError,
    StoreFull,
    UnknownList,
)
from hashcheck_server.generation import Generation, ListMatch
from hashcheck_server.store import Entries, HashStore
from synthetic import md5_entries, random_hashes


def _hits(
    store: HashStore, algorithm: Algorithm, batch: np.ndarray
) -> dict[int, tuple[ListMatch, ...]]:
    generation = Generation.load(store.environment)
    try:
        hits = generation.check(algorithm, np.ascontiguousarray(batch).tobytes())
        return {
            int(position): hits.provenances[provenance]
            for position, provenance in zip(
                hits.positions, hits.provenance_of, strict=True
            )
        }
    finally:
        generation.close()


def test_import_counts_and_generation(data_dir: Path) -> None:
    hashes = random_hashes(1_000)
    with HashStore.open(data_dir, create=True) as store:
        first = store.import_entries("police", [md5_entries(hashes, "A1")])
        again = store.import_entries("police", [md5_entries(hashes[:10], "A1")])

        assert (first.generation, again.generation) == (1, 2)
        assert first.total("added") == 1_000
        assert (again.total("added"), again.total("unchanged")) == (0, 10)
        assert store.list_summary("police").counts == {Algorithm.MD5: {"A1": 1_000}}


def test_import_repeated_hash_last_category_wins(data_dir: Path) -> None:
    hashes = random_hashes(3)
    batch = np.concatenate([hashes, hashes[:1]])
    entries = Entries(
        Algorithm.MD5, batch, np.array([0, 0, 0, 1], np.int32), ("A1", "B2")
    )
    with HashStore.open(data_dir, create=True) as store:
        report = store.import_entries("police", [entries])

        hits = _hits(store, Algorithm.MD5, hashes)

    assert hits[0] == (ListMatch("police", "B2"),)
    assert hits[1] == (ListMatch("police", "A1"),)
    assert report.total("regraded") == 1


def test_hash_on_two_lists_names_both(data_dir: Path) -> None:
    hashes = random_hashes(100)
    with HashStore.open(data_dir, create=True) as store:
        store.import_entries("police", [md5_entries(hashes, "A1")])
        store.import_entries("hotline", [md5_entries(hashes[:5], "baseline")])

        hits = _hits(store, Algorithm.MD5, hashes[:6])

    assert hits[0] == (ListMatch("hotline", "baseline"), ListMatch("police", "A1"))
    assert hits[5] == (ListMatch("police", "A1"),)


def test_category_update_moves_hash(data_dir: Path) -> None:
    hashes = random_hashes(10)
    with HashStore.open(data_dir, create=True) as store:
        store.import_entries("police", [md5_entries(hashes, "A1")])
        report = store.import_entries("police", [md5_entries(hashes[:2], "A2")])

        assert report.total("updated") == 2
        assert store.list_summary("police").counts[Algorithm.MD5] == {"A1": 8, "A2": 2}


def test_replace_list_keeps_only_new_entries(data_dir: Path) -> None:
    old, new = random_hashes(50, seed=1), random_hashes(20, seed=2)
    with HashStore.open(data_dir, create=True) as store:
        store.import_entries("police", [md5_entries(old)])
        report = store.import_entries("police", [md5_entries(new)], replace=True)

        assert (report.total("added"), report.total("removed")) == (20, 50)
        assert _hits(store, Algorithm.MD5, old) == {}
        assert len(_hits(store, Algorithm.MD5, new)) == 20


def test_remove_from_one_list_keeps_other(data_dir: Path) -> None:
    hashes = random_hashes(10)
    with HashStore.open(data_dir, create=True) as store:
        store.import_entries("police", [md5_entries(hashes)])
        store.import_entries("hotline", [md5_entries(hashes[:3])])

        removed, _ = store.remove_hashes(Algorithm.MD5, hashes[:4], list_name="police")
        hits = _hits(store, Algorithm.MD5, hashes[:4])

    assert removed == 4
    assert sorted(hits) == [0, 1, 2]
    assert all(lists == (ListMatch("hotline", ""),) for lists in hits.values())


def test_remove_from_every_list_stops_hits(data_dir: Path) -> None:
    hashes = random_hashes(10)
    with HashStore.open(data_dir, create=True) as store:
        store.import_entries("police", [md5_entries(hashes)])
        store.import_entries("hotline", [md5_entries(hashes[:3])])

        removed, _ = store.remove_hashes(Algorithm.MD5, hashes[:2])

        assert removed == 2
        assert sorted(_hits(store, Algorithm.MD5, hashes[:4])) == [2, 3]


def test_retire_list_then_merge_compacts_table(data_dir: Path) -> None:
    police, hotline = random_hashes(300, seed=1), random_hashes(100, seed=2)
    with HashStore.open(data_dir, create=True) as store:
        store.import_entries("police", [md5_entries(police)])
        store.import_entries("hotline", [md5_entries(hotline)])

        held, _ = store.retire_list("police")
        assert held == 300
        assert _hits(store, Algorithm.MD5, police) == {}

        report = store.import_entries(
            "hotline", [md5_entries(random_hashes(5, seed=3))]
        )
        # The delta import leaves the retired rows in the base until a merge.
        assert report.algorithms[Algorithm.MD5].table_hashes == 405
        store.merge()
        assert _table_rows(store, Algorithm.MD5) == 105
        assert len(_hits(store, Algorithm.MD5, hotline)) == 100


def _table_rows(store: HashStore, algorithm: Algorithm) -> int:
    generation = Generation.load(store.environment)
    try:
        return generation.table_rows(algorithm)
    finally:
        generation.close()


def test_unknown_list_is_refused(data_dir: Path) -> None:
    with HashStore.open(data_dir, create=True) as store:
        store.import_entries("police", [md5_entries(random_hashes(3))])
        with pytest.raises(UnknownList):
            store.retire_list("nope")
        with pytest.raises(UnknownList):
            store.remove_hashes(Algorithm.MD5, random_hashes(1), list_name="nope")


@pytest.mark.parametrize(
    "name", ["", "x" * 201, "a\x00b"], ids=["empty", "long", "nul"]
)
def test_bad_list_name_is_refused(data_dir: Path, name: str) -> None:
    with HashStore.open(data_dir, create=True) as store, pytest.raises(ImportRejected):
        store.import_entries(name, [md5_entries(random_hashes(1))])


def test_failed_import_leaves_previous_generation(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hashes = random_hashes(100)
    with HashStore.open(data_dir, create=True) as store:
        store.import_entries("police", [md5_entries(hashes)])

        def crash(*_: object) -> None:
            raise RuntimeError("simulated crash in the middle of an import")

        monkeypatch.setattr(HashStore, "_write_memberships", crash)
        with pytest.raises(RuntimeError):
            store.import_entries("hotline", [md5_entries(random_hashes(50, seed=9))])

        assert store.generation().number == 1
        assert [summary.record.name for summary in store.lists()] == ["police"]
        assert len(_hits(store, Algorithm.MD5, hashes)) == 100


def test_full_map_is_store_full_and_rolls_back(data_dir: Path) -> None:
    with HashStore.open(data_dir, create=True, map_size=1 << 20) as store:
        store.import_entries("police", [md5_entries(random_hashes(100))])
        with pytest.raises(StoreFull):
            store.import_entries("big", [md5_entries(random_hashes(200_000, seed=5))])

        assert store.generation().number == 1


def test_foreign_lmdb_directory_is_refused(tmp_path: Path) -> None:
    foreign = lmdb.open(str(tmp_path), max_dbs=2)
    with foreign.begin(write=True) as transaction:
        transaction.put(b"something", b"else")
    foreign.close()

    with pytest.raises(StoreCorrupt, match="not a HashCheck store"):
        HashStore.open(tmp_path)


def test_garbage_file_as_store_is_refused(tmp_path: Path) -> None:
    (tmp_path / "data.mdb").write_bytes(b"this is not an LMDB file" * 1000)

    with pytest.raises(StoreError):
        HashStore.open(tmp_path)


def test_missing_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="no HashCheck store yet|not a HashCheck data"):
        HashStore.open(tmp_path / "absent")


def test_store_survives_reopen(data_dir: Path) -> None:
    hashes = random_hashes(200, width=20)
    with HashStore.open(data_dir, create=True) as store:
        store.import_entries(
            "police", [Entries.graded_alike(Algorithm.SHA1, hashes, "1")]
        )

    with HashStore.open(data_dir, readonly=True) as store:
        assert len(_hits(store, Algorithm.SHA1, hashes)) == 200
        assert layout.FORMAT == b"hashcheck-store/1"


def test_tables_are_mapped_not_copied(data_dir: Path) -> None:
    with HashStore.open(data_dir, create=True) as store:
        store.import_entries("police", [md5_entries(random_hashes(5_000), "A1")])
    environment = layout.Environment(data_dir, readonly=True)
    transaction = environment.read()
    try:
        mapped = layout.map_table_part(
            environment, transaction, Algorithm.MD5, layout.BASE
        )
        assert mapped is not None
        rows, index = mapped

        # Views of LMDB's read-only memory map: no bytes object holds a copy.
        for array in (rows, index.filter, index.directory):
            assert isinstance(_root_buffer(array), memoryview)
            assert not array.flags.writeable
        assert rows.shape == (5_000, 16)
    finally:
        transaction.abort()
        environment.close()


def _root_buffer(array: np.ndarray) -> object:
    """What an array's memory belongs to, through any chain of views."""
    base: object = array
    while isinstance(base, np.ndarray) and base.base is not None:
        base = base.base
    return base
