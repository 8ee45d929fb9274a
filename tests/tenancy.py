"""Helpers for access-control tests: a store with two lists, tenants, servers.

The store holds synthetic MD5 hashes only (seeded random bytes), never a real
file's:

- `police`: 400 hashes, the first 200 graded "A1", the rest "B2";
- `hotline`: 300 hashes graded "baseline";
- 50 more hashes on both lists ("A1" on police, "baseline" on hotline).

`add_tenants` admits these tenants and returns their keys by name:

- `acme`: every list; `beta`: `hotline` only; `gamma`: `police`, "A1" only;
- `ops`: an operator, every list; `off`: disabled;
- `small`: batches of at most 10 hashes, one stream at a time;
- `quick`: 20,000 hashes a second in a bucket of 1,000 (waits are short).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
from prometheus_client import CollectorRegistry

from hashcheck._algorithms import Algorithm
from hashcheck.v1 import hashcheck_pb2, hashcheck_pb2_grpc
from hashcheck_server import layout
from hashcheck_server.access import AccessConfig
from hashcheck_server.server import RunningServer, ServerConfig, start_server
from hashcheck_server.servicer import CheckPolicy
from hashcheck_server.store import Entries, HashStore
from hashcheck_server.tenants import Limits, TenantRegistry
from synthetic import md5_entries, random_hashes

MD5 = hashcheck_pb2.ALGORITHM_MD5


def make_list_hashes() -> ListHashes:
    police = random_hashes(400, seed=11)
    return ListHashes(
        police_a1=police[:200],
        police_b2=police[200:],
        hotline=random_hashes(300, seed=12),
        both=random_hashes(50, seed=13),
    )


@dataclass(frozen=True)
class ListHashes:
    """The synthetic hashes of the store, by where they are."""

    police_a1: np.ndarray
    police_b2: np.ndarray
    hotline: np.ndarray
    both: np.ndarray

    def misses(self, count: int, seed: int = 900) -> np.ndarray:
        return random_hashes(count, seed=seed)


def build_store(data: Path, hashes: ListHashes) -> None:
    police = Entries(
        Algorithm.MD5,
        np.concatenate([hashes.police_a1, hashes.police_b2, hashes.both]),
        np.array([0] * 200 + [1] * 200 + [0] * 50, dtype=np.int32),
        ("A1", "B2"),
    )
    with HashStore.open(data, create=True) as store:
        store.import_entries("police", [police], source="test")
        store.import_entries(
            "hotline",
            [md5_entries(np.concatenate([hashes.hotline, hashes.both]), "baseline")],
            source="test",
        )


def add_tenants(data: Path) -> dict[str, str]:
    environment = layout.Environment(data)
    try:
        registry = TenantRegistry(environment)
        keys = {
            "acme": registry.add("acme")[1],
            "beta": registry.add("beta", lists=["hotline"])[1],
            "gamma": registry.add("gamma", lists=["police"], categories=["A1"])[1],
            "ops": registry.add("ops", operator=True)[1],
            "off": registry.add("off")[1],
            "small": registry.add(
                "small", limits=Limits(max_batch_hashes=10, max_streams=1)
            )[1],
            "quick": registry.add(
                "quick", limits=Limits(hashes_per_second=20_000, burst_hashes=1_000)
            )[1],
        }
        registry.update("off", disabled=True)
    finally:
        environment.close()
    return keys


def serve(data: Path, access: AccessConfig | None = None) -> RunningServer:
    """A real server on an ephemeral loopback port over `data`."""
    config = ServerConfig(
        data=data,
        listen="127.0.0.1:0",
        reload_interval_seconds=0.05,
        grace_seconds=1.0,
        policy=CheckPolicy(max_batch_hashes=50_000, reveal_counts=True),
        access=access or AccessConfig(),
    )
    return start_server(config, CollectorRegistry())


@contextmanager
def stub_for(running: RunningServer) -> Iterator[hashcheck_pb2_grpc.HashCheckStub]:
    """A stub on a plaintext channel to `running`, closed at the end."""
    with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
        yield hashcheck_pb2_grpc.HashCheckStub(channel)


def as_key(key: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {key}"),)


def check(
    stub: hashcheck_pb2_grpc.HashCheckStub,
    batch: np.ndarray,
    key: str | None,
    **fields: object,
) -> hashcheck_pb2.CheckReply:
    request = hashcheck_pb2.CheckRequest(
        algorithm=MD5, hashes=np.ascontiguousarray(batch).tobytes(), **fields
    )
    metadata = as_key(key) if key is not None else None
    reply: hashcheck_pb2.CheckReply = stub.Check(request, metadata=metadata)
    return reply


def hits_of(reply: hashcheck_pb2.CheckReply) -> dict[int, list[tuple[str, str]]]:
    """position -> [(list, category), ...] of a reply."""
    return {
        position: [
            (match.list, match.category)
            for match in reply.provenances[provenance].lists
        ]
        for position, provenance in zip(
            reply.hit_positions, reply.hit_provenances, strict=True
        )
    }
