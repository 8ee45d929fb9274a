"""Metrics: refused calls, the generation's digest and age, and `--workers 2`."""

from __future__ import annotations

import logging
import shutil
import subprocess
import time
import urllib.error
from pathlib import Path

import grpc
import numpy as np
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from hashcheck.v1 import hashcheck_pb2, hashcheck_pb2_grpc
from hashcheck_server.access import AccessConfig
from hashcheck_server.server import ServerConfig, start_server
from hashcheck_server.snapshot import publish_snapshot
from hashcheck_server.store import HashStore
from ops_support import (
    ServerProcess,
    add_list,
    build_store,
    check,
    free_port,
    metrics_text,
    sample_value,
    spawn_server,
    wait_for,
)
from synthetic import md5_entries, random_hashes

MD5 = hashcheck_pb2.ALGORITHM_MD5


def _bad_request() -> hashcheck_pb2.CheckRequest:
    return hashcheck_pb2.CheckRequest(algorithm=MD5, hashes=b"x" * 17)


def test_refused_calls_are_counted_by_reason_and_logged_sparingly(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    build_store(tmp_path / "data", 100)
    registry = CollectorRegistry()
    running = start_server(
        ServerConfig(data=tmp_path / "data", listen="127.0.0.1:0"), registry
    )
    caplog.set_level(logging.INFO, logger="hashcheck_server")
    try:
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            stub = hashcheck_pb2_grpc.HashCheckStub(channel)
            for _ in range(5):
                with pytest.raises(grpc.RpcError):
                    stub.Check(_bad_request())
    finally:
        running.stop(grace_seconds=0.5)

    refused = registry.get_sample_value(
        "hashcheck_refused_calls_total", {"reason": "invalid_argument"}
    )
    assert refused == 5
    lines = [r for r in caplog.records if getattr(r, "event", "") == "call_refused"]
    assert len(lines) == 1
    assert lines[0].reason == "invalid_argument"  # type: ignore[attr-defined]
    assert "not a multiple" in lines[0].getMessage()


def test_generation_info_is_one_series_and_age_is_computed_at_scrape(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    build_store(data, 100)
    registry = CollectorRegistry()
    running = start_server(
        ServerConfig(data=data, listen="127.0.0.1:0", reload_interval_seconds=0.05),
        registry,
    )
    try:
        store = HashStore(running.environment)  # one environment per process
        store.import_entries("hotline", [md5_entries(random_hashes(50, seed=3))])
        wait_for(lambda: registry.get_sample_value("hashcheck_generation") == 2)
        first_age = registry.get_sample_value("hashcheck_generation_age_seconds")
        time.sleep(0.3)
        text = generate_latest(registry).decode()
    finally:
        running.stop(grace_seconds=0.5)

    info = [line for line in text.splitlines() if line.startswith("hashcheck_gen")]
    digests = [line for line in info if line.startswith("hashcheck_generation_info{")]
    assert len(digests) == 1 and digests[0].endswith(" 1.0")
    age = sample_value(text, "hashcheck_generation_age_seconds")
    assert first_age is not None and age is not None
    assert age >= first_age + 0.25


def test_two_workers_export_summed_metrics_that_pass_promtool(
    tmp_path: Path, servers: list[ServerProcess]
) -> None:
    police = build_store(tmp_path / "data", 2_000)
    metrics_port = free_port()
    server = spawn_server(
        servers,
        tmp_path,
        "--data",
        str(tmp_path / "data"),
        "--workers",
        "2",
        "--metrics-port",
        str(metrics_port),
    ).wait_serving()
    batch = np.concatenate([police[:10], random_hashes(90, seed=5)])

    # New channels, so that SO_REUSEPORT spreads them over both workers.
    for _ in range(12):
        with grpc.insecure_channel(
            server.address, options=[("grpc.use_local_subchannel_pool", 1)]
        ) as channel:
            stub = hashcheck_pb2_grpc.HashCheckStub(channel)
            assert len(check(stub, batch).hit_positions) == 10
            replies = stub.CheckStream(
                iter(
                    [hashcheck_pb2.CheckRequest(algorithm=MD5, hashes=batch.tobytes())]
                )
            )
            assert len(list(replies)) == 1
            with pytest.raises(grpc.RpcError):
                stub.Check(_bad_request())
    text = metrics_text(metrics_port)
    promtool = shutil.which("promtool")
    assert promtool is not None, "promtool is missing; ./scripts/test installs it"
    checked = subprocess.run(
        [promtool, "check", "metrics"],
        input=text,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert sample_value(text, "hashcheck_hashes_checked_total", 'algorithm="md5"') == (
        12 * 2 * 100
    )
    refused = sample_value(
        text, "hashcheck_refused_calls_total", 'reason="invalid_argument"'
    )
    assert refused == 12
    assert sample_value(text, "hashcheck_generation") == 1
    assert sample_value(text, "hashcheck_active_streams") == 0
    assert (sample_value(text, "hashcheck_generation_age_seconds") or -1) >= 0
    info = [s for s in text.splitlines() if s.startswith("hashcheck_generation_info{")]
    assert len(info) == 1
    assert server.stop() == 0


def test_two_following_workers_show_one_digest_after_a_switch(
    tmp_path: Path, servers: list[ServerProcess]
) -> None:
    data, root = tmp_path / "data", tmp_path / "root"
    build_store(data, 500)
    publish_snapshot(data, root)
    metrics_port = free_port()
    spawn_server(
        servers,
        tmp_path,
        "--follow",
        str(root),
        "--workers",
        "2",
        "--reload-interval",
        "0.1",
        "--metrics-port",
        str(metrics_port),
    ).wait_serving()
    add_list(data, "hotline", random_hashes(50, seed=3))
    second = publish_snapshot(data, root)

    expected = [f'hashcheck_generation_info{{digest="{second.digest}"}} 1.0']

    def info_series() -> list[str]:
        text = metrics_text(metrics_port)
        return [
            s for s in text.splitlines() if s.startswith("hashcheck_generation_info{")
        ]

    # Once both workers have switched, the old digest is gone: one series.
    wait_for(lambda: info_series() == expected, timeout=20)
    assert sample_value(metrics_text(metrics_port), "hashcheck_generation") == 2


def _is_served(port: int, host: str) -> bool:
    try:
        metrics_text(port, host)
    except urllib.error.URLError:
        return False
    return True


def test_metrics_stay_on_loopback_when_grpc_listens_on_every_address(
    tmp_path: Path,
) -> None:
    build_store(tmp_path / "data", 10)
    metrics_port = free_port()
    config = ServerConfig(
        data=tmp_path / "data",
        listen="0.0.0.0:0",
        metrics_port=metrics_port,
        access=AccessConfig(insecure_no_auth=True),
    )
    running = start_server(config, CollectorRegistry())
    try:
        on_loopback = _is_served(metrics_port, "127.0.0.1")
        # Another address of this machine: reached if bound to 0.0.0.0.
        elsewhere = _is_served(metrics_port, "127.0.0.2")
    finally:
        running.stop(grace_seconds=0.5)

    assert on_loopback and not elsewhere
    assert not _is_served(metrics_port, "127.0.0.1")  # closed with the server


def test_metrics_listen_moves_the_endpoint_apart_from_the_grpc_host(
    tmp_path: Path,
) -> None:
    build_store(tmp_path / "data", 10)
    metrics_port = free_port("127.0.0.2")
    config = ServerConfig(
        data=tmp_path / "data",
        listen="127.0.0.1:0",
        metrics_port=metrics_port,
        metrics_listen="127.0.0.2",
    )
    running = start_server(config, CollectorRegistry())
    try:
        text = metrics_text(metrics_port, "127.0.0.2")
        on_grpc_host = _is_served(metrics_port, "127.0.0.1")
    finally:
        running.stop(grace_seconds=0.5)

    assert sample_value(text, "hashcheck_generation") == 1
    assert not on_grpc_host
