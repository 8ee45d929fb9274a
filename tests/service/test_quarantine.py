"""Flood quarantine: a hash hitting for many tenants at once is held by itself.

Every hash is synthetic (tests/synthetic.py, tests/tenancy.py).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from hashcheck._algorithms import Algorithm
from hashcheck_server import layout, quarantine
from hashcheck_server.caller import Caller
from hashcheck_server.cli import _build_parser
from hashcheck_server.config import resolve, server_config
from hashcheck_server.floods import (
    FloodWatch,
    QuarantineGuard,
    QuarantineMetrics,
    QuarantinePolicy,
)
from hashcheck_server.generation import Generation
from hashcheck_server.server import RunningServer
from hashcheck_server.store import HashStore
from recourse import client_of, hits, json_lines, serve, server_cli, wait_until
from tenancy import ListHashes, add_tenants, build_store, make_list_hashes

MD5 = Algorithm.MD5


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _watch(
    tenants: int = 3, window: float = 60.0, max_hashes: int = 100
) -> tuple[FloodWatch, _Clock]:
    clock = _Clock()
    policy = QuarantinePolicy(tenants=tenants, window_seconds=window)
    return FloodWatch(policy, max_hashes=max_hashes, clock=clock), clock


def test_flood_watch_reports_a_hash_once_enough_tenants_hit_it() -> None:
    watch, _ = _watch(tenants=3)

    first = watch.note("acme", MD5, [b"a" * 16, b"b" * 16])
    again = watch.note("acme", MD5, [b"a" * 16])
    second = watch.note("beta", MD5, [b"a" * 16])
    third = watch.note("gamma", MD5, [b"a" * 16])
    later = watch.note("delta", MD5, [b"a" * 16])

    assert first == again == second == [] and later == []
    assert [(f.hash, f.tenants) for f in third] == [(b"a" * 16, 3)]
    assert watch.tracked == 1  # b"b" only: the flooded hash is settled


def test_flood_watch_forgets_sightings_older_than_the_window() -> None:
    watch, clock = _watch(tenants=3, window=60.0)
    watch.note("acme", MD5, [b"a" * 16])
    watch.note("beta", MD5, [b"a" * 16])

    clock.now += 61
    late = watch.note("gamma", MD5, [b"a" * 16])
    clock.now += 30
    fourth = watch.note("delta", MD5, [b"a" * 16])
    fifth = watch.note("eps", MD5, [b"a" * 16])

    assert late == [] and fourth == []
    assert [f.tenants for f in fifth] == [3]


def test_flood_watch_tracks_a_bounded_number_of_hashes() -> None:
    watch, clock = _watch(tenants=2, max_hashes=10)
    digests = [bytes([n]) * 16 for n in range(50)]
    watch.note("acme", MD5, digests)

    assert watch.tracked == 10
    # The most recently hit ten are kept; the first one is forgotten.
    assert watch.note("beta", MD5, digests[:1]) == []
    assert [f.hash for f in watch.note("beta", MD5, digests[-1:])] == digests[-1:]
    clock.now += 3601
    watch.note("gamma", MD5, [])
    assert watch.tracked == 0


def test_nothing_is_counted_without_tenants(tmp_path: Path) -> None:
    build_store(tmp_path / "data", make_list_hashes())
    environment = layout.Environment(tmp_path / "data")
    watch, _ = _watch(tenants=1)
    guard = QuarantineGuard(
        environment,
        QuarantinePolicy(tenants=1),
        QuarantineMetrics(CollectorRegistry()),
        watch,
    )
    try:
        generation = Generation.load(environment)
        batch = make_list_hashes().both[:2].tobytes()
        found = generation.check(MD5, batch)
        guard.observe(Caller(None, "r1", "ipv4:127.0.0.1:5000"), MD5, batch, found)
        guard.observe(None, MD5, batch, found)
        generation.close()
    finally:
        environment.close()

    assert found.count == 2
    assert watch.tracked == 0


def test_a_held_hash_never_hits_until_released(tmp_path: Path) -> None:
    hashes = make_list_hashes()
    build_store(tmp_path / "data", hashes)
    held, kept = hashes.police_a1[0].tobytes(), hashes.police_a1[1].tobytes()
    with HashStore.open(tmp_path / "data") as store:
        digest_before = store.generation().digest
        generation = quarantine.hold(
            store.environment, quarantine.Flood(MD5, held, 4), 60.0
        )
        repeated = quarantine.hold(
            store.environment, quarantine.Flood(MD5, held, 9), 60.0
        )
        while_held = _found(store, held + kept)
        record = store.generation()
        released, _ = quarantine.release(store.environment, [held.hex()])
        held_again = quarantine.hold(
            store.environment, quarantine.Flood(MD5, held, 9), 60.0
        )
        after_release = _found(store, held + kept)
        digest_after = store.generation().digest

    assert generation == record.number and repeated is None
    assert record.digest != digest_before
    assert while_held == ([1], 1)
    assert [r.status for r in released] == ["released"] and held_again is None
    assert after_release == ([0, 1], 0)
    # Released, nothing is held: the digest is the one of the lists alone.
    assert digest_after == digest_before


def test_removing_a_held_hash_marks_its_hold_removed(tmp_path: Path) -> None:
    hashes = make_list_hashes()
    build_store(tmp_path / "data", hashes)
    held = hashes.both[0]
    with HashStore.open(tmp_path / "data") as store:
        quarantine.hold(store.environment, quarantine.Flood(MD5, held.tobytes(), 5), 1)
        store.remove_hashes(MD5, held.reshape(1, -1), list_name="police")
        after_one = _statuses(store)
        store.remove_hashes(MD5, held.reshape(1, -1))
        after_all = _statuses(store)
        released, generation = quarantine.release(
            store.environment, [held.tobytes().hex()]
        )

    # Still on `hotline` after the first removal, so the hold stands.
    assert after_one == ["held"] and after_all == ["removed"]
    assert released == [] and generation is None


@pytest.fixture
def flood_store(tmp_path: Path) -> tuple[Path, ListHashes, dict[str, str]]:
    hashes = make_list_hashes()
    data = tmp_path / "data"
    build_store(data, hashes)
    return data, hashes, add_tenants(data)


@pytest.fixture
def flood_server(
    flood_store: tuple[Path, ListHashes, dict[str, str]],
) -> Iterator[RunningServer]:
    running = serve(flood_store[0], QuarantinePolicy(tenants=3, window_seconds=60))
    yield running
    running.stop(grace_seconds=1.0)


def test_a_flooding_hash_is_quarantined_by_itself(
    flood_store: tuple[Path, ListHashes, dict[str, str]],
    flood_server: RunningServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    data, hashes, keys = flood_store
    flooding, other = hashes.both[:1], hashes.both[1:2]
    clients = {name: client_of(flood_server, keys[name]) for name in keys}
    caplog.set_level(logging.INFO, logger="hashcheck_server")

    # Two tenants hit it: no flood yet, and it keeps hitting.
    assert hits(clients["acme"], flooding) == {flooding[0].tobytes().hex()}
    assert hits(clients["beta"], np.concatenate([flooding, other]))
    # The hotline's own operator looking it up does not count.
    assert hits(clients["ops"], flooding)
    time.sleep(0.2)
    assert hits(clients["acme"], flooding)
    # A third tenant within the window: held, and soon no hits for anyone.
    assert hits(clients["gamma"], flooding)
    wait_until(lambda: not hits(clients["acme"], flooding))

    assert hits(clients["ops"], other) == {other[0].tobytes().hex()}
    assert hits(clients["beta"], flooding) == set()
    held = json_lines("quarantine", "list", "--data", str(data), "--held")
    assert [(r["hash"], r["tenants"], r["status"]) for r in held] == [
        (flooding[0].tobytes().hex(), 3, "held")
    ]
    assert _sample(flood_server, "hashcheck_quarantined_hashes_total") == 1
    assert _sample(flood_server, "hashcheck_quarantine_held_hashes") == 1
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert [getattr(r, "event", None) for r in warnings] == ["hash_quarantined"]
    assert flooding[0].tobytes().hex() in warnings[0].getMessage()

    # The operator releases it: it hits again, and is never held again.
    released = server_cli("quarantine", "release", "--data", str(data), held[0]["hash"])
    assert released.returncode == 0, released.stderr
    wait_until(lambda: bool(hits(clients["acme"], flooding)))
    for name in ("beta", "gamma", "ops", "small", "quick"):
        assert hits(clients[name], flooding)
    statuses = json_lines("quarantine", "list", "--data", str(data))
    assert [r["status"] for r in statuses] == ["released"]
    assert hits(clients["acme"], flooding)
    assert _sample(flood_server, "hashcheck_quarantined_hashes_total") == 1
    for client in clients.values():
        client.close()


def test_quarantine_release_of_a_hash_not_held_fails(tmp_path: Path) -> None:
    build_store(tmp_path / "data", make_list_hashes())

    result = server_cli(
        "quarantine", "release", "--data", str(tmp_path / "data"), "00" * 16
    )

    assert result.returncode == 2
    assert "None of these hashes is on hold" in result.stderr


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        ([], QuarantinePolicy(tenants=5, window_seconds=3600.0)),
        (["--quarantine-tenants", "0"], QuarantinePolicy(0, 3600.0)),
        (["--quarantine-window", "90"], QuarantinePolicy(5, 90.0)),
    ],
    ids=["defaults", "off", "window"],
)
def test_serve_settings_set_the_quarantine(
    tmp_path: Path, flags: list[str], expected: QuarantinePolicy
) -> None:
    args = _build_parser().parse_args(["serve", "--data", str(tmp_path), *flags])

    assert server_config(resolve(args, environ={})).quarantine == expected


def _found(store: HashStore, batch: bytes) -> tuple[list[int], int]:
    """Positions that hit in the committed generation, and its held count."""
    generation = Generation.load(store.environment)
    try:
        positions = generation.check(MD5, batch).positions.tolist()
        return positions, generation.held_count
    finally:
        generation.close()


def _statuses(store: HashStore) -> list[str]:
    with store.environment.read() as transaction:
        records = quarantine.read_records(store.environment, transaction)
    return [record.status for record in records]


def _sample(running: RunningServer, name: str) -> float | None:
    return running.registry.get_sample_value(name)
