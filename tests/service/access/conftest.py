"""Fixtures for access control; the helpers live in tests/tenancy.py."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from hashcheck.v1 import hashcheck_pb2_grpc
from hashcheck_server.server import RunningServer
from tenancy import (
    ListHashes,
    add_tenants,
    build_store,
    make_list_hashes,
    serve,
    stub_for,
)


@pytest.fixture(scope="module")
def list_hashes() -> ListHashes:
    return make_list_hashes()


@pytest.fixture
def tenant_store(tmp_path: Path, list_hashes: ListHashes) -> Path:
    data = tmp_path / "data"
    build_store(data, list_hashes)
    return data


@pytest.fixture
def tenant_keys(tenant_store: Path) -> dict[str, str]:
    return add_tenants(tenant_store)


@pytest.fixture
def secured(tenant_store: Path, tenant_keys: dict[str, str]) -> Iterator[RunningServer]:
    """A server over `tenant_store` whose tenants need their keys."""
    running = serve(tenant_store)
    yield running
    running.stop(grace_seconds=1.0)


@pytest.fixture
def secured_stub(
    secured: RunningServer,
) -> Iterator[hashcheck_pb2_grpc.HashCheckStub]:
    with stub_for(secured) as stub:
        yield stub
