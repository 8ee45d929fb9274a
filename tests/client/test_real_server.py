"""The SDK and the CLI against the real server, so the fake cannot drift from it.

Every other test here talks to `FakeHashCheck`. These run the real server
in-process on an ephemeral port, over a real LMDB store in a temporary
folder, and assert exact hits: which positions, which lists in which order,
which categories, which generation. The hashes are synthetic (seeded random
bytes, tests/synthetic.py) but for the few generated, harmless files that
`scan` hashes.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import signal
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from hashcheck import (
    Algorithm,
    AsyncClient,
    Batch,
    BatchResult,
    Client,
    InvalidRequest,
    ListMatch,
)
from hashcheck_server.server import ServerConfig, start_server
from hashcheck_server.servicer import CheckPolicy
from hashcheck_server.store import Entries, HashStore
from synthetic import random_hashes

if TYPE_CHECKING:
    from conftest import CliRunner, FakeHashCheck, LiveCli

_MAX_BATCH = 50_000
_POLICE_A1 = (ListMatch("police", "A1"),)
_POLICE_B2 = (ListMatch("police", "B2"),)
_HOTLINE = (ListMatch("hotline", "baseline"),)
# The real server names a hash's lists in order of their names.
_BOTH = (ListMatch("hotline", "baseline"), ListMatch("police", "A1"))

_FILES = {
    "listed-md5.txt": b"generated file, its MD5 on police\n",
    "listed-sha256.txt": b"generated file, its SHA-256 on hotline\n",
    "unlisted.txt": b"generated file on no list\n",
}


@dataclass(frozen=True)
class RealServer:
    """The running server, and what its store holds.

    - `police`: the MD5 hashes `md5` graded "A1", the SHA-1 hashes `sha1`
      graded "B2", and the MD5 of `listed-md5.txt` ("A1");
    - `hotline`: the first 10 of `md5` and the SHA-256 hashes `sha256`, all
      graded "baseline", and the SHA-256 of `listed-sha256.txt`.
    """

    target: str
    generation: int
    files: Path
    md5: list[bytes]
    sha1: list[bytes]
    sha256: list[bytes]


def _rows(hashes: np.ndarray) -> list[bytes]:
    return [row.tobytes() for row in hashes]


def _digests(algorithm: Algorithm, contents: bytes) -> np.ndarray:
    digest = hashlib.new(algorithm.value, contents).digest()
    return np.frombuffer(digest, dtype=np.uint8).reshape(1, -1)


def _build_store(
    data: Path, md5: np.ndarray, sha1: np.ndarray, sha256: np.ndarray
) -> int:
    """The store `RealServer` describes; returns its generation."""
    file_md5 = _digests(Algorithm.MD5, _FILES["listed-md5.txt"])
    file_sha256 = _digests(Algorithm.SHA256, _FILES["listed-sha256.txt"])
    police = [
        Entries.graded_alike(Algorithm.MD5, np.concatenate([md5, file_md5]), "A1"),
        Entries.graded_alike(Algorithm.SHA1, sha1, "B2"),
    ]
    hotline = [
        Entries.graded_alike(Algorithm.MD5, md5[:10], "baseline"),
        Entries.graded_alike(
            Algorithm.SHA256, np.concatenate([sha256, file_sha256]), "baseline"
        ),
    ]
    with HashStore.open(data, create=True) as store:
        store.import_entries("police", police, source="test")
        return store.import_entries("hotline", hotline, source="test").generation


@pytest.fixture(scope="module")
def real_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RealServer]:
    root = tmp_path_factory.mktemp("real-server")
    md5 = random_hashes(200, 16, seed=31)
    sha1 = random_hashes(50, 20, seed=32)
    sha256 = random_hashes(50, 32, seed=33)
    generation = _build_store(root / "data", md5, sha1, sha256)
    files = root / "files"
    files.mkdir()
    for name, contents in _FILES.items():
        (files / name).write_bytes(contents)

    config = ServerConfig(
        data=root / "data",
        listen="127.0.0.1:0",
        grace_seconds=1.0,
        policy=CheckPolicy(max_batch_hashes=_MAX_BATCH, reveal_counts=True),
    )
    running = start_server(config, CollectorRegistry())
    yield RealServer(
        target=f"127.0.0.1:{running.port}",
        generation=generation,
        files=files,
        md5=_rows(md5),
        sha1=_rows(sha1),
        sha256=_rows(sha256),
    )
    running.stop(grace_seconds=1.0)


@pytest.fixture
def real_client(real_server: RealServer) -> Iterator[Client]:
    with Client(real_server.target) as client:
        yield client


def _misses(count: int, width: int = 16) -> list[bytes]:
    return _rows(random_hashes(count, width, seed=900 + width))


def _found(
    results: list[BatchResult[tuple[str | bytes, ...]]],
) -> dict[int, tuple[str | bytes, tuple[ListMatch, ...]]]:
    """Stream position -> (the hash as given, its lists) for every hit."""
    return {
        result.offset + hit.position: (result.context[hit.position], hit.lists)
        for result in results
        for hit in result.hits
    }


def test_client_info_real_server_counts_and_limits(
    real_client: Client, real_server: RealServer
) -> None:
    info = real_client.info()

    assert info.generation == real_server.generation
    assert info.max_batch_hashes == _MAX_BATCH
    counts = {entry.algorithm: entry.hash_count for entry in info.algorithms}
    assert counts == {
        Algorithm.MD5: 201,
        Algorithm.SHA1: 50,
        Algorithm.SHA256: 51,
        Algorithm.PDQ: 0,
    }


def test_client_check_real_server_exact_hits(
    real_client: Client, real_server: RealServer
) -> None:
    md5 = real_server.md5
    # Misses around hits, a hash on both lists, and a hash given twice.
    batch = [*_misses(3), md5[0], md5[150], _misses(1)[0], md5[150]]

    result = real_client.check(batch)

    assert (result.checked, result.generation) == (7, real_server.generation)
    assert [(hit.position, hit.hash, hit.lists) for hit in result.hits] == [
        (3, md5[0], _BOTH),
        (4, md5[150], _POLICE_A1),
        (6, md5[150], _POLICE_A1),
    ]
    assert {hit.generation for hit in result.hits} == {real_server.generation}


def test_client_check_real_server_hex_of_other_algorithms(
    real_client: Client, real_server: RealServer
) -> None:
    sha1 = real_server.sha1[7]
    sha256 = real_server.sha256[8]

    by_sha1 = real_client.check([_misses(1, 20)[0].hex(), sha1.hex().upper()])
    by_sha256 = real_client.check([sha256.hex()])

    assert [(hit.position, hit.hex) for hit in by_sha1.hits] == [(1, sha1.hex())]
    assert by_sha1.hits[0].lists == _POLICE_B2
    assert [(hit.algorithm, hit.lists) for hit in by_sha256.hits] == [
        (Algorithm.SHA256, _HOTLINE)
    ]


def test_client_check_real_server_batch_over_limit_invalid(
    real_client: Client,
) -> None:
    with pytest.raises(InvalidRequest):
        real_client.check_packed(bytes(16 * (_MAX_BATCH + 1)), Algorithm.MD5)


def test_client_check_stream_real_server_exact_hits(
    real_client: Client, real_server: RealServer
) -> None:
    hashes = _misses(5_000)
    placed = {0: 0, 1_234: 5, 2_500: 199, 4_999: 9}
    for position, row in placed.items():
        hashes[position] = real_server.md5[row]

    results = list(
        real_client.check_stream(iter(hashes), batch_size=1_000, max_in_flight=3)
    )

    assert [result.checked for result in results] == [1_000] * 5
    assert [result.sequence for result in results] == [1, 2, 3, 4, 5]
    assert _found(results) == {
        position: (real_server.md5[row], _BOTH if row < 10 else _POLICE_A1)
        for position, row in placed.items()
    }


def test_client_check_batches_real_server_mixed_algorithms(
    real_client: Client, real_server: RealServer
) -> None:
    md5 = [_misses(1)[0], real_server.md5[42]]
    sha1 = [real_server.sha1[0], _misses(1, 20)[0]]
    sha256 = [_misses(1, 32)[0], _misses(2, 32)[1], real_server.sha256[49]]
    batches: list[Batch[tuple[str, ...]]] = [
        Batch(Algorithm.MD5, b"".join(md5), ("m0", "m1")),
        Batch(Algorithm.SHA1, b"".join(sha1), ("s0", "s1")),
        Batch(Algorithm.SHA256, b"".join(sha256), ("t0", "t1", "t2")),
    ]

    results = list(real_client.check_batches(batches))

    assert [result.checked for result in results] == [2, 2, 3]
    named = [
        (result.context[hit.position], hit.algorithm, hit.lists)
        for result in results
        for hit in result.hits
    ]
    assert named == [
        ("m1", Algorithm.MD5, _POLICE_A1),
        ("s0", Algorithm.SHA1, _POLICE_B2),
        ("t2", Algorithm.SHA256, _HOTLINE),
    ]


def test_async_client_real_server_check_and_stream(real_server: RealServer) -> None:
    md5 = real_server.md5
    hashes = _misses(300)
    hashes[17], hashes[250] = md5[3], md5[100]

    async def each_hash() -> AsyncIterator[bytes]:
        for hash_bytes in hashes:
            yield hash_bytes

    async def check() -> None:
        async with AsyncClient(real_server.target) as client:
            result = await client.check([_misses(1)[0], md5[3]])
            streamed = [
                streamed
                async for streamed in client.check_stream(each_hash(), batch_size=64)
            ]

        assert [(hit.position, hit.lists) for hit in result.hits] == [(1, _BOTH)]
        assert result.generation == real_server.generation
        assert [batch.checked for batch in streamed] == [64] * 4 + [44]
        assert _found(streamed) == {17: (md5[3], _BOTH), 250: (md5[100], _POLICE_A1)}

    asyncio.run(check())


def test_fake_server_answers_as_the_real_one(
    real_client: Client, real_server: RealServer, fake: FakeHashCheck, target: str
) -> None:
    md5 = real_server.md5
    for row in range(20):
        lists = _BOTH if row < 10 else _POLICE_A1
        fake.add(md5[row], *((match.list, match.category) for match in lists))
    fake.generation = real_server.generation
    batch = [*_misses(5), md5[0], md5[15], md5[0], *_misses(2)]
    hashes = _misses(1_000)
    hashes[3], hashes[700] = md5[9], md5[19]

    answers = []
    with Client(target) as fake_client:
        for client in (real_client, fake_client):
            streamed = list(client.check_stream(iter(hashes), batch_size=300))
            answers.append((client.check(batch), streamed))

    real, faked = answers
    assert faked == real


def _hit_record(
    hash_bytes: bytes, algorithm: str, lists: tuple[ListMatch, ...], generation: int
) -> dict[str, object]:
    return {
        "hash": hash_bytes.hex(),
        "algorithm": algorithm,
        "lists": [match.list for match in lists],
        "matches": [{"list": m.list, "category": m.category} for m in lists],
        "generation": generation,
    }


def test_cli_check_real_server_stdin_exact_hits(
    run_cli: CliRunner, real_server: RealServer
) -> None:
    md5 = real_server.md5
    lines = [hash_bytes.hex() for hash_bytes in _misses(2_000)]
    lines[10], lines[1_500] = md5[2].hex(), md5[60].hex().upper()

    completed = run_cli(
        "check", "--server", real_server.target, "--batch-size", "500", "-",
        stdin="\n".join(lines) + "\n",
    )  # fmt: skip

    assert completed.returncode == 1, completed.stderr
    generation = real_server.generation
    assert [json.loads(line) for line in completed.stdout.splitlines()] == [
        _hit_record(md5[2], "md5", _BOTH, generation),
        _hit_record(md5[60], "md5", _POLICE_A1, generation),
    ]


def test_cli_check_real_server_stdin_left_open_prints_hit_within_a_second(
    live_cli: Callable[..., LiveCli], real_server: RealServer
) -> None:
    first, second = real_server.sha1[1], real_server.sha1[2]
    cli = live_cli("check", "--server", real_server.target, "-")

    # The first hit also waits for the child to start and connect.
    cli.send(first.hex() + "\n")
    first_line = cli.line_within(30)
    cli.send(second.hex() + "\n")
    second_line = cli.line_within(1.0)

    assert first_line is not None and json.loads(first_line)["hash"] == first.hex()
    assert second_line is not None, "the hit waited for a full batch"
    assert json.loads(second_line) == _hit_record(
        second, "sha1", _POLICE_B2, real_server.generation
    )
    assert cli.finish() == (1, "")


def test_cli_check_real_server_stdin_interrupted_while_quiet_exits_at_once(
    live_cli: Callable[..., LiveCli], real_server: RealServer
) -> None:
    # Ctrl-C on `hashcheck check -` reading a terminal: stdin stays open.
    cli = live_cli("check", "--server", real_server.target, "-")
    cli.send(real_server.sha1[1].hex() + "\n")
    assert cli.line_within(30) is not None

    cli.process.send_signal(signal.SIGINT)
    started = time.monotonic()
    # wait, not communicate: that would close stdin and end the input.
    code = cli.process.wait(timeout=30)
    waited = time.monotonic() - started
    _, stderr = cli.finish()

    assert (code, stderr) == (130, "")
    # It used to wait out the quiet input for 2 s first.
    assert waited < 1.5


def test_cli_scan_real_server_reports_listed_files(
    run_cli: CliRunner, real_server: RealServer
) -> None:
    completed = run_cli("scan", "--server", real_server.target, str(real_server.files))

    assert completed.returncode == 1, completed.stderr
    printed = sorted(
        (json.loads(line) for line in completed.stdout.splitlines()),
        key=lambda record: str(record["path"]),
    )
    generation = real_server.generation
    md5 = hashlib.md5(_FILES["listed-md5.txt"]).digest()
    sha256 = hashlib.sha256(_FILES["listed-sha256.txt"]).digest()
    assert printed == [
        {
            "path": str(real_server.files / "listed-md5.txt"),
            **_hit_record(md5, "md5", _POLICE_A1, generation),
        },
        {
            "path": str(real_server.files / "listed-sha256.txt"),
            **_hit_record(sha256, "sha256", _HOTLINE, generation),
        },
    ]
