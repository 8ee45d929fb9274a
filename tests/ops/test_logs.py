"""Logs: one structured line per operator event, and never a hash that missed."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import grpc
import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from hashcheck._algorithms import Algorithm
from hashcheck.v1 import hashcheck_pb2, hashcheck_pb2_grpc
from hashcheck_server.logs import JsonFormatter
from hashcheck_server.server import ServerConfig, start_server
from hashcheck_server.store import HashStore
from ops_support import build_store, check
from synthetic import md5_entries, random_hashes


def test_json_lines_carry_the_event_and_its_fields() -> None:
    record = logging.LogRecord(
        "hashcheck_server.serving", logging.INFO, "x.py", 1, "serving %d", (7,), None
    )
    record.event = "generation_switch"
    record.generation = 7

    entry = json.loads(JsonFormatter().format(record))

    assert entry["message"] == "serving 7"
    assert (entry["event"], entry["generation"], entry["level"]) == (
        "generation_switch",
        7,
        "info",
    )


def test_import_logs_one_import_finished_event_with_its_counts(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    police = build_store(tmp_path / "data", 10)
    caplog.clear()
    caplog.set_level(logging.INFO, logger="hashcheck_server.store")
    fresh = random_hashes(3, seed=8)
    with HashStore.open(tmp_path / "data") as store:
        store.import_entries(
            "police",
            [md5_entries(np.concatenate([police[:4], fresh]), "A1")],
            replace=True,
        )

    (record,) = [
        r for r in caplog.records if getattr(r, "event", "") == "import_finished"
    ]
    entry = json.loads(JsonFormatter().format(record))

    counts = {name: entry[name] for name in ("added", "unchanged", "removed")}
    assert (entry["list"], entry["state"], entry["generation"]) == ("police", "live", 2)
    assert counts == {"added": 3, "unchanged": 4, "removed": 6}
    assert (entry["updated"], entry["held_back"]) == (0, 0)
    assert "imported list police" in entry["message"]
    assert police[0].tobytes().hex() not in json.dumps(entry)


def test_list_changes_log_one_event_each(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    police = build_store(tmp_path / "data", 10)
    caplog.clear()
    caplog.set_level(logging.INFO, logger="hashcheck_server.store")
    with HashStore.open(tmp_path / "data") as store:
        store.remove_hashes(Algorithm.MD5, police[:2], list_name="police")
        store.merge()
        store.retire_list("police")

    entries = [
        json.loads(JsonFormatter().format(r))
        for r in caplog.records
        if getattr(r, "event", "")
    ]

    assert [e["event"] for e in entries] == [
        "hashes_removed",
        "deltas_merged",
        "list_retired",
    ]
    assert (entries[0]["removed"], entries[0]["list"]) == (2, "police")
    assert (entries[2]["hashes"], entries[2]["list"]) == (8, "police")
    assert all(police[0].tobytes().hex() not in json.dumps(e) for e in entries)


def test_no_log_line_holds_a_hash_that_missed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data = tmp_path / "data"
    police = build_store(data, 1_000)
    misses = random_hashes(2_000, seed=99)
    caplog.set_level(logging.DEBUG)
    running = start_server(
        ServerConfig(data=data, listen="127.0.0.1:0", reload_interval_seconds=0.05),
        CollectorRegistry(),
    )
    try:
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            stub = hashcheck_pb2_grpc.HashCheckStub(channel)
            check(stub, np.concatenate([misses[:1_000], police[:10]]))
            requests = [
                hashcheck_pb2.CheckRequest(
                    algorithm=hashcheck_pb2.ALGORITHM_MD5,
                    hashes=misses[1_000:].tobytes(),
                ),
                hashcheck_pb2.CheckRequest(
                    algorithm=hashcheck_pb2.ALGORITHM_MD5,
                    hashes=misses[0].tobytes() + b"x",
                ),
            ]
            with pytest.raises(grpc.RpcError):
                list(stub.CheckStream(iter(requests)))
            HashStore(running.environment).import_entries(
                "hotline", [md5_entries(random_hashes(10, seed=5))]
            )
            stub.GetInfo(hashcheck_pb2.GetInfoRequest())
    finally:
        running.stop(grace_seconds=0.5)

    logged = "\n".join(
        record.getMessage() + json.dumps(record.__dict__, default=str)
        for record in caplog.records
    ).lower()
    assert "generation_switch" in logged and "call_refused" in logged
    for miss in misses:
        assert miss.tobytes().hex() not in logged
        assert repr(miss.tobytes())[2:-1].lower() not in logged
