"""Helpers for the quarantine, dispute and withdrawal tests.

The store and tenants come from tests/tenancy.py (synthetic MD5 hashes only,
seeded random bytes): `police` (A1, B2), `hotline` (baseline), `both` on
each, and the tenants acme (every list), beta (hotline only), gamma (police
A1 only), ops (operator), off (disabled), small and quick.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from prometheus_client import CollectorRegistry

from hashcheck import Client
from hashcheck_server.floods import QuarantinePolicy
from hashcheck_server.server import RunningServer, ServerConfig, start_server
from hashcheck_server.servicer import CheckPolicy

SERVER_CLI = str(Path(sys.executable).parent / "hashcheck-server")


def serve(data: Path, quarantine: QuarantinePolicy | None = None) -> RunningServer:
    """A real server on an ephemeral loopback port, polling every 50 ms."""
    config = ServerConfig(
        data=data,
        listen="127.0.0.1:0",
        reload_interval_seconds=0.05,
        grace_seconds=1.0,
        policy=CheckPolicy(max_batch_hashes=50_000),
        quarantine=quarantine or QuarantinePolicy(),
    )
    return start_server(config, CollectorRegistry())


def client_of(running: RunningServer, key: str) -> Client:
    return Client(f"127.0.0.1:{running.port}", api_key=key)


def hits(client: Client, hashes: np.ndarray) -> set[str]:
    """The hex hashes among `hashes` that hit for this client now."""
    result = client.check([row.tobytes() for row in hashes], "md5")
    return {hit.hex for hit in result.hits}


def wait_until(condition: Callable[[], bool], timeout_seconds: float = 5.0) -> None:
    """Poll until `condition()` holds; AssertionError after the timeout."""
    deadline = time.monotonic() + timeout_seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("the condition did not hold in time")
        time.sleep(0.02)


def server_cli(*arguments: str) -> subprocess.CompletedProcess[str]:
    """`hashcheck-server ...` in a child process (LMDB: one handle a process)."""
    return subprocess.run(
        [SERVER_CLI, "--log-format", "text", *arguments],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def json_lines(*arguments: str) -> list[dict[str, object]]:
    """The JSON lines a successful `hashcheck-server ...` prints."""
    result = server_cli(*arguments)
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]
