"""`hashcheck scan` over trees of generated, harmless files."""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from hashcheck import FileHashes, _scan
from hashcheck._cli import main
from hashcheck._scan import walk_files

if TYPE_CHECKING:
    from conftest import CliRunner, FakeHashCheck


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A small tree: nested files, an empty file, a link to a file, a loop."""
    root = tmp_path / "tree"
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / "a.txt").write_bytes(b"generated file a\n")
    (root / "sub" / "b.bin").write_bytes(bytes(range(256)) * 40)
    (root / "sub" / "deeper" / "c.txt").write_bytes(b"generated file c\n")
    (root / "empty.txt").write_bytes(b"")
    (root / "link-to-a").symlink_to(root / "a.txt")
    (root / "sub" / "loop").symlink_to(root)
    return root


def _hit_lines(stdout: str) -> list[tuple[str, str, str]]:
    records = [json.loads(line) for line in stdout.splitlines()]
    return sorted(
        (os.path.basename(record["path"]), record["algorithm"], record["hash"])
        for record in records
    )


def test_cli_scan_reports_hits_with_paths(
    run_cli: CliRunner, target: str, fake: FakeHashCheck, tree: Path
) -> None:
    md5_a = hashlib.md5(b"generated file a\n").digest()
    sha1_b = hashlib.sha1(bytes(range(256)) * 40).digest()
    sha256_c = hashlib.sha256(b"generated file c\n").digest()
    fake.add(md5_a, ("police", "A1"))
    fake.add(sha1_b, ("hotline", "baseline"))
    fake.add(sha256_c)

    completed = run_cli("scan", "--server", target, str(tree))

    assert completed.returncode == 1, completed.stderr
    assert _hit_lines(completed.stdout) == [
        ("a.txt", "md5", md5_a.hex()),
        ("b.bin", "sha1", sha1_b.hex()),
        ("c.txt", "sha256", sha256_c.hex()),
        ("link-to-a", "md5", md5_a.hex()),
    ]
    record = json.loads(completed.stdout.splitlines()[0])
    assert set(record) == {
        "path",
        "hash",
        "algorithm",
        "lists",
        "matches",
        "generation",
    }
    # One group of files: one batch per algorithm, on one stream.
    assert fake.calls == ["CheckStream"]
    assert fake.stream_requests == 3


def test_cli_scan_paths_name_the_files(
    target: str,
    fake: FakeHashCheck,
    tree: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    fake.add(hashlib.sha1(b"generated file c\n").digest(), ("police", "A1"))

    status = main(["scan", "--server", target, str(tree / "sub")])

    assert status == 1
    record = json.loads(capsys.readouterr().out)
    assert record["path"] == str(tree / "sub" / "deeper" / "c.txt")
    assert record["lists"] == ["police"]
    assert record["matches"] == [{"list": "police", "category": "A1"}]
    assert record["generation"] == 7


def test_cli_scan_no_hits_exits_0(
    run_cli: CliRunner, target: str, fake: FakeHashCheck, tree: Path
) -> None:
    completed = run_cli("scan", "--server", target, str(tree), str(tree / "a.txt"))

    assert completed.returncode == 0, completed.stderr
    assert completed.stdout == ""
    assert completed.stderr == ""


def test_cli_scan_skips_empty_files(
    target: str, fake: FakeHashCheck, tmp_path: Path
) -> None:
    # Even a list that wrongly holds the empty file's hash never sees it asked.
    fake.add(hashlib.md5(b"").digest())
    (tmp_path / "empty").write_bytes(b"")

    status = main(["scan", "--server", target, str(tmp_path)])

    assert status == 0
    assert fake.stream_requests == 0


def test_cli_scan_batches_each_algorithm_per_group(
    target: str,
    fake: FakeHashCheck,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for number in range(25):
        content = f"generated file {number}\n".encode()
        (tmp_path / f"file-{number:02}.txt").write_bytes(content)
        fake.add(hashlib.md5(content).digest())

    status = main(["scan", "--server", target, "--batch-size", "10", str(tmp_path)])

    assert status == 1
    printed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert sorted(Path(record["path"]).name for record in printed) == sorted(
        f"file-{number:02}.txt" for number in range(25)
    )
    assert fake.stream_requests == 9


@pytest.mark.parametrize("with_hit", [True, False], ids=["hits", "no-hits"])
def test_cli_scan_unreadable_file_is_reported_not_fatal(
    target: str,
    fake: FakeHashCheck,
    tree: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    with_hit: bool,
) -> None:
    # Tests may run as root, who can read any file, so refusal is simulated.
    unreadable = str(tree / "sub" / "b.bin")
    hash_file = _scan.hash_file

    def refuse_one(path: str) -> object:
        if path == unreadable:
            raise PermissionError(13, "Permission denied", path)
        return hash_file(path)

    monkeypatch.setattr(_scan, "hash_file", refuse_one)
    if with_hit:
        fake.add(hashlib.md5(b"generated file c\n").digest())

    status = main(["scan", "--server", target, str(tree)])

    captured = capsys.readouterr()
    assert f"Cannot read {unreadable}: Permission denied" in captured.err
    assert status == (1 if with_hit else 2)
    assert len(captured.out.splitlines()) == (1 if with_hit else 0)


def test_cli_scan_broken_link_and_missing_path_are_reported(
    run_cli: CliRunner, target: str, tmp_path: Path
) -> None:
    (tmp_path / "file.txt").write_bytes(b"generated\n")
    (tmp_path / "broken").symlink_to(tmp_path / "nowhere")

    completed = run_cli(
        "scan", "--server", target, str(tmp_path), str(tmp_path / "absent")
    )

    assert completed.returncode == 2
    assert f"Cannot read {tmp_path / 'broken'}" in completed.stderr
    assert f"Cannot read {tmp_path / 'absent'}" in completed.stderr


def test_cli_scan_refused_key_exits_2(
    run_cli: CliRunner, target: str, fake: FakeHashCheck, tree: Path
) -> None:
    fake.api_keys = {"right"}

    completed = run_cli("scan", "--server", target, "--api-key", "wrong", str(tree))

    assert completed.returncode == 2
    assert "did not accept the API key" in completed.stderr


def test_walk_files_follows_links_but_not_loops(tree: Path) -> None:
    problems: list[str] = []

    found = sorted(walk_files([str(tree)], problems.append))

    assert found == sorted(
        str(path)
        for path in [
            tree / "a.txt",
            tree / "link-to-a",
            tree / "sub" / "b.bin",
            tree / "sub" / "deeper" / "c.txt",
        ]
    )
    assert problems == []


def test_walk_files_reports_special_files(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    problems: list[str] = []

    found = list(walk_files([str(fifo), str(tmp_path)], problems.append))

    assert found == []
    assert problems == [
        f"Skipped {fifo}: it is neither a regular file nor a directory."
    ]


def test_file_scan_slow_file_does_not_hold_back_the_others(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("a.txt", "b.txt", "slow.bin"):
        (tmp_path / name).write_bytes(f"generated file {name}\n".encode())
    release = threading.Event()
    hash_file = _scan.hash_file

    def slow_for_one(path: str) -> FileHashes:
        if path.endswith("slow.bin"):
            release.wait(10)
        return hash_file(path)

    monkeypatch.setattr(_scan, "hash_file", slow_for_one)
    scan = _scan.FileScan([str(tmp_path)], batch_size=1_000, workers=2, report=print)

    batches = scan.batches()
    started = time.monotonic()
    first = next(batches)
    waited = time.monotonic() - started
    release.set()
    rest = list(batches)

    assert waited < 1.0
    assert sorted(Path(path).name for path in first.context) == ["a.txt", "b.txt"]
    assert [Path(path).name for path in rest[-1].context] == ["slow.bin"]
