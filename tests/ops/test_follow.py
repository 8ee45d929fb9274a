"""Replicas that follow a primary's snapshots without a restart."""

from __future__ import annotations

import functools
import http.server
import json
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from hashcheck.v1 import hashcheck_pb2, hashcheck_pb2_grpc
from hashcheck_server.replication import PullError, pull_once
from hashcheck_server.server import RunningServer, ServerConfig, start_server
from hashcheck_server.snapshot import (
    MANIFEST,
    current_snapshot,
    publish_snapshot,
    snapshots_in,
)
from ops_support import (
    NOT_SERVING,
    SERVER_CLI,
    SERVING,
    add_list,
    build_store,
    check,
    health_status,
    wait_for,
)
from synthetic import random_hashes


def _follow(root: Path) -> RunningServer:
    config = ServerConfig(
        data=root,
        follow=True,
        listen="127.0.0.1:0",
        reload_interval_seconds=0.05,
        grace_seconds=1.0,
    )
    return start_server(config, CollectorRegistry())


@pytest.fixture
def follower(tmp_path: Path) -> Iterator[RunningServer]:
    running = _follow(tmp_path / "replica")
    yield running
    running.stop(grace_seconds=0.5)


def _stub(server: RunningServer) -> hashcheck_pb2_grpc.HashCheckStub:
    channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    return hashcheck_pb2_grpc.HashCheckStub(channel)


def _info(stub: hashcheck_pb2_grpc.HashCheckStub) -> hashcheck_pb2.Info:
    info: hashcheck_pb2.Info = stub.GetInfo(hashcheck_pb2.GetInfoRequest())
    return info


def _wait_for_generation(stub: hashcheck_pb2_grpc.HashCheckStub, number: int) -> None:
    wait_for(lambda: _info(stub).generation == number, timeout=10)


def test_follower_waits_not_serving_until_a_snapshot_arrives(
    tmp_path: Path, follower: RunningServer
) -> None:
    address = f"127.0.0.1:{follower.port}"
    stub = _stub(follower)

    assert health_status(address) == NOT_SERVING
    with pytest.raises(grpc.RpcError) as refused:
        check(stub, random_hashes(3), timeout=2)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE

    police = build_store(tmp_path / "data", 2_000)
    publish_snapshot(tmp_path / "data", tmp_path / "replica")
    wait_for(lambda: health_status(address) == SERVING, timeout=10)
    assert len(check(stub, police[:50]).hit_positions) == 50
    assert follower.environment is None


def test_follower_switches_under_load_without_failures(
    tmp_path: Path, follower: RunningServer
) -> None:
    data, root = tmp_path / "data", tmp_path / "replica"
    police = build_store(data, 20_000)
    first = publish_snapshot(data, root, keep=1)
    stub = _stub(follower)
    wait_for(lambda: health_status(f"127.0.0.1:{follower.port}") == SERVING)
    fresh = random_hashes(5_000, seed=33)
    batch = np.concatenate([police[:300], fresh[:300]])
    failures: list[Exception] = []
    hit_counts: set[int] = set()
    stop = threading.Event()

    def keep_checking() -> None:
        deadline = time.monotonic() + 60
        while not stop.is_set() and time.monotonic() < deadline:
            try:
                hit_counts.add(len(check(stub, batch).hit_positions))
            except Exception as error:  # noqa: BLE001 - every failure is the finding
                failures.append(error)

    checkers = [threading.Thread(target=keep_checking) for _ in range(3)]
    for checker in checkers:
        checker.start()
    for round_ in range(3):
        add_list(data, f"hotline-{round_}", fresh)
        latest = publish_snapshot(data, root, keep=1)
        _wait_for_generation(stub, latest.generation)
    stop.set()
    for checker in checkers:
        checker.join()

    assert failures == []
    assert hit_counts == {300, 600}
    info = _info(stub)
    assert (info.generation, info.generation_digest) == (4, latest.digest)
    assert info.generation_digest != first.digest
    assert [s.name for s in snapshots_in(root)] == [latest.name]


@pytest.fixture
def primary_root_over_http(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A primary's snapshot root, served by a static HTTP server on loopback."""
    root = tmp_path / "primary-root"
    root.mkdir()
    handler = functools.partial(
        _QuietHandler,
        directory=str(root),
    )
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


def test_pull_over_http_feeds_a_follower(
    tmp_path: Path,
    follower: RunningServer,
    primary_root_over_http: tuple[Path, str],
) -> None:
    primary_root, url = primary_root_over_http
    data, replica_root = tmp_path / "data", tmp_path / "replica"
    police = build_store(data, 10_000)
    publish_snapshot(data, primary_root)
    stub = _stub(follower)

    result = subprocess.run(
        [SERVER_CLI, "pull", "--from", url, "--into", str(replica_root), "--once"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    wait_for(lambda: health_status(f"127.0.0.1:{follower.port}") == SERVING)
    assert len(check(stub, police[:10]).hit_positions) == 10

    fresh = random_hashes(1_000, seed=8)
    add_list(data, "hotline", fresh)
    published = publish_snapshot(data, primary_root)
    pulled = pull_once(url, replica_root)
    wait_for(lambda: _info(stub).generation == 2)

    assert pulled.digest == published.digest == _info(stub).generation_digest
    assert len(check(stub, fresh).hit_positions) == 1_000


def test_pull_refuses_a_file_that_does_not_match_its_manifest(
    tmp_path: Path, primary_root_over_http: tuple[Path, str]
) -> None:
    primary_root, url = primary_root_over_http
    build_store(tmp_path / "data", 1_000)
    first = publish_snapshot(tmp_path / "data", primary_root)
    replica_root = tmp_path / "replica"
    pull_once(url, replica_root)
    add_list(tmp_path / "data", "more", random_hashes(10, seed=5))
    second = publish_snapshot(tmp_path / "data", primary_root)
    tampered = primary_root / second.name / "data.mdb"
    content = bytearray(tampered.read_bytes())
    content[-1] ^= 0xFF
    tampered.write_bytes(bytes(content))

    with pytest.raises(PullError, match="manifest says"):
        pull_once(url, replica_root)

    assert current_snapshot(replica_root) == (replica_root / first.name).resolve()
    assert [p.name for p in replica_root.iterdir() if p.name.startswith(".")] == []


def test_pull_refuses_unsafe_names(tmp_path: Path) -> None:
    build_store(tmp_path / "data", 100)
    root = tmp_path / "root"
    manifest = publish_snapshot(tmp_path / "data", root)
    raw = json.loads((root / manifest.name / MANIFEST).read_text())
    raw["name"] = "../escape"
    (root / manifest.name / MANIFEST).write_text(json.dumps(raw))

    with pytest.raises(PullError, match="unsafe"):
        pull_once(str(root), tmp_path / "replica")
    assert not (tmp_path / "escape").exists()
