"""Faults: a killed writer, a damaged or foreign data directory, a full disk, a
reload under load. Each must leave the previous generation served and say
clearly what went wrong."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import lmdb
import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from hashcheck import Client
from hashcheck.v1 import hashcheck_pb2, hashcheck_pb2_grpc
from hashcheck_server.access import AccessConfig
from hashcheck_server.server import ServerConfig, start_server
from hashcheck_server.store import HashStore
from ops_support import (
    SERVER_CLI,
    ServerProcess,
    build_store,
    check,
    spawn_server,
)
from synthetic import md5_entries, random_hashes

# Runs the CLI with the last step before every commit (keeping the manifest,
# once all of a change and its generation record are written) made to
# announce itself and hang, so that the test can kill -9 the writer with the
# whole change written but not committed: the worst moment to die.
_HANG_BEFORE_COMMIT = textwrap.dedent(
    """
    import sys, time
    import hashcheck_server.writes as writes

    real = writes.keep_manifest

    def hang(environment, transaction):
        real(environment, transaction)
        print("WRITTEN, NOT COMMITTED", flush=True)
        time.sleep(600)

    writes.keep_manifest = hang
    from hashcheck_server.cli import main
    sys.exit(main(sys.argv[1:]))
    """
)


def _hex_file(path: Path, hashes: np.ndarray) -> Path:
    path.write_text("".join(row.tobytes().hex() + "\n" for row in hashes))
    return path


def _run_cli(*arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [SERVER_CLI, "--log-format", "text", *arguments],
        capture_output=True,
        text=True,
        timeout=120,
    )


def _kill_before_commit(*arguments: str) -> None:
    writer = subprocess.Popen(
        [sys.executable, "-c", _HANG_BEFORE_COMMIT, "--log-format", "text", *arguments],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert writer.stdout is not None
        line = writer.stdout.readline()
        assert line.strip() == "WRITTEN, NOT COMMITTED", writer.stderr.read()  # type: ignore[union-attr]
    finally:
        os.kill(writer.pid, signal.SIGKILL)
        writer.wait()
        writer.stdout.close()  # type: ignore[union-attr]
        writer.stderr.close()  # type: ignore[union-attr]


def _served(data: Path) -> Iterator[tuple[hashcheck_pb2_grpc.HashCheckStub, int]]:
    running = start_server(
        ServerConfig(data=data, listen="127.0.0.1:0"), CollectorRegistry()
    )
    try:
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            stub = hashcheck_pb2_grpc.HashCheckStub(channel)
            info = stub.GetInfo(hashcheck_pb2.GetInfoRequest())
            yield stub, info.generation
    finally:
        running.stop(grace_seconds=0.5)


@pytest.mark.parametrize(
    "change",
    [
        pytest.param("import", id="import"),
        pytest.param("import-replace", id="import-replace"),
        pytest.param("import-rebuild", id="rebuild"),
        pytest.param("merge", id="merge"),
        pytest.param("retire", id="retire"),
    ],
)
def test_kill_9_mid_change_leaves_the_previous_generation(
    tmp_path: Path, change: str
) -> None:
    data = tmp_path / "data"
    police = build_store(data, 50_000, seed=1)
    hotline = random_hashes(20_000, seed=2)
    with HashStore.open(data) as store:
        store.import_entries("hotline", [md5_entries(hotline)])
        before = store.generation()
    fresh = _hex_file(tmp_path / "fresh.txt", random_hashes(30_000, seed=3))
    arguments = {
        "import": ("import", "--data", str(data), "--list", "new", str(fresh)),
        "import-replace": (
            "import",
            "--data",
            str(data),
            "--list",
            "hotline",
            "--replace",
            str(fresh),
        ),
        "import-rebuild": (
            "import",
            "--data",
            str(data),
            "--list",
            "new",
            "--rebuild",
            str(fresh),
        ),
        "merge": ("merge", "--data", str(data)),
        "retire": ("retire", "--data", str(data), "hotline"),
    }[change]

    _kill_before_commit(*arguments)

    with HashStore.open(data) as store:
        assert store.generation() == before
        assert [s.record.name for s in store.lists()] == ["hotline", "police"]
    for stub, generation in _served(data):
        assert generation == before.number
        info = stub.GetInfo(hashcheck_pb2.GetInfoRequest())
        assert info.generation_digest == before.digest
        assert len(check(stub, police[:1_000]).hit_positions) == 1_000
        assert len(check(stub, hotline[:1_000]).hit_positions) == 1_000
        assert check(stub, random_hashes(30_000, seed=3)).hit_positions == []
    # The dead writer left no lock behind: the next change commits.
    result = _run_cli("import", "--data", str(data), "--list", "new", str(fresh))
    assert result.returncode == 0, result.stderr
    with HashStore.open(data) as store:
        assert store.generation().number == before.number + 1


def _truncated_store(path: Path) -> Path:
    build_store(path / "whole", 20_000)
    (path / "cut").mkdir()
    content = (path / "whole" / "data.mdb").read_bytes()
    (path / "cut" / "data.mdb").write_bytes(content[: len(content) // 3])
    return path / "cut"


def _foreign_lmdb(path: Path) -> Path:
    environment = lmdb.open(str(path / "foreign"), max_dbs=2)
    with environment.begin(write=True) as transaction:
        transaction.put(b"someone", b"else's data")
    environment.close()
    return path / "foreign"


def _garbage(path: Path) -> Path:
    (path / "garbage").mkdir()
    (path / "garbage" / "data.mdb").write_bytes(os.urandom(64 * 1024))
    return path / "garbage"


def _plain_file(path: Path) -> Path:
    (path / "file").write_text("not a directory\n")
    return path / "file"


@pytest.mark.parametrize("workers", ["1", "2"])
@pytest.mark.parametrize(
    ("make", "fragment"),
    [
        pytest.param(_truncated_store, "is truncated", id="truncated"),
        pytest.param(_foreign_lmdb, "not a HashCheck store", id="foreign-lmdb"),
        pytest.param(_garbage, "HashCheck store", id="garbage"),
        pytest.param(_plain_file, "not a HashCheck data directory", id="file"),
    ],
)
def test_damaged_or_foreign_data_directory_exits_2_with_a_message(
    tmp_path: Path, make: object, fragment: str, workers: str
) -> None:
    data = make(tmp_path)  # type: ignore[operator]

    started = time.monotonic()
    result = _run_cli(
        "serve", "--data", str(data), "--listen", "127.0.0.1:0", "--workers", workers
    )

    assert result.returncode == 2, result.stderr
    assert fragment in result.stderr
    assert "Traceback" not in result.stderr
    assert time.monotonic() - started < 30


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """An 8 MiB tmpfs, so that a disk fills up for real."""
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(
            f"cannot mount a small tmpfs here ({mounted.stderr.strip()}); "
            "a full disk needs root or CAP_SYS_ADMIN"
        )
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def test_full_disk_during_import_keeps_the_previous_generation(
    tmp_path: Path, small_disk: Path
) -> None:
    data = small_disk / "data"
    police = build_store(data, 20_000)
    with HashStore.open(data) as store:
        before = store.generation()
    big = _hex_file(tmp_path / "big.txt", random_hashes(600_000, seed=4))
    # The audit of hits lives apart, as it should in production: on the full
    # disk it could not record hits, and hits are never reported unrecorded.
    access = AccessConfig(audit_dir=tmp_path / "audit")
    running = start_server(
        ServerConfig(data=data, listen="127.0.0.1:0", access=access),
        CollectorRegistry(),
    )
    try:
        result = _run_cli("import", "--data", str(data), "--list", "big", str(big))

        assert result.returncode == 2
        assert "disk holding" in result.stderr and "is full" in result.stderr
        assert "Traceback" not in result.stderr
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            stub = hashcheck_pb2_grpc.HashCheckStub(channel)
            reply = check(stub, police[:100])
        assert (reply.generation, len(reply.hit_positions)) == (before.number, 100)
    finally:
        running.stop(grace_seconds=0.5)
    with HashStore.open(data, readonly=True) as store:
        assert store.generation() == before


def test_reload_under_sustained_load_fails_no_request(
    tmp_path: Path, servers: list[ServerProcess]
) -> None:
    data = tmp_path / "data"
    police = build_store(data, 20_000)
    server = spawn_server(
        servers,
        tmp_path,
        "--data",
        str(data),
        "--workers",
        "2",
        "--reload-interval",
        "0.1",
    ).wait_serving()
    batch = np.concatenate([police[:100], random_hashes(900, seed=9)]).tobytes()
    failures: list[Exception] = []
    generations: set[int] = set()
    stop = threading.Event()

    def keep_checking() -> None:
        with Client(server.address, timeout_seconds=10) as client:
            deadline = time.monotonic() + 60
            while not stop.is_set() and time.monotonic() < deadline:
                try:
                    result = client.check_packed(batch, "md5")
                    assert len(result.hits) == 100
                    generations.add(result.generation)
                except Exception as error:  # noqa: BLE001 - every failure counts
                    failures.append(error)

    checkers = [threading.Thread(target=keep_checking) for _ in range(4)]
    for checker in checkers:
        checker.start()
    for round_ in range(4):
        fresh = _hex_file(tmp_path / f"l{round_}.txt", random_hashes(5_000, seed=20))
        result = _run_cli(
            "import", "--data", str(data), "--list", f"l{round_}", str(fresh)
        )
        assert result.returncode == 0, result.stderr
        time.sleep(0.3)
    time.sleep(0.5)
    stop.set()
    for checker in checkers:
        checker.join()

    assert failures == []
    assert max(generations) == 5 and len(generations) >= 2
