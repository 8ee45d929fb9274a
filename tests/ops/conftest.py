"""Fixtures for the operations tests; the helpers live in tests/ops_support.py."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from ops_support import ServerProcess


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[list[ServerProcess]]:
    """Server processes a test starts; all stopped at its end."""
    started: list[ServerProcess] = []
    yield started
    for server in started:
        if server.process.poll() is None:
            server.stop()
