"""`hashcheck-server` as operators and outside scripts run it: a subprocess."""

from __future__ import annotations

import ctypes
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hashcheck_server.store import HashStore
from synthetic import random_hashes

SERVER_CLI = str(Path(sys.executable).parent / "hashcheck-server")


def _run(*arguments: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [SERVER_CLI, "--log-format", "text", *arguments],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _hex_file(path: Path, count: int, seed: int, width: int = 16) -> list[str]:
    hexes = [row.tobytes().hex() for row in random_hashes(count, width, seed)]
    path.write_text("\n".join(hexes) + "\n")
    return hexes


def test_import_text_then_lists_and_show(tmp_path: Path) -> None:
    data = tmp_path / "data"
    hashes = _hex_file(tmp_path / "police.txt", 1_000, seed=1)

    imported = _run(
        "import",
        "--data",
        str(data),
        "--list",
        "police",
        "--algorithm",
        "md5",
        "--category",
        "A1",
        "--source",
        "police",
        str(tmp_path / "police.txt"),
    )
    listed = _run("lists", "--data", str(data), "--json")
    shown = _run("show", "--data", str(data), "police")

    assert imported.returncode == 0, imported.stderr
    assert "1000 added" in imported.stdout
    (summary,) = [json.loads(line) for line in listed.stdout.splitlines()]
    assert (summary["name"], summary["hashes"], summary["source"]) == (
        "police",
        1_000,
        "police",
    )
    assert json.loads(shown.stdout)["by_algorithm"] == {"md5": {"A1": 1_000}}
    assert len(hashes) == 1_000


def test_import_says_which_hashes_its_records_graded_two_ways(tmp_path: Path) -> None:
    first, second = (row.tobytes().hex() for row in random_hashes(2, seed=5))
    listing = tmp_path / "graded.csv"
    listing.write_text(f"md5,grade\n{first},A1\n{second},B2\n{first},B1\n{second},B2\n")

    imported = _run(
        "import",
        "--data",
        str(tmp_path / "data"),
        "--list",
        "police",
        "--format",
        "csv",
        "--hash-column",
        "md5",
        "--category-column",
        "grade",
        str(listing),
    )
    shown = _run("show", "--data", str(tmp_path / "data"), "police")

    assert imported.returncode == 0, imported.stderr
    assert "md5: 1 hash(es) graded differently by their own records" in (
        imported.stdout
    )
    assert "1 hashes graded differently" in imported.stderr
    assert json.loads(shown.stdout)["by_algorithm"] == {"md5": {"B1": 1, "B2": 1}}


def test_import_from_stdin_infers_algorithm(tmp_path: Path) -> None:
    data = tmp_path / "data"
    hexes = [row.tobytes().hex().upper() for row in random_hashes(10, 20, seed=2)]

    result = _run(
        "import", "--data", str(data), "--list", "l", "-", stdin="\n\n".join(hexes)
    )

    assert result.returncode == 0, result.stderr
    assert "sha1: 10 added" in result.stdout


def test_import_malformed_line_commits_nothing(tmp_path: Path) -> None:
    data = tmp_path / "data"
    good = _hex_file(tmp_path / "good.txt", 5, seed=3)
    _run(
        "import",
        "--data",
        str(data),
        "--list",
        "police",
        "--algorithm",
        "md5",
        str(tmp_path / "good.txt"),
    )
    bad = tmp_path / "bad.txt"
    bad.write_text("\n".join([*good[:2], "not-a-hash", good[2][:-1]]) + "\n")

    result = _run(
        "import",
        "--data",
        str(data),
        "--list",
        "police",
        "--algorithm",
        "md5",
        str(bad),
    )

    assert result.returncode == 2
    assert f"{bad}:3:" in result.stderr and f"{bad}:4:" in result.stderr
    assert "nothing was imported" in result.stderr
    with HashStore.open(data, readonly=True) as store:
        assert store.generation().number == 1


def test_import_drops_empty_file_hash_and_says_so(tmp_path: Path) -> None:
    data = tmp_path / "data"
    listing = tmp_path / "list.txt"
    listing.write_text(
        "d41d8cd98f00b204e9800998ecf8427e\n" + random_hashes(1).tobytes().hex() + "\n"
    )

    result = _run(
        "import", "--data", str(data), "--list", "l", "--algorithm", "md5", str(listing)
    )

    assert result.returncode == 0, result.stderr
    assert (
        "1 added" in result.stdout and "1 empty-file hash(es) dropped" in result.stdout
    )


def test_remove_and_retire(tmp_path: Path) -> None:
    data = tmp_path / "data"
    hexes = _hex_file(tmp_path / "police.txt", 20, seed=4)
    _run(
        "import", "--data", str(data), "--list", "police", str(tmp_path / "police.txt")
    )

    removed = _run(
        "remove", "--data", str(data), "--list", "police", hexes[0], hexes[1]
    )
    from_stdin = _run("remove", "--data", str(data), "-", stdin="\n".join(hexes[2:5]))
    retired = _run("retire", "--data", str(data), "police")

    assert "removed 2 of 2 from police" in removed.stdout
    assert "removed 3 of 3 from every list" in from_stdin.stdout
    assert "retired police (15 hashes)" in retired.stdout


def test_remove_dash_reads_one_hash_a_line_from_stdin(tmp_path: Path) -> None:
    data = tmp_path / "data"
    hexes = _hex_file(tmp_path / "police.txt", 10, seed=6)
    _run(
        "import", "--data", str(data), "--list", "police", str(tmp_path / "police.txt")
    )
    # As a script on another system might write it: a BOM, CRLF, a blank line.
    piped = "\ufeff" + "\r\n".join([hexes[0], "", hexes[1].upper()]) + "\r\n"

    from_list = _run(
        "remove", "--data", str(data), "--list", "police", "-", stdin=piped
    )
    with_arguments = _run(
        "remove",
        "--data",
        str(data),
        "--algorithm",
        "md5",
        hexes[2],
        "-",
        stdin=hexes[3],
    )

    assert from_list.returncode == 0, from_list.stderr
    assert "md5: removed 2 of 2 from police" in from_list.stdout
    assert with_arguments.returncode == 0, with_arguments.stderr
    assert "md5: removed 2 of 2 from every list" in with_arguments.stdout
    with HashStore.open(data, readonly=True) as store:
        assert store.list_summary("police").total == 6


def test_remove_dash_names_the_stdin_line_of_a_bad_hash(tmp_path: Path) -> None:
    data = tmp_path / "data"
    hexes = _hex_file(tmp_path / "l.txt", 2, seed=7)
    _run("import", "--data", str(data), "--list", "l", str(tmp_path / "l.txt"))

    result = _run("remove", "--data", str(data), "-", stdin=f"{hexes[0]}\n\nabc\n")

    assert result.returncode == 2
    assert "standard input line 3" in result.stderr
    with HashStore.open(data, readonly=True) as store:
        assert store.list_summary("l").total == 2


@pytest.mark.parametrize(
    ("arguments", "fragment"),
    [
        pytest.param(
            ("retire", "--data", "{data}", "nope"), "no list named", id="unknown-list"
        ),
        pytest.param(("remove", "--data", "{data}", "abc"), "hash 1", id="bad-hash"),
        pytest.param(
            ("lists", "--data", "{missing}"),
            "not a HashCheck data directory",
            id="missing-dir",
        ),
        pytest.param(
            ("import", "--data", "{data}", "--list", "x", "{missing}"),
            "Cannot read",
            id="missing-file",
        ),
    ],
)
def test_errors_exit_2_with_message(
    tmp_path: Path, arguments: tuple[str, ...], fragment: str
) -> None:
    data = tmp_path / "data"
    _hex_file(tmp_path / "l.txt", 3, seed=5)
    _run("import", "--data", str(data), "--list", "l", str(tmp_path / "l.txt"))
    filled = [a.format(data=data, missing=tmp_path / "missing") for a in arguments]

    result = _run(*filled)

    assert result.returncode == 2
    assert fragment in result.stderr
    assert "Traceback" not in result.stderr


def test_serve_refuses_foreign_directory(tmp_path: Path) -> None:
    (tmp_path / "data.mdb").write_bytes(b"garbage" * 1000)

    result = _run("serve", "--data", str(tmp_path), "--listen", "127.0.0.1:0")

    assert result.returncode == 2
    assert "HashCheck store" in result.stderr


@pytest.mark.parametrize("taken", ["grpc", "metrics"])
def test_serve_on_a_taken_address_exits_2_with_one_message(
    store_with_police: Path, taken: str
) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        listen = f"127.0.0.1:{port}" if taken == "grpc" else "127.0.0.1:0"
        metrics = ["--metrics-port", str(port)] if taken == "metrics" else []

        completed = _run(
            "serve", "--data", str(store_with_police), "--listen", listen, *metrics
        )

    assert completed.returncode == 2
    last_line = completed.stderr.strip().splitlines()[-1]
    assert last_line.startswith("hashcheck-server serve: Cannot ")
    assert str(port) in last_line
    assert "Traceback" not in completed.stderr


@pytest.mark.skipif(sys.platform != "linux", reason="tgkill is Linux's")
def test_serve_drains_when_sigterm_reaches_another_thread(
    store_with_police: Path,
) -> None:
    # The kernel may hand a process's signal to any of its threads; one
    # aimed at a gRPC thread must still end the server.
    server = _serve_in_background(store_with_police)
    try:
        assert server.stderr is not None
        for line in server.stderr:
            if "listening on" in line:
                break
        threads = [int(t) for t in os.listdir(f"/proc/{server.pid}/task")]
        other = next(t for t in sorted(threads) if t != server.pid)
        libc = ctypes.CDLL(None, use_errno=True)
        assert libc.syscall(_SYS_TGKILL, server.pid, other, signal.SIGTERM) == 0

        code = server.wait(timeout=20)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
        assert server.stderr is not None
        server.stderr.close()

    assert code == 0


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc")
def test_serve_drains_a_sigterm_that_comes_while_it_starts(
    store_with_police: Path,
) -> None:
    # Supervisors send SIGTERM whenever they like, also before the server
    # says it listens: once the handler is in place, the signal must lead
    # to a drain and a clean exit, never to a kill.
    server = _serve_in_background(store_with_police)
    try:
        _wait_until_catching(server.pid, signal.SIGTERM)
        server.send_signal(signal.SIGTERM)
        _, log = server.communicate(timeout=20)
    finally:
        if server.poll() is None:
            server.kill()
            server.communicate()

    assert server.returncode == 0
    assert "received SIGTERM" in log
    assert log.strip().splitlines()[-1].endswith("stopped")


def _serve_in_background(data: Path) -> subprocess.Popen[str]:
    """`serve` on an ephemeral port, its log lines on a pipe."""
    return subprocess.Popen(
        [SERVER_CLI, "--log-format", "text", "serve"]
        + ["--data", str(data), "--listen", "127.0.0.1:0"],
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_until_catching(pid: int, signum: int) -> None:
    """Return once process pid has a handler for signum (its SigCgt mask)."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        status = Path(f"/proc/{pid}/status").read_text()
        caught = next(line for line in status.splitlines() if line.startswith("SigCgt"))
        if int(caught.split()[1], 16) & (1 << (signum - 1)):
            return
        time.sleep(0.005)
    raise AssertionError(f"process {pid} never caught signal {signum}")


#: tgkill(2) on x86-64 and aarch64 Linux.
_SYS_TGKILL = 234 if platform.machine() == "x86_64" else 131
