"""Tenant records, API keys and limits, and the `tenant` commands."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from hashcheck._algorithms import Algorithm
from hashcheck_server import layout, tenants
from hashcheck_server.cli import main as server_main
from hashcheck_server.errors import OverLimit
from hashcheck_server.limits import (
    PDQ_TOKEN_WEIGHT,
    OpenStreams,
    StreamSlots,
    TokenBucket,
    open_stream_limit,
    tokens_for,
)
from hashcheck_server.tenants import Limits, Tenant, TenantRegistry, TenantSnapshot
from tenancy import build_store, make_list_hashes

SERVER_CLI = str(Path(sys.executable).parent / "hashcheck-server")
KEY_PATTERN = re.compile(r"hck_[0-9a-f]{12}_[A-Za-z0-9_-]{43}")


def _run(*arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [SERVER_CLI, "--log-format", "text", *arguments],
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture
def environment(tmp_path: Path) -> layout.Environment:
    opened = layout.Environment(tmp_path / "data", create=True)
    yield opened  # type: ignore[misc]
    opened.close()


def _store(tmp_path: Path) -> str:
    """A data directory with `police` (A1, B2) and `hotline` (baseline)."""
    data = tmp_path / "data"
    build_store(data, make_list_hashes())
    return str(data)


def test_tenant_add_prints_key_alone_on_the_last_line(tmp_path: Path) -> None:
    data = _store(tmp_path)

    added = _run(
        "tenant", "add", "--data", data, "acme",
        "--lists", "police,hotline", "--categories", "A1,baseline",
    )  # fmt: skip
    shown = _run("tenant", "show", "--data", data, "acme")
    listed = _run("tenant", "list", "--data", data, "--json")

    assert added.returncode == 0, added.stderr
    assert "warning" not in added.stderr
    key = added.stdout.splitlines()[-1]
    assert KEY_PATTERN.fullmatch(key)
    record = json.loads(shown.stdout)
    assert (record["lists"], record["categories"]) == (
        ["police", "hotline"],
        ["A1", "baseline"],
    )
    assert [json.loads(line)["name"] for line in listed.stdout.splitlines()] == ["acme"]
    # Neither the key nor its digest is shown again, and the key is not stored.
    assert key not in shown.stdout and "digest" not in shown.stdout
    stored = (tmp_path / "data" / "data.mdb").read_bytes()
    assert key.encode() not in stored
    # The secret is the 43 characters after the id; it may itself hold "_".
    assert key.split("_", 2)[2].encode() not in stored


def _main(capsys: pytest.CaptureFixture[str], *arguments: str) -> tuple[int, str, str]:
    """`hashcheck-server` in this process, for speed: (status, stdout, stderr)."""
    status = server_main(["--log-format", "text", *arguments])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_tenant_commands_change_state(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = _store(tmp_path)
    _main(capsys, "tenant", "add", "--data", data, "acme")

    _, disabled, _ = _main(capsys, "tenant", "disable", "--data", data, "acme")
    _, enabled, _ = _main(capsys, "tenant", "enable", "--data", data, "acme")
    status, _, error = _main(
        capsys, "tenant", "set-limits", "--data", data, "acme", "--lists", "police",
        "--rate", "500", "--max-batch", "1000", "--max-streams", "0", "--operator",
    )  # fmt: skip
    _, rotated, _ = _main(
        capsys, "tenant", "rotate-key", "--data", data, "acme", "--revoke-old"
    )
    _, shown, _ = _main(capsys, "tenant", "show", "--data", data, "acme")
    record = json.loads(shown)

    assert "(disabled)" in disabled and "(enabled)" in enabled
    assert status == 0, error
    assert KEY_PATTERN.fullmatch(rotated.splitlines()[-1])
    assert record["lists"] == ["police"] and record["operator"] is True
    assert record["limits"] == {
        "max_batch_hashes": 1000,
        "hashes_per_second": 500.0,
        "burst_hashes": None,
        "max_streams": None,
    }
    assert [key["valid"] for key in record["keys"]] == [True]


@pytest.mark.parametrize(
    "arguments",
    [
        ("tenant", "show", "nobody"),
        ("tenant", "add", "bad name"),
        ("tenant", "set-limits", "acme", "--rate", "-1"),
    ],
    ids=["unknown", "bad-name", "negative-rate"],
)
def test_tenant_command_errors_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], arguments: tuple[str, ...]
) -> None:
    data = str(tmp_path / "data")
    _main(capsys, "tenant", "add", "--data", data, "acme")

    status, _, error = _main(capsys, *arguments[:2], "--data", data, *arguments[2:])

    assert status == 2
    assert error.startswith("hashcheck-server tenant: ")


@pytest.mark.parametrize(
    "arguments",
    [
        ("tenant", "add", "beta", "--lists", "police,polise"),
        ("tenant", "set-limits", "acme", "--lists", "polise"),
    ],
    ids=["add", "set-limits"],
)
def test_tenant_scope_with_an_unknown_list_exits_2_naming_the_known_lists(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], arguments: tuple[str, ...]
) -> None:
    data = _store(tmp_path)
    _main(capsys, "tenant", "add", "--data", data, "acme", "--lists", "police")

    status, _, error = _main(capsys, *arguments[:2], "--data", data, *arguments[2:])
    _, listed, _ = _main(capsys, "tenant", "list", "--data", data, "--json")

    assert status == 2
    assert error.startswith("hashcheck-server tenant: ")
    assert "'polise'" in error and "'hotline', 'police'" in error
    assert "--allow-unknown-lists" in error
    # Nothing was changed: no tenant beta, and acme keeps its list.
    records = [json.loads(line) for line in listed.splitlines()]
    assert [(r["name"], r["lists"]) for r in records] == [("acme", ["police"])]


def test_tenant_scope_with_allow_unknown_lists_is_kept_with_a_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = str(tmp_path / "data")  # no list imported yet

    added, _, warned = _main(
        capsys, "tenant", "add", "--data", data, "acme",
        "--lists", "police", "--allow-unknown-lists",
    )  # fmt: skip
    changed, _, error = _main(
        capsys, "tenant", "set-limits", "--data", data, "acme", "--rate", "5"
    )

    assert added == 0 and changed == 0, error
    assert "warning: 'police' not in the store yet" in warned
    assert error == ""


def test_tenant_categories_that_no_list_of_its_grades_are_warned_of(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = _store(tmp_path)

    status, _, warned = _main(
        capsys, "tenant", "add", "--data", data, "acme",
        "--lists", "hotline", "--categories", "A1,baseline,Z9",
    )  # fmt: skip
    _, shown, _ = _main(capsys, "tenant", "show", "--data", data, "acme")

    assert status == 0
    # Log lines of the store may share standard error; the warning is one line.
    (line,) = [line for line in warned.splitlines() if "warning:" in line]
    assert line.startswith("hashcheck-server tenant: warning: ")
    assert "'A1', 'Z9'" in line and "graded: 'baseline'" in line
    assert json.loads(shown)["categories"] == ["A1", "baseline", "Z9"]


def test_keys_are_random_and_only_their_digests_kept(
    environment: layout.Environment,
) -> None:
    registry = TenantRegistry(environment)
    issued = [registry.add(f"t{n}")[1] for n in range(20)]
    snapshot = TenantSnapshot.load(environment)

    assert len(set(issued)) == 20
    assert all(KEY_PATTERN.fullmatch(key) for key in issued)
    assert [snapshot.authenticate(key, (), 0).name for key in issued] == [  # type: ignore[union-attr]
        f"t{n}" for n in range(20)
    ]
    stored = json.dumps([json.loads(t.to_json()) for t in snapshot.tenants.values()])
    assert not any(key in stored for key in issued)


def test_unknown_and_wrong_keys_take_the_same_comparison(
    environment: layout.Environment, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, key = TenantRegistry(environment).add("acme")
    snapshot = TenantSnapshot.load(environment)
    compared: list[tuple[int, int]] = []
    real = tenants.hmac.compare_digest

    def recording(a: bytes, b: bytes) -> bool:
        compared.append((len(a), len(b)))
        return real(a, b)

    monkeypatch.setattr(tenants.hmac, "compare_digest", recording)
    wrong_secret = key[:-1] + ("A" if key[-1] != "A" else "B")
    results = [
        snapshot.authenticate(candidate, (), 0)
        for candidate in (wrong_secret, "hck_ffffffffffff_" + "x" * 43, "junk", "")
    ]

    assert results == [None, None, None, None]
    assert compared == [(32, 32)] * 4


def test_rotation_keeps_at_most_two_valid_keys(
    environment: layout.Environment,
) -> None:
    registry = TenantRegistry(environment)
    _, first = registry.add("acme")
    _, second = registry.rotate_key("acme", old_valid_seconds=3600)
    tenant, third = registry.rotate_key("acme", old_valid_seconds=3600)
    snapshot = TenantSnapshot.load(environment)

    assert len(tenant.keys) == 2
    assert snapshot.authenticate(first, (), 0) is None
    assert snapshot.authenticate(second, (), 0) is not None
    assert snapshot.authenticate(third, (), 0) is not None


def test_tenant_change_makes_a_generation_with_the_same_digest(
    environment: layout.Environment,
) -> None:
    with environment.read() as transaction:
        before = layout.read_generation_record(environment, transaction)
    TenantRegistry(environment).add("acme")
    with environment.read() as transaction:
        after = layout.read_generation_record(environment, transaction)

    assert after.number == before.number + 1
    assert after.digest == before.digest


def test_tenant_allows_only_its_lists_and_categories() -> None:
    from hashcheck_server.generation import ListMatch

    gamma = Tenant("gamma", lists=("police",), categories=("A1",))

    assert gamma.allows(ListMatch("police", "A1"))
    assert not gamma.allows(ListMatch("police", "B2"))
    assert not gamma.allows(ListMatch("hotline", "A1"))
    assert Tenant("acme").sees_everything


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_token_bucket_refuses_with_the_time_to_wait() -> None:
    clock = _Clock()
    bucket = TokenBucket(hashes_per_second=100, burst_hashes=200, clock=clock)

    bucket.take(150)
    with pytest.raises(OverLimit) as limited:
        bucket.take(100)
    clock.now += 0.5
    bucket.take(100)

    assert limited.value.retry_after_seconds == pytest.approx(0.5)


def test_token_bucket_lets_a_batch_over_the_burst_through_into_debt() -> None:
    clock = _Clock()
    bucket = TokenBucket(hashes_per_second=100, burst_hashes=100, clock=clock)

    bucket.take(1_000)  # a full bucket lets any batch through...
    with pytest.raises(OverLimit) as limited:
        bucket.take(1)  # ...and the debt is paid back at the rate

    assert limited.value.retry_after_seconds == pytest.approx(9.01)


def test_token_bucket_charges_empty_batches() -> None:
    bucket = TokenBucket(hashes_per_second=1, burst_hashes=2, clock=_Clock())

    bucket.take(0)
    bucket.take(0)
    with pytest.raises(OverLimit):
        bucket.take(0)


def test_stream_slots_hold_up_to_the_limit() -> None:
    slots = StreamSlots()
    tenant = Tenant("small", limits=Limits(max_streams=2))

    slots.acquire(tenant)
    slots.acquire(tenant)
    with pytest.raises(OverLimit):
        slots.acquire(tenant)
    slots.release(tenant)
    slots.acquire(tenant)

    assert slots.open_count("small") == 2


def test_tokens_for_weights_pdq_hashes_by_their_search() -> None:
    assert tokens_for(Algorithm.MD5, 10) == 10
    assert tokens_for(Algorithm.SHA256, 10) == 10
    assert tokens_for(Algorithm.PDQ, 10) == 10 * PDQ_TOKEN_WEIGHT
    assert PDQ_TOKEN_WEIGHT == 1_000


def test_token_bucket_charge_refuses_pdq_saying_what_a_hash_counts() -> None:
    bucket = TokenBucket(hashes_per_second=2_000, burst_hashes=2_000, clock=_Clock())

    bucket.charge(Algorithm.MD5, 1_000)
    with pytest.raises(OverLimit) as limited:
        bucket.charge(Algorithm.PDQ, 2)

    assert "A pdq hash counts as 1,000 hashes" in str(limited.value)
    assert limited.value.retry_after_seconds == pytest.approx(0.5)


@pytest.mark.parametrize(
    ("threads", "streams"),
    [(2, 1), (3, 1), (4, 2), (16, 12), (64, 48)],
    ids=["2-threads", "3-threads", "4-threads", "16-threads", "64-threads"],
)
def test_open_stream_limit_keeps_a_reserve_of_threads(
    threads: int, streams: int
) -> None:
    assert open_stream_limit(threads) == streams
    assert open_stream_limit(threads, threads - 1) == threads - 1


@pytest.mark.parametrize(
    ("threads", "requested"),
    [(1, None), (16, 16), (16, 0)],
    ids=["one-thread", "all-threads", "no-stream"],
)
def test_open_stream_limit_refuses_a_cap_that_leaves_no_thread(
    threads: int, requested: int | None
) -> None:
    with pytest.raises(ValueError, match="thread"):
        open_stream_limit(threads, requested)


def test_open_streams_hold_up_to_the_limit_and_give_slots_back() -> None:
    streams = OpenStreams(limit=2)

    with streams.slot(), streams.slot():
        with pytest.raises(OverLimit, match="holds 2 open streams"):
            with streams.slot():
                pass  # pragma: no cover
        held = streams.open_count

    assert held == 2 and streams.open_count == 0


def test_snapshot_directory_tenants_are_read_without_its_lock(tmp_path: Path) -> None:
    data = tmp_path / "data"
    environment = layout.Environment(data, create=True)
    _, key = TenantRegistry(environment).add("acme", lists=["police"])
    version = TenantSnapshot.load(environment).version
    environment.close()
    (data / "lock.mdb").unlink()  # a published snapshot is read lock-free

    snapshot = TenantSnapshot.load_snapshot_directory(data)

    tenant = snapshot.authenticate(key, (), 0)
    assert tenant is not None and tenant.lists == ("police",)
    assert snapshot.version == version
    assert not (data / "lock.mdb").exists()
