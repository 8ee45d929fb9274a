"""Daily deltas give exactly the answers a full rebuild gives.

Two stores receive the same random sequence of changes: one the normal way
(new hashes go to the delta, merged only when it grows large), one forcing a
full rebuild on every import. After every step both must answer every hash
ever seen identically: same hits, same lists, same categories.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hashcheck._algorithms import Algorithm
from hashcheck_server import store as store_module
from hashcheck_server.generation import Generation
from hashcheck_server.store import Entries, HashStore
from synthetic import random_hashes

POOL = random_hashes(400, seed=11)
POOL[:100, :12] = 0x5A  # shared prefixes, so buckets get long
LISTS = ("police", "hotline", "interpol")
CATEGORIES = ("A1", "B2", "baseline")

_import = st.tuples(
    st.just("import"),
    st.sampled_from(LISTS),
    st.lists(st.integers(0, len(POOL) - 1), min_size=1, max_size=60),
    st.sampled_from(CATEGORIES),
    st.booleans(),
)
_remove = st.tuples(
    st.just("remove"),
    st.one_of(st.none(), st.sampled_from(LISTS)),
    st.lists(st.integers(0, len(POOL) - 1), min_size=1, max_size=20),
)
_retire = st.tuples(st.just("retire"), st.sampled_from(LISTS))
_merge = st.tuples(st.just("merge"))
_steps = st.lists(st.one_of(_import, _import, _remove, _retire, _merge), max_size=12)


def _answers(store: HashStore) -> dict[int, tuple[object, ...]]:
    generation = Generation.load(store.environment)
    try:
        hits = generation.check(Algorithm.MD5, POOL.tobytes())
        return {
            int(position): hits.provenances[provenance]
            for position, provenance in zip(
                hits.positions, hits.provenance_of, strict=True
            )
        }
    finally:
        generation.close()


def _apply(store: HashStore, step: tuple[object, ...], rebuild: bool) -> None:
    kind = step[0]
    if kind == "import":
        _, name, picks, category, replace = step
        entries = Entries.graded_alike(Algorithm.MD5, POOL[list(picks)], str(category))
        store.import_entries(
            str(name), [entries], replace=bool(replace), rebuild=rebuild
        )
    elif kind == "remove":
        _, name, picks = step
        if name is None or _has_list(store, str(name)):
            store.remove_hashes(
                Algorithm.MD5,
                POOL[list(picks)],
                list_name=None if name is None else str(name),
            )
    elif kind == "retire":
        if _has_list(store, str(step[1])):
            store.retire_list(str(step[1]))
    elif _has_tables(store):
        store.merge()


def _has_list(store: HashStore, name: str) -> bool:
    return any(summary.record.name == name for summary in store.lists())


def _has_tables(store: HashStore) -> bool:
    return bool(store.lists())


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(steps=_steps)
def test_delta_answers_equal_full_rebuild(
    tmp_path_factory: pytest.TempPathFactory,
    monkeypatch: pytest.MonkeyPatch,
    steps: list[tuple[object, ...]],
) -> None:
    # A tiny delta limit makes the automatic merge happen inside short runs.
    monkeypatch.setattr(store_module, "_MIN_DELTA_ROWS", 50)
    root: Path = tmp_path_factory.mktemp("deltas")
    with (
        HashStore.open(root / "delta", create=True) as with_deltas,
        HashStore.open(root / "rebuild", create=True) as rebuilt,
    ):
        for step in steps:
            _apply(with_deltas, step, rebuild=False)
            _apply(rebuilt, step, rebuild=True)

            assert _answers(with_deltas) == _answers(rebuilt)


def test_small_import_writes_delta_not_base(data_dir: Path) -> None:
    base = random_hashes(200_000, seed=1)
    with HashStore.open(data_dir, create=True) as store:
        store.import_entries("police", [Entries.graded_alike(Algorithm.MD5, base)])
        report = store.import_entries(
            "hotline",
            [Entries.graded_alike(Algorithm.MD5, random_hashes(1_000, seed=2))],
        )
        generation = Generation.load(store.environment)
        try:
            counts = [
                part.count for part in generation._states[Algorithm.MD5].table.parts
            ]
        finally:
            generation.close()

    assert report.total("added") == 1_000
    assert counts == [200_000, 1_000]


def test_merge_folds_delta_into_base(data_dir: Path) -> None:
    with HashStore.open(data_dir, create=True) as store:
        store.import_entries(
            "police", [Entries.graded_alike(Algorithm.MD5, random_hashes(1_000))]
        )
        store.import_entries(
            "hotline", [Entries.graded_alike(Algorithm.MD5, random_hashes(10, seed=3))]
        )
        before = _answers(store)

        store.merge()
        generation = Generation.load(store.environment)
        try:
            counts = [
                part.count for part in generation._states[Algorithm.MD5].table.parts
            ]
        finally:
            generation.close()

        assert counts == [1_010]
        assert _answers(store) == before
    assert np.all(POOL[:100, :12] == 0x5A)
