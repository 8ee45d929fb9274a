"""Snapshots: consistent copies taken while serving, and replicas that serve them."""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import grpc
import lmdb
import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from hashcheck.v1 import hashcheck_pb2, hashcheck_pb2_grpc
from hashcheck_server import layout
from hashcheck_server.digest import content_digest
from hashcheck_server.errors import StoreError
from hashcheck_server.server import RunningServer, ServerConfig, start_server
from hashcheck_server.snapshot import (
    CURRENT,
    MANIFEST,
    current_snapshot,
    publish_snapshot,
    read_manifest,
    snapshots_in,
    write_snapshot,
)
from hashcheck_server.store import HashStore
from ops_support import SERVER_CLI, add_list, answers, build_store, check
from synthetic import random_hashes


def _serve(data: Path, **options: object) -> RunningServer:
    config = ServerConfig(
        data=data,
        listen="127.0.0.1:0",
        reload_interval_seconds=0.05,
        grace_seconds=1.0,
        **options,  # type: ignore[arg-type]
    )
    return start_server(config, CollectorRegistry())


def _stub(server: RunningServer) -> Iterator[hashcheck_pb2_grpc.HashCheckStub]:
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        yield hashcheck_pb2_grpc.HashCheckStub(channel)


def _snapshot_cli(*arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [SERVER_CLI, "--log-format", "text", "snapshot", *arguments],
        capture_output=True,
        text=True,
        timeout=120,
    )


def _info(stub: hashcheck_pb2_grpc.HashCheckStub) -> hashcheck_pb2.Info:
    info: hashcheck_pb2.Info = stub.GetInfo(hashcheck_pb2.GetInfoRequest())
    return info


class _Load:
    """Threads that keep checking batches until stopped; failures are kept."""

    def __init__(self, call: Callable[[], object], threads: int = 3) -> None:
        self.failures: list[Exception] = []
        self.calls = 0
        self._call = call
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run) for _ in range(threads)]

    def __enter__(self) -> _Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()

    def _run(self) -> None:
        deadline = time.monotonic() + 120
        while not self._stop.is_set() and time.monotonic() < deadline:
            try:
                self._call()
                self.calls += 1
            except Exception as error:  # noqa: BLE001 - every failure is the finding
                self.failures.append(error)


def _mixed_batches(known: np.ndarray, count: int) -> list[np.ndarray]:
    generator = np.random.default_rng(7)
    batches = []
    for number in range(count):
        hits = known[generator.integers(0, len(known), size=number % 40)]
        misses = random_hashes(200 + number, seed=10_000 + number)
        batch = np.concatenate([misses, hits])
        batches.append(batch[generator.permutation(len(batch))])
    return batches


def test_snapshot_taken_under_load_serves_identical_answers(tmp_path: Path) -> None:
    data = tmp_path / "data"
    police = build_store(data, 60_000, seed=1)
    hotline = np.concatenate([police[:2_000], random_hashes(30_000, seed=2)])
    add_list(data, "hotline", hotline)
    with HashStore.open(data) as store:
        store.remove_hashes(layout.Algorithm.MD5, police[5_000:6_000])
    known = np.concatenate([police, hotline])
    primary = _serve(data)
    try:
        channel = grpc.insecure_channel(f"127.0.0.1:{primary.port}")
        primary_stub = hashcheck_pb2_grpc.HashCheckStub(channel)
        load_batch = np.concatenate([police[:500], random_hashes(5_000, seed=3)])

        with _Load(lambda: check(primary_stub, load_batch)) as load:
            time.sleep(0.2)
            result = _snapshot_cli("--data", str(data), str(tmp_path / "snap"))
            time.sleep(0.2)

        assert result.returncode == 0, result.stderr
        assert load.failures == [] and load.calls > 0
        replica = _serve(tmp_path / "snap")
        try:
            replica_channel = grpc.insecure_channel(f"127.0.0.1:{replica.port}")
            replica_stub = hashcheck_pb2_grpc.HashCheckStub(replica_channel)
            for batch in _mixed_batches(known, 300):
                expected = check(primary_stub, batch)
                got = check(replica_stub, batch)
                assert answers(got) == answers(expected)
                assert got.generation == expected.generation
            primary_info, replica_info = _info(primary_stub), _info(replica_stub)
            replica_channel.close()
        finally:
            replica.stop(grace_seconds=0.5)
        channel.close()
    finally:
        primary.stop(grace_seconds=0.5)

    assert replica_info.generation == primary_info.generation == 3
    assert replica_info.generation_digest == primary_info.generation_digest
    assert len(replica_info.generation_digest) == 64
    assert f"generation 3, digest {primary_info.generation_digest}" in result.stdout


def test_snapshot_during_imports_is_one_committed_generation(tmp_path: Path) -> None:
    data = tmp_path / "data"
    build_store(data, 20_000, seed=1)
    importing = threading.Event()

    def keep_importing() -> None:
        with HashStore.open(data) as store:
            for round_ in range(40):
                if round_ == 2:
                    importing.set()
                fresh = random_hashes(5_000, seed=100 + round_)
                store.import_entries(
                    f"list-{round_ % 3}",
                    [layout_entries(fresh)],
                    replace=round_ % 2 == 0,
                )

    importer = threading.Thread(target=keep_importing)
    importer.start()
    importing.wait(30)
    results = [
        _snapshot_cli("--data", str(data), str(tmp_path / f"snap-{n}"))
        for n in range(3)
    ]
    importer.join()

    for number, result in enumerate(results):
        assert result.returncode == 0, result.stderr
        snapshot = tmp_path / f"snap-{number}"
        manifest = read_manifest(snapshot)
        environment = layout.Environment(snapshot, readonly=True)
        try:
            with environment.read() as transaction:
                record = layout.read_generation_record(environment, transaction)
                recomputed = content_digest(environment, transaction)
        finally:
            environment.close()
        # The digest was recorded with the generation; recomputing it over the
        # copy gives it back only if the copy is exactly that one generation.
        assert recomputed == record.digest == manifest.digest
        assert record.number == manifest.generation


def layout_entries(hashes: np.ndarray) -> object:
    from synthetic import md5_entries

    return md5_entries(hashes, "B")


def test_snapshot_is_compact_keeps_other_environments_not_audit(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    police = build_store(data, 40_000, seed=1)
    with HashStore.open(data) as store:
        for round_ in range(4):
            store.import_entries(
                "churn",
                [layout_entries(random_hashes(40_000, seed=50 + round_))],
                replace=True,
            )
        store.retire_list("churn")
    for name in ("extra", "audit"):
        beside = lmdb.open(str(data / name), map_size=1 << 24, max_dbs=2)
        with beside.begin(write=True) as transaction:
            transaction.put(b"kept", b"beside the store")
        beside.close()

    manifest = write_snapshot(data, tmp_path / "snap")

    snap = tmp_path / "snap"
    assert (snap / "data.mdb").stat().st_size < (data / "data.mdb").stat().st_size
    assert set(manifest.files) == {"data.mdb", "extra/data.mdb"}
    copied = lmdb.open(str(snap / "extra"), readonly=True, lock=False)
    with copied.begin() as transaction:
        assert transaction.get(b"kept") == b"beside the store"
    copied.close()
    replica = _serve(snap)
    try:
        for stub in _stub(replica):
            assert len(check(stub, police[:100]).hit_positions) == 100
    finally:
        replica.stop(grace_seconds=0.5)


def test_snapshot_refuses_to_overwrite(tmp_path: Path) -> None:
    data = tmp_path / "data"
    build_store(data, 100)
    (tmp_path / "out").mkdir()

    result = _snapshot_cli("--data", str(data), str(tmp_path / "out"))

    assert result.returncode == 2
    assert "already exists" in result.stderr
    with pytest.raises(StoreError, match="not a HashCheck data directory"):
        write_snapshot(tmp_path / "missing", tmp_path / "new")
    assert not (tmp_path / "new").exists()


def test_digest_follows_content_not_history(tmp_path: Path) -> None:
    hashes = random_hashes(3_000, seed=4)
    digests = []
    for name in ("a", "b"):
        build_store(tmp_path / name, 1_000, seed=9)
        add_list(tmp_path / name, "extra", hashes)
        with HashStore.open(tmp_path / name) as store:
            digests.append(store.generation().digest)
    add_list(tmp_path / "b", "extra", hashes[:10])
    with HashStore.open(tmp_path / "b") as store:
        unchanged_rows = store.generation().digest
        store.remove_hashes(layout.Algorithm.MD5, hashes[:1])
        one_removed = store.generation().digest

    assert len(digests[0]) == 64
    assert digests[0] == digests[1]  # built apart, at other times
    assert unchanged_rows == digests[1]  # a re-import of listed hashes
    assert one_removed != digests[1]


def test_digest_leaves_out_what_an_import_held_back(tmp_path: Path) -> None:
    build_store(tmp_path / "data", 100, seed=9)
    with HashStore.open(tmp_path / "data") as store:
        environment = store.environment
        with environment.write() as transaction:
            before = content_digest(environment, transaction)
            (record,) = layout.read_list_records(environment, transaction)
            layout.write_list_record(
                environment, transaction, replace(record, held_back={"md5": 3})
            )
            after = content_digest(environment, transaction)

    # What was held back at import changes no answer, so no digest either.
    assert after == before


def test_publish_moves_current_and_prunes(tmp_path: Path) -> None:
    data, root = tmp_path / "data", tmp_path / "root"
    build_store(data, 1_000)
    names = []
    for round_ in range(4):
        add_list(data, f"l{round_}", random_hashes(100, seed=round_))
        names.append(publish_snapshot(data, root, keep=2).name)
    again = publish_snapshot(data, root, keep=2)

    assert again.name == names[-1]
    assert [s.name for s in snapshots_in(root)] == names[-2:]
    assert current_snapshot(root) == (root / names[-1]).resolve()
    assert (root / CURRENT).is_symlink()
    assert not [p for p in root.iterdir() if p.name.startswith(".")]
    assert (root / names[-1] / MANIFEST).is_file()
