"""The package's public surface, and that it needs no server dependency."""

from __future__ import annotations

import inspect
import subprocess
import sys

import pytest

import hashcheck
from hashcheck import (
    _algorithms,
    _async_client,
    _client,
    _config,
    _disputes,
    _exceptions,
    _hashing,
    _keys,
    _manifests,
    _models,
    _packing,
    _pdq,
    _receipts,
)

# The modules whose whole `__all__` is the SDK's public API. The CLI's helper
# modules (_cli, _scan, _hexlines, _output, _progress) are internal.
_SDK_MODULES = [
    _algorithms,
    _async_client,
    _client,
    _config,
    _disputes,
    _exceptions,
    _hashing,
    _keys,
    _manifests,
    _models,
    _packing,
    _pdq,
    _receipts,
]


def test_all_lists_every_public_name() -> None:
    public = {
        name
        for name, value in vars(hashcheck).items()
        if not name.startswith("_") and not inspect.ismodule(value)
    }

    assert public | {"__version__"} == set(hashcheck.__all__)


def test_all_is_sorted() -> None:
    assert hashcheck.__all__ == sorted(hashcheck.__all__)


@pytest.mark.parametrize("module", _SDK_MODULES, ids=lambda module: module.__name__)
def test_all_reexports_module(module: object) -> None:
    missing = set(getattr(module, "__all__", ())) - set(hashcheck.__all__)

    assert not missing


_BLOCKING_IMPORT = """
import importlib.abc
import sys

BLOCKED = {"numpy", "lmdb", "pyroaring", "prometheus_client", "hashcheck_server"}


class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{name} is blocked for this test")
        return None


sys.meta_path.insert(0, Block())

import hashcheck
import hashcheck._cli

with hashcheck.Client(sys.argv[1]) as client:
    result = client.check(["00" * 16])
    streamed = list(client.check_stream(["11" * 20] * 5, batch_size=2))
assert result.checked == 1 and len(streamed) == 3, (result, streamed)
assert not BLOCKED & set(sys.modules), BLOCKED & set(sys.modules)
print("ok")
"""


def test_sdk_works_without_server_dependencies(target: str) -> None:
    completed = subprocess.run(
        [sys.executable, "-c", _BLOCKING_IMPORT, target],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.strip() == "ok"
