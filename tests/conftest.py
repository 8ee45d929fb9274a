"""Fixtures for every test."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True)
def root_logging_restored() -> Iterator[None]:
    # A command run in-process configures logging onto the standard error of
    # its own test; pytest closes that stream afterwards, and any later test
    # that logs would print "Logging error" tracebacks instead of its lines.
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
