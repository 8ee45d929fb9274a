"""`hashcheck check` and `hashcheck info`, run as child processes where it matters."""

from __future__ import annotations

import io
import json
import re
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

import grpc
import pytest

from hashcheck import Algorithm
from hashcheck._cli import main

if TYPE_CHECKING:
    from conftest import CliRunner, FakeHashCheck, LiveCli

MakeHash = Callable[[Algorithm, int], bytes]


def _json_lines(stdout: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in stdout.splitlines()]


def _assert_matches(pattern: str, text: str) -> None:
    assert re.search(pattern, text), f"{pattern!r} not in {text!r}"


def test_cli_check_no_hits_exits_0(
    run_cli: CliRunner, target: str, make_hash: MakeHash
) -> None:
    completed = run_cli("check", "--server", target, make_hash(Algorithm.MD5, 1).hex())

    assert completed.returncode == 0, completed.stderr
    assert completed.stdout == ""


def test_cli_check_hits_exit_1_with_json(
    run_cli: CliRunner, target: str, fake: FakeHashCheck, make_hash: MakeHash
) -> None:
    known = make_hash(Algorithm.SHA1, 2)
    fake.add(known, ("police", "A1"), ("hotline", ""))

    completed = run_cli(
        "check", "--server", target, make_hash(Algorithm.SHA1, 1).hex(), known.hex()
    )

    assert completed.returncode == 1, completed.stderr
    assert _json_lines(completed.stdout) == [
        {
            "hash": known.hex(),
            "algorithm": "sha1",
            "lists": ["police", "hotline"],
            "matches": [
                {"list": "police", "category": "A1"},
                {"list": "hotline", "category": ""},
            ],
            "generation": 7,
        }
    ]


def test_cli_check_arguments_of_several_algorithms(
    fake: FakeHashCheck,
    target: str,
    make_hash: MakeHash,
    capsys: pytest.CaptureFixture[str],
) -> None:
    algorithms = [Algorithm.MD5, Algorithm.SHA1, Algorithm.SHA256]
    known = [make_hash(algorithm, 0) for algorithm in algorithms]
    for hash_bytes in known:
        fake.add(hash_bytes)

    status = main(["check", "--server", target, *(h.hex() for h in known)])

    assert status == 1
    printed = _json_lines(capsys.readouterr().out)
    assert [line["algorithm"] for line in printed] == ["md5", "sha1", "sha256"]
    assert fake.calls == ["Check"] * 3


def test_cli_check_stdin_streams_many_hashes(
    run_cli: CliRunner, target: str, fake: FakeHashCheck, make_hash: MakeHash
) -> None:
    hashes = [make_hash(Algorithm.MD5, number).hex() for number in range(25_000)]
    known = [hashes[0], hashes[12_345], hashes[-1]]
    for hex_hash in known:
        fake.add(bytes.fromhex(hex_hash))
    # Blank lines, surrounding spaces, CRLF and upper case are all tolerated.
    lines = [f"  {hashes[0].upper()}\r", "", *hashes[1:], "   "]

    completed = run_cli(
        "check", "--server", target, "--batch-size", "1000", "-",
        stdin="\n".join(lines) + "\n",
    )  # fmt: skip

    assert completed.returncode == 1, completed.stderr
    assert [line["hash"] for line in _json_lines(completed.stdout)] == known
    assert fake.calls == ["CheckStream"]
    assert fake.stream_requests == 25


def test_cli_check_stdin_batches_stay_within_the_servers_largest(
    run_cli: CliRunner, target: str, fake: FakeHashCheck, make_hash: MakeHash
) -> None:
    fake.max_batch_hashes = 3_000
    hashes = [make_hash(Algorithm.MD5, number).hex() for number in range(25_000)]
    fake.add(bytes.fromhex(hashes[-1]))

    completed = run_cli(
        "check", "--server", target, "-", stdin="\n".join(hashes) + "\n"
    )

    assert completed.returncode == 1, completed.stderr
    assert fake.calls == ["GetInfo", "CheckStream"]
    assert fake.stream_requests == 9  # 25,000 in batches of at most 3,000


@pytest.mark.parametrize(
    ("stdin", "message"),
    [
        ("00" * 16 + "\n\nnot-a-hash\n", "Line 3: 'not-a-hash' is 10 hex digits"),
        ("00" * 16 + "\n" + "00" * 20 + "\n", "Line 2: .* md5 hashes have 32"),
        ("zz" * 16 + "\n", "Line 1: .* not a hex hash"),
        ("\n\nabc\n", "Line 3: Cannot tell the algorithm"),
    ],
    ids=["garbage", "other-width", "not-hex", "unknown-width"],
)
def test_cli_check_stdin_bad_line_exits_2_with_line_number(
    run_cli: CliRunner, target: str, stdin: str, message: str
) -> None:
    completed = run_cli("check", "--server", target, "-", stdin=stdin)

    assert completed.returncode == 2
    assert completed.stdout == ""
    assert completed.stderr.startswith("hashcheck: error: ")
    _assert_matches(message, completed.stderr)


def test_cli_check_empty_stdin_exits_0(run_cli: CliRunner, target: str) -> None:
    completed = run_cli("check", "--server", target, "-", stdin="\n \n")

    assert completed.returncode == 0, completed.stderr


def test_cli_check_stdin_with_algorithm_named(
    target: str,
    fake: FakeHashCheck,
    make_hash: MakeHash,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    known = make_hash(Algorithm.SHA256, 4)
    fake.add(known)
    stdin = io.TextIOWrapper(io.BytesIO(f"{known.hex()}\n".encode()))
    monkeypatch.setattr(sys, "stdin", stdin)

    status = main(["check", "--server", target, "--algorithm", "SHA-256", "-"])

    assert status == 1
    assert _json_lines(capsys.readouterr().out)[0]["algorithm"] == "sha256"


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["abc"], "Hash argument 1: Cannot tell the algorithm"),
        (["--algorithm", "sha1", "00" * 16], "Hash argument 1: .* sha1 hashes"),
        (["00" * 16, "-"], "not both"),
    ],
    ids=["unknown-width", "wrong-width", "mixed-with-stdin"],
)
def test_cli_check_bad_argument_exits_2(
    target: str,
    fake: FakeHashCheck,
    capsys: pytest.CaptureFixture[str],
    arguments: list[str],
    message: str,
) -> None:
    status = main(["check", "--server", target, *arguments])

    assert status == 2
    _assert_matches(message, capsys.readouterr().err)
    assert fake.calls == []


def test_cli_unknown_algorithm_name_exits_2(run_cli: CliRunner, target: str) -> None:
    completed = run_cli("check", "--server", target, "--algorithm", "crc", "00")

    assert completed.returncode == 2
    assert "Unknown hash algorithm 'crc'" in completed.stderr


@pytest.mark.parametrize("source", ["option", "environment"])
def test_cli_check_api_key_accepted(
    run_cli: CliRunner, target: str, fake: FakeHashCheck, source: str
) -> None:
    fake.api_keys = {"company-key"}
    option = ["--api-key", "company-key"] if source == "option" else []
    env = {"HASHCHECK_API_KEY": "company-key"} if source == "environment" else {}

    completed = run_cli("check", "--server", target, *option, "00" * 16, env=env)

    assert completed.returncode == 0, completed.stderr
    assert fake.authorizations == ["Bearer company-key"]


@pytest.mark.parametrize("form", ["arguments", "stdin"])
@pytest.mark.parametrize(
    ("refusal", "message"),
    [
        ("unknown-key", "did not accept the API key"),
        ("permission-denied", "does not allow this API key"),
    ],
)
def test_cli_check_refused_key_exits_2(
    run_cli: CliRunner,
    target: str,
    fake: FakeHashCheck,
    refusal: str,
    message: str,
    form: str,
) -> None:
    if refusal == "unknown-key":
        fake.api_keys = {"right"}
    else:
        fake.fail_next(grpc.StatusCode.PERMISSION_DENIED)
    hashes = ["00" * 16] if form == "arguments" else ["-"]

    completed = run_cli(
        "check", "--server", target, "--api-key", "wrong", *hashes,
        stdin="00" * 16 + "\n",
    )  # fmt: skip

    assert completed.returncode == 2
    assert message in completed.stderr
    assert completed.stdout == ""


def test_cli_check_server_from_environment(
    run_cli: CliRunner, target: str, fake: FakeHashCheck
) -> None:
    fake.add(b"\x00" * 16)

    completed = run_cli("check", "00" * 16, env={"HASHCHECK_SERVER": target})

    assert completed.returncode == 1, completed.stderr


def test_cli_check_unreachable_server_exits_2(run_cli: CliRunner) -> None:
    completed = run_cli("check", "--server", "127.0.0.1:1", "00" * 16)

    assert completed.returncode == 2
    assert "is unavailable" in completed.stderr


def test_cli_info_prints_json(run_cli: CliRunner, target: str) -> None:
    completed = run_cli("info", "--server", target)

    assert completed.returncode == 0, completed.stderr
    info = json.loads(completed.stdout)
    assert info["server"] == target
    assert info["generation"] == 7
    assert info["service_version"] == "0.0.0-fake"
    assert info["max_batch_hashes"] == 100_000
    assert {entry["algorithm"] for entry in info["algorithms"]} == {
        "md5",
        "sha1",
        "sha256",
    }


def test_cli_without_command_exits_2(run_cli: CliRunner) -> None:
    completed = run_cli()

    assert completed.returncode == 2
    assert "usage: hashcheck" in completed.stderr


def test_cli_check_stdin_left_open_prints_each_hit_within_a_second(
    live_cli: Callable[..., LiveCli],
    target: str,
    fake: FakeHashCheck,
    make_hash: MakeHash,
) -> None:
    first, second = make_hash(Algorithm.MD5, 1), make_hash(Algorithm.MD5, 2)
    fake.add(first)
    fake.add(second)
    cli = live_cli("check", "--server", target, "-")

    # The first hit also waits for the child to start and connect.
    cli.send(first.hex() + "\n")
    first_line = cli.line_within(30)
    cli.send(make_hash(Algorithm.MD5, 3).hex() + "\n" + second.hex() + "\n")
    second_line = cli.line_within(1.0)

    assert first_line is not None and json.loads(first_line)["hash"] == first.hex()
    assert second_line is not None, "the hit waited for a full batch"
    assert json.loads(second_line)["hash"] == second.hex()
    assert cli.finish() == (1, "")
    assert fake.calls == ["GetInfo", "CheckStream"]
