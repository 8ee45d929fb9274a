"""PDQ through the store: imports, deltas, removals, retirements and merges.

A random sequence of changes is applied to a store and, alongside, to a plain
Python model of the lists. After every step the served generation must give
each query exactly the live known hashes within the threshold that the model
gives, with their lists, categories and distances, nearest first and at most
NEAREST_MATCHES of them.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hashcheck._algorithms import Algorithm
from hashcheck_server import layout
from hashcheck_server import store as store_module
from hashcheck_server.errors import StoreCorrupt
from hashcheck_server.generation import Generation, ListMatch
from hashcheck_server.pdq_index import NEAREST_MATCHES, VALUE_NAMES
from hashcheck_server.store import Entries, HashStore
from pdq_oracle import distances, flipped, random_pdq

_RNG = np.random.default_rng(21)
_CENTRES = random_pdq(8, _RNG)
# Clusters: each centre with 15 variants 1 to 40 bits away, so that queries
# near a centre have more matches than NEAREST_MATCHES.
POOL = np.unique(
    np.concatenate(
        [_CENTRES]
        + [flipped(_CENTRES, int(bits), _RNG) for bits in _RNG.integers(1, 40, 15)]
    ),
    axis=0,
)
QUERIES = np.concatenate(
    [POOL[::3], flipped(POOL[1::3], 12, _RNG), random_pdq(4, _RNG)]
)
TABLE = distances(QUERIES, POOL)
LISTS = ("police", "hotline", "interpol")
CATEGORIES = ("A1", "B2", "baseline")

# The model: list -> {pool index: category}.
Model = dict[str, dict[int, str]]

_import = st.tuples(
    st.just("import"),
    st.sampled_from(LISTS),
    st.lists(st.integers(0, len(POOL) - 1), min_size=1, max_size=40),
    st.sampled_from(CATEGORIES),
    st.booleans(),
    st.booleans(),
)
_remove = st.tuples(
    st.just("remove"),
    st.one_of(st.none(), st.sampled_from(LISTS)),
    st.lists(st.integers(0, len(POOL) - 1), min_size=1, max_size=15),
)
_retire = st.tuples(st.just("retire"), st.sampled_from(LISTS))
_merge = st.tuples(st.just("merge"))
_steps = st.lists(st.one_of(_import, _import, _remove, _retire, _merge), max_size=8)


def _apply(store: HashStore, model: Model, step: tuple[object, ...]) -> None:
    kind = step[0]
    if kind == "import":
        _, name, picks, category, replace, rebuild = step
        assert isinstance(picks, list)
        entries = Entries.graded_alike(Algorithm.PDQ, POOL[picks], str(category))
        store.import_entries(
            str(name), [entries], replace=bool(replace), rebuild=bool(rebuild)
        )
        held = {} if replace else model.get(str(name), {})
        model[str(name)] = {**held, **dict.fromkeys(picks, str(category))}
    elif kind == "remove":
        _, name, picks = step
        assert isinstance(picks, list)
        if name is not None and str(name) not in model:
            return
        store.remove_hashes(
            Algorithm.PDQ, POOL[picks], list_name=None if name is None else str(name)
        )
        for list_name, held in model.items():
            if name is None or list_name == name:
                for pick in picks:
                    held.pop(pick, None)
    elif kind == "retire":
        if str(step[1]) in model:
            store.retire_list(str(step[1]))
            del model[str(step[1])]
    elif model:
        store.merge()


def _expected(
    model: Model, threshold: int
) -> dict[int, list[tuple[int, tuple[ListMatch, ...]]]]:
    provenance: dict[int, list[ListMatch]] = {}
    for list_name, held in model.items():
        for pick, category in held.items():
            provenance.setdefault(pick, []).append(ListMatch(list_name, category))
    expected = {}
    for position in range(QUERIES.shape[0]):
        found = sorted(
            (int(TABLE[position, pick]), tuple(sorted(matches)))
            for pick, matches in provenance.items()
            if TABLE[position, pick] <= threshold
        )
        if found:
            expected[position] = found
    return expected


def _served(
    store: HashStore, threshold: int
) -> dict[int, list[tuple[int, tuple[ListMatch, ...]]]]:
    generation = Generation.load(store.environment)
    try:
        hits = generation.check(
            Algorithm.PDQ, QUERIES.tobytes(), max_distance=threshold
        )
    finally:
        generation.close()
    served: dict[int, list[tuple[int, tuple[ListMatch, ...]]]] = {}
    for position, provenance, distance in zip(
        hits.positions.tolist(),
        hits.provenance_of.tolist(),
        hits.distances.tolist(),
        strict=True,
    ):
        served.setdefault(position, []).append((distance, hits.provenances[provenance]))
    return served


def _assert_answers_match(store: HashStore, model: Model, threshold: int) -> None:
    expected = _expected(model, threshold)
    served = _served(store, threshold)

    assert served.keys() == expected.keys()
    for position, hits in served.items():
        nearest = [distance for distance, _ in hits]
        assert nearest == sorted(nearest), "nearest first"
        if len(expected[position]) <= NEAREST_MATCHES:
            assert sorted(hits) == expected[position]
        else:
            wanted = [distance for distance, _ in expected[position][:NEAREST_MATCHES]]
            assert nearest == wanted


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(steps=_steps, threshold=st.sampled_from([0, 10, 31, 40, 60]))
def test_served_pdq_hits_equal_the_model(
    tmp_path_factory: pytest.TempPathFactory,
    monkeypatch: pytest.MonkeyPatch,
    steps: list[tuple[object, ...]],
    threshold: int,
) -> None:
    # A tiny delta limit makes automatic merges happen inside short runs.
    monkeypatch.setattr(store_module, "_MIN_DELTA_ROWS", 20)
    model: Model = {}
    with HashStore.open(tmp_path_factory.mktemp("pdq"), create=True) as store:
        for step in steps:
            _apply(store, model, step)

            _assert_answers_match(store, model, threshold)


def _pdq_store(data_dir: Path) -> HashStore:
    store = HashStore.open(data_dir, create=True)
    store.import_entries(
        "police", [Entries.graded_alike(Algorithm.PDQ, POOL[:60], "A1")]
    )
    store.import_entries(
        "hotline", [Entries.graded_alike(Algorithm.PDQ, POOL[60:], "B")]
    )
    return store


def test_pdq_hits_carry_distance_and_at_most_the_nearest(data_dir: Path) -> None:
    with _pdq_store(data_dir) as store:
        _assert_answers_match(
            store,
            {
                "police": dict.fromkeys(range(60), "A1"),
                "hotline": dict.fromkeys(range(60, len(POOL)), "B"),
            },
            31,
        )
        served = _served(store, 256)

    assert all(len(hits) == NEAREST_MATCHES for hits in served.values())


def test_pdq_default_distance_is_31(data_dir: Path) -> None:
    with _pdq_store(data_dir) as store:
        generation = Generation.load(store.environment)
        try:
            default = generation.check(Algorithm.PDQ, QUERIES.tobytes())
            explicit = generation.check(
                Algorithm.PDQ, QUERIES.tobytes(), max_distance=31
            )
        finally:
            generation.close()

    assert default.distances.tolist() == explicit.distances.tolist()
    assert default.distances.max() <= 31


def test_store_without_near_index_builds_it_in_memory(
    data_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A PDQ table stored before the index existed is still served exactly."""
    model = {
        "police": dict.fromkeys(range(60), "A1"),
        "hotline": dict.fromkeys(range(60, len(POOL)), "B"),
    }
    with _pdq_store(data_dir) as store:
        with store.environment.write() as transaction:
            for part in layout.TABLE_PARTS:
                for name in VALUE_NAMES:
                    key = layout.near_key(Algorithm.PDQ, part, name)
                    transaction.delete(key, db=store.environment.tables)

        with caplog.at_level(logging.WARNING):
            _assert_answers_match(store, model, 31)

    assert "no near-duplicate index" in caplog.text


def test_store_with_a_mismatched_near_index_is_refused(data_dir: Path) -> None:
    with _pdq_store(data_dir) as store:
        key = layout.near_key(Algorithm.PDQ, layout.BASE, VALUE_NAMES[0])
        with store.environment.write() as transaction:
            transaction.put(
                key, b'{"scheme": "mih-16x16", "count": 1}', db=store.environment.tables
            )

        with pytest.raises(StoreCorrupt, match="near-duplicate index covers 1"):
            Generation.load(store.environment)
