"""Withdrawal notices: a tenant hears of its hits that were de-listed, and only its own.

Every hash is synthetic (tests/synthetic.py, tests/tenancy.py).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from hashcheck import AsyncClient, Withdrawal
from hashcheck._algorithms import Algorithm
from hashcheck._cli import main as client_main
from hashcheck_server import layout
from hashcheck_server.audit import AuditEntry, AuditLog
from hashcheck_server.generation import Generation, ListMatch
from hashcheck_server.server import RunningServer
from hashcheck_server.store import Entries, HashStore, Withdrawals
from hashcheck_server.withdrawals import Notice, read_events, withdrawal_notices
from recourse import client_of, hits, serve, wait_until
from synthetic import md5_entries, random_hashes
from tenancy import ListHashes, add_tenants, build_store, make_list_hashes

MD5 = Algorithm.MD5


@pytest.fixture
def store(tmp_path: Path) -> tuple[Path, ListHashes]:
    hashes = make_list_hashes()
    build_store(tmp_path / "data", hashes)
    return tmp_path / "data", hashes


@pytest.fixture
def audit(tmp_path: Path) -> Iterator[AuditLog]:
    log = AuditLog.open(tmp_path / "audit")
    yield log
    log.close()


def _told(audit: AuditLog, tenant: str, row: np.ndarray, *lists: str) -> None:
    """Record that `tenant` was told `row` hit on `lists`, a moment ago."""
    entry = AuditEntry(
        time=time.time() - 5,
        tenant=tenant,
        algorithm=_algorithm_of(row).value,
        hash=row.tobytes().hex(),
        lists=tuple((name, "") for name in lists),
        request_id="r",
        peer="ipv4:127.0.0.1:1",
        generation=1,
    )
    audit.record([entry])


def _algorithm_of(row: np.ndarray) -> Algorithm:
    return MD5 if row.size == 16 else Algorithm.PDQ


def _notices(
    data: Path | layout.Environment,
    audit: AuditLog,
    tenant: str,
    *,
    since: float = 0.0,
    visible: Callable[[ListMatch], bool] | None = None,
) -> list[Notice]:
    """The tenant's notices from the generation committed in `data`."""
    if not isinstance(data, layout.Environment):
        environment = layout.Environment(data, readonly=True)
        try:
            return _notices(environment, audit, tenant, since=since, visible=visible)
        finally:
            environment.close()
    generation = Generation.load(data)
    try:
        return withdrawal_notices(
            generation, audit, tenant=tenant, visible=visible, since=since
        )
    finally:
        generation.close()


def _summary(notices: list[Notice]) -> list[tuple[str, tuple[str, ...]]]:
    return [(notice.hash.hex(), notice.lists) for notice in notices]


def _hex(row: np.ndarray) -> str:
    return str(row.tobytes().hex())


def test_removal_withdraws_only_what_the_tenant_was_told(
    store: tuple[Path, ListHashes], audit: AuditLog
) -> None:
    data, hashes = store
    _told(audit, "acme", hashes.police_a1[0], "police")
    _told(audit, "acme", hashes.both[0], "hotline", "police")
    _told(audit, "beta", hashes.hotline[0], "hotline")
    started = time.time()
    with HashStore.open(data) as writer:
        _, generation = writer.remove_hashes(MD5, hashes.police_a1[:1])
        # Still on hotline: acme still hits it, so this is no withdrawal.
        writer.remove_hashes(MD5, hashes.both[:1], list_name="police")

    acme = _notices(data, audit, "acme")
    assert _summary(acme) == [(_hex(hashes.police_a1[0]), ("police",))]
    assert acme[0].generation == generation
    assert started < acme[0].withdrawn_at < time.time()
    assert _notices(data, audit, "beta") == []
    assert _notices(data, audit, "acme", since=time.time()) == []


def test_retiring_a_list_writes_one_event(
    store: tuple[Path, ListHashes], audit: AuditLog
) -> None:
    data, hashes = store
    _told(audit, "acme", hashes.police_b2[0], "police")
    _told(audit, "acme", hashes.both[1], "hotline", "police")
    _told(audit, "gamma", hashes.both[2], "police")
    with HashStore.open(data) as writer:
        held, _ = writer.retire_list("police")
        with writer.environment.read() as transaction:
            events = read_events(writer.environment, transaction, 0.0)

    assert held == 450
    assert [(e.list, e.algorithm, e.hashes) for e in events] == [("police", None, b"")]
    assert _summary(_notices(data, audit, "acme")) == [
        (_hex(hashes.police_b2[0]), ("police",))
    ]
    # gamma sees police A1 only: both[2], still on hotline, hits no more for it.
    gamma = _notices(data, audit, "gamma", visible=lambda m: m.list == "police")
    assert _summary(gamma) == [(_hex(hashes.both[2]), ("police",))]


def test_tombstones_and_replacements_withdraw_hits(
    store: tuple[Path, ListHashes], audit: AuditLog
) -> None:
    data, hashes = store
    _told(audit, "acme", hashes.police_a1[3], "police")
    _told(audit, "beta", hashes.hotline[0], "hotline")
    _told(audit, "beta", hashes.both[3], "hotline")
    with HashStore.open(data) as writer:
        writer.import_entries(
            "police",
            [],
            withdrawals=Withdrawals(hashes={MD5: hashes.police_a1[3:4]}),
        )
        writer.import_entries(
            "hotline", [md5_entries(hashes.hotline[1:], "baseline")], replace=True
        )

    assert _summary(_notices(data, audit, "acme")) == [
        (_hex(hashes.police_a1[3]), ("police",))
    ]
    beta = _notices(data, audit, "beta", visible=lambda m: m.list == "hotline")
    assert sorted(_summary(beta)) == sorted(
        [(_hex(hashes.hotline[0]), ("hotline",)), (_hex(hashes.both[3]), ("hotline",))]
    )


def test_allow_listing_withdraws_hits(
    store: tuple[Path, ListHashes], audit: AuditLog
) -> None:
    data, hashes = store
    _told(audit, "acme", hashes.police_b2[0], "police")
    _told(audit, "acme", hashes.police_b2[1], "police")
    with HashStore.open(data) as writer:
        writer.import_entries(
            "known-good", [md5_entries(hashes.police_b2[:1])], kind=layout.ALLOW
        )
        first = _summary(_notices(writer.environment, audit, "acme"))
        writer.import_entries(
            "vendor",
            [md5_entries(hashes.police_b2[1:2])],
            kind=layout.ALLOW,
            staged=True,
        )
        staged = _summary(_notices(writer.environment, audit, "acme"))
        writer.promote("vendor")

    assert first == staged == [(_hex(hashes.police_b2[0]), ("police",))]
    assert _summary(_notices(data, audit, "acme")) == [
        (_hex(hashes.police_b2[0]), ("police",)),
        (_hex(hashes.police_b2[1]), ("police",)),
    ]


def test_pdq_withdrawals_reach_near_hashes(tmp_path: Path, audit: AuditLog) -> None:
    listed = random_hashes(20, width=32, seed=77)
    mine = listed[0].copy()
    mine[:2] ^= 0b0101  # four bits away from the listed hash
    with HashStore.open(tmp_path / "data", create=True) as writer:
        writer.import_entries(
            "pdq-list", [Entries.graded_alike(Algorithm.PDQ, listed, "A1")]
        )
        _told(audit, "acme", mine, "pdq-list")
        writer.remove_hashes(Algorithm.PDQ, listed[:1])

    assert _summary(_notices(tmp_path / "data", audit, "acme")) == [
        (_hex(mine), ("pdq-list",))
    ]


def test_no_events_means_no_audit_is_read(store: tuple[Path, ListHashes]) -> None:
    class Unreadable(AuditLog):
        def __init__(self) -> None:
            pass

        def entries(self, **_: object) -> Iterator[AuditEntry]:
            raise AssertionError("the audit was read")

    assert _notices(store[0], Unreadable(), "acme") == []


@pytest.fixture
def tenant_server(
    store: tuple[Path, ListHashes],
) -> Iterator[tuple[RunningServer, dict[str, str]]]:
    keys = add_tenants(store[0])
    running = serve(store[0])
    yield running, keys
    running.stop(grace_seconds=1.0)


def test_a_delisted_hash_a_tenant_was_hit_on_shows_up_in_its_withdrawals(
    store: tuple[Path, ListHashes],
    tenant_server: tuple[RunningServer, dict[str, str]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    hashes = store[1]
    running, keys = tenant_server
    acme, beta, gamma = (client_of(running, keys[n]) for n in ("acme", "beta", "gamma"))
    assert hits(acme, np.stack([hashes.police_a1[0], hashes.hotline[0]]))
    assert hits(beta, hashes.hotline[1:2])
    assert hits(gamma, hashes.police_a1[1:2])
    before = time.time()

    delisted = np.stack([hashes.police_a1[0], hashes.hotline[1]])
    _, generation = HashStore(running.environment).remove_hashes(MD5, delisted)
    wait_until(lambda: bool(acme.withdrawals()))

    assert acme.withdrawals(since=before) == [
        Withdrawal(
            MD5,
            hashes.police_a1[0].tobytes(),
            acme.withdrawals()[0].withdrawn_at,
            ("police",),
            generation,
        )
    ]
    assert [(w.hex, w.lists) for w in beta.withdrawals()] == [
        (_hex(hashes.hotline[1]), ("hotline",))
    ]
    assert gamma.withdrawals() == []
    assert acme.withdrawals(since=time.time()) == []

    async def from_async_client() -> list[Withdrawal]:
        async with AsyncClient(f"127.0.0.1:{running.port}", api_key=keys["beta"]) as c:
            return await c.withdrawals(since=before)

    assert asyncio.run(from_async_client()) == beta.withdrawals()

    server = f"127.0.0.1:{running.port}"
    since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(before - 1))
    status = client_main(
        ["withdrawals", "--server", server, "--api-key", keys["acme"], "--since", since]
    )
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert status == 0
    assert [(r["hash"], r["lists"], r["generation"]) for r in lines] == [
        (_hex(hashes.police_a1[0]), ["police"], generation)
    ]
    assert str(lines[0]["withdrawn_at"]).endswith("Z")
    for client in (acme, beta, gamma):
        client.close()
