"""Fixtures for the server's tests: synthetic hashes, stores and running servers.

Every hash here is random bytes from a seeded generator; none is the hash of
any real file, let alone of abuse material.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from hashcheck.v1 import hashcheck_pb2_grpc
from hashcheck_server.server import RunningServer, ServerConfig, start_server
from hashcheck_server.servicer import CheckPolicy
from hashcheck_server.store import HashStore
from synthetic import md5_entries, random_hashes


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def police_hashes() -> np.ndarray:
    return random_hashes(5_000, seed=1)


@pytest.fixture
def store_with_police(data_dir: Path, police_hashes: np.ndarray) -> Path:
    """A data directory whose one list, `police`, grades every hash `A1`."""
    with HashStore.open(data_dir, create=True) as store:
        store.import_entries(
            "police", [md5_entries(police_hashes, "A1")], source="test"
        )
    return data_dir


@pytest.fixture
def server(store_with_police: Path) -> Iterator[RunningServer]:
    """A real server on an ephemeral loopback port over `store_with_police`."""
    config = ServerConfig(
        data=store_with_police,
        listen="127.0.0.1:0",
        reload_interval_seconds=0.05,
        grace_seconds=2.0,
        policy=CheckPolicy(max_batch_hashes=50_000, reveal_counts=True),
    )
    running = start_server(config, CollectorRegistry())
    yield running
    running.stop(grace_seconds=1.0)


@pytest.fixture
def stub(server: RunningServer) -> Iterator[hashcheck_pb2_grpc.HashCheckStub]:
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        yield hashcheck_pb2_grpc.HashCheckStub(channel)
