"""Tenants against a real server: keys, lists and categories, limits, GetInfo."""

from __future__ import annotations

import time
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from hashcheck import Client
from hashcheck._cli import main as client_main
from hashcheck.v1 import hashcheck_pb2, hashcheck_pb2_grpc
from hashcheck_server import layout
from hashcheck_server.access import AccessConfig, check_listen_is_safe
from hashcheck_server.errors import UnsafeListen
from hashcheck_server.server import RunningServer, ServerConfig, start_server
from hashcheck_server.tenants import TenantRegistry
from tenancy import MD5, ListHashes, as_key, check, hits_of, serve

_CALLS = {
    "Check": lambda stub, metadata: stub.Check(
        hashcheck_pb2.CheckRequest(algorithm=MD5, hashes=bytes(16)),
        metadata=metadata,
    ),
    "CheckStream": lambda stub, metadata: list(
        stub.CheckStream(
            iter([hashcheck_pb2.CheckRequest(algorithm=MD5, hashes=bytes(16))]),
            metadata=metadata,
        )
    ),
    "GetInfo": lambda stub, metadata: stub.GetInfo(
        hashcheck_pb2.GetInfoRequest(), metadata=metadata
    ),
    "Dispute": lambda stub, metadata: stub.Dispute(
        hashcheck_pb2.DisputeRequest(), metadata=metadata
    ),
}


def _code(call: object) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as refused:
        call()  # type: ignore[operator]
    code: grpc.StatusCode = refused.value.code()
    return code


def _hashes_checked(server: RunningServer) -> float:
    value = server.registry.get_sample_value(
        "hashcheck_hashes_checked_total", {"algorithm": "md5"}
    )
    return value or 0.0


@pytest.mark.parametrize("method", sorted(_CALLS))
@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "Bearer ",
        "Basic dXNlcjpwYXNz",
        "Bearer not-a-key",
        "Bearer hck_000000000000_" + "A" * 43,
        "bearer hck_zz",
    ],
    ids=["missing", "empty", "basic", "garbage", "unknown-id", "malformed"],
)
def test_call_without_valid_key_is_unauthenticated_before_lookup(
    secured: RunningServer,
    secured_stub: hashcheck_pb2_grpc.HashCheckStub,
    method: str,
    authorization: str | None,
) -> None:
    metadata = None if authorization is None else (("authorization", authorization),)

    code = _code(lambda: _CALLS[method](secured_stub, metadata))

    assert code == grpc.StatusCode.UNAUTHENTICATED
    assert _hashes_checked(secured) == 0


def test_key_of_one_tenant_with_secret_of_another_is_refused(
    secured_stub: hashcheck_pb2_grpc.HashCheckStub, tenant_keys: dict[str, str]
) -> None:
    acme_id = tenant_keys["acme"].split("_")[1]
    beta_secret = tenant_keys["beta"].split("_", 2)[2]

    code = _code(
        lambda: check(
            secured_stub, np.zeros((1, 16), np.uint8), f"hck_{acme_id}_{beta_secret}"
        )
    )

    assert code == grpc.StatusCode.UNAUTHENTICATED


def test_disabled_tenant_is_permission_denied_until_enabled(
    secured: RunningServer,
    secured_stub: hashcheck_pb2_grpc.HashCheckStub,
    tenant_keys: dict[str, str],
) -> None:
    batch = np.zeros((1, 16), np.uint8)
    assert secured.environment is not None

    refused = _code(lambda: check(secured_stub, batch, tenant_keys["off"]))
    TenantRegistry(secured.environment).update("off", disabled=False)
    secured.access.directory.refresh()  # type: ignore[union-attr]

    assert refused == grpc.StatusCode.PERMISSION_DENIED
    assert check(secured_stub, batch, tenant_keys["off"]).checked == 1


def test_two_tenants_see_different_hits_for_the_same_batch(
    secured_stub: hashcheck_pb2_grpc.HashCheckStub,
    tenant_keys: dict[str, str],
    list_hashes: ListHashes,
) -> None:
    batch = np.concatenate(
        [
            list_hashes.police_a1[:3],  # 0-2
            list_hashes.police_b2[:3],  # 3-5
            list_hashes.hotline[:3],  # 6-8
            list_hashes.both[:3],  # 9-11
            list_hashes.misses(3),  # 12-14
        ]
    )

    acme = hits_of(check(secured_stub, batch, tenant_keys["acme"]))
    beta = hits_of(check(secured_stub, batch, tenant_keys["beta"]))
    gamma = hits_of(check(secured_stub, batch, tenant_keys["gamma"]))

    assert sorted(acme) == list(range(12))
    assert acme[9] == [("hotline", "baseline"), ("police", "A1")]
    # beta matches only `hotline`: police hashes are misses, and the shared
    # hashes name hotline alone.
    assert beta == {p: [("hotline", "baseline")] for p in range(6, 12)}
    # gamma matches police "A1" only ("baseline only", in the field's terms).
    assert gamma == {p: [("police", "A1")] for p in (0, 1, 2, 9, 10, 11)}


def test_health_and_reflection_need_no_key(secured: RunningServer) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{secured.port}") as channel:
        status = (
            health_pb2_grpc.HealthStub(channel)
            .Check(health_pb2.HealthCheckRequest(service="hashcheck.v1.HashCheck"))
            .status
        )
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        (answer,) = reflection_pb2_grpc.ServerReflectionStub(
            channel
        ).ServerReflectionInfo(iter([request]))

    assert status == health_pb2.HealthCheckResponse.SERVING
    names = {service.name for service in answer.list_services_response.service}
    assert "hashcheck.v1.HashCheck" in names


def test_tenant_added_while_serving_needs_no_restart(
    tenant_store: Path, list_hashes: ListHashes
) -> None:
    running = serve(tenant_store)
    try:
        assert running.environment is not None
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            stub = hashcheck_pb2_grpc.HashCheckStub(channel)
            batch = list_hashes.hotline[:2]
            open_reply = check(stub, batch, None)
            _, key = TenantRegistry(running.environment).add("late")
            refused = _wait_for_code(lambda: check(stub, batch, None))
            keyed = check(stub, batch, key)
    finally:
        running.stop(grace_seconds=1.0)

    assert len(open_reply.hit_positions) == 2
    assert refused == grpc.StatusCode.UNAUTHENTICATED
    assert len(keyed.hit_positions) == 2


def test_rotated_key_keeps_the_old_one_until_revoked(
    secured: RunningServer,
    secured_stub: hashcheck_pb2_grpc.HashCheckStub,
    tenant_keys: dict[str, str],
) -> None:
    assert secured.environment is not None and secured.access is not None
    registry = TenantRegistry(secured.environment)
    batch = np.zeros((1, 16), np.uint8)
    old = tenant_keys["acme"]

    _, new = registry.rotate_key("acme", old_valid_seconds=3600)
    secured.access.directory.refresh()
    both_work = [check(secured_stub, batch, k).checked for k in (old, new)]
    _, newest = registry.rotate_key("acme", revoke_old=True)
    secured.access.directory.refresh()

    assert both_work == [1, 1]
    assert _code(lambda: check(secured_stub, batch, old)) == (
        grpc.StatusCode.UNAUTHENTICATED
    )
    assert _code(lambda: check(secured_stub, batch, new)) == (
        grpc.StatusCode.UNAUTHENTICATED
    )
    assert check(secured_stub, batch, newest).checked == 1


def test_old_key_stops_at_its_expiry(
    secured: RunningServer,
    secured_stub: hashcheck_pb2_grpc.HashCheckStub,
    tenant_keys: dict[str, str],
) -> None:
    assert secured.environment is not None and secured.access is not None
    TenantRegistry(secured.environment).rotate_key("beta", old_valid_seconds=0.2)
    secured.access.directory.refresh()
    batch = np.zeros((1, 16), np.uint8)

    before = check(secured_stub, batch, tenant_keys["beta"]).checked
    time.sleep(0.3)

    assert before == 1
    assert _code(lambda: check(secured_stub, batch, tenant_keys["beta"])) == (
        grpc.StatusCode.UNAUTHENTICATED
    )


@pytest.mark.parametrize(
    ("name", "sees_counts"), [("ops", True), ("acme", False), ("beta", False)]
)
def test_info_names_tenant_and_shows_counts_to_operators_only(
    secured_stub: hashcheck_pb2_grpc.HashCheckStub,
    tenant_keys: dict[str, str],
    name: str,
    sees_counts: bool,
) -> None:
    info = secured_stub.GetInfo(
        hashcheck_pb2.GetInfoRequest(), metadata=as_key(tenant_keys[name])
    )

    assert info.tenant == name
    counted = [a for a in info.algorithms if a.HasField("hash_count")]
    if sees_counts:
        assert {a.algorithm: a.hash_count for a in counted}[MD5] == 750
    else:
        assert counted == []


def test_tenant_largest_batch_is_invalid_argument_and_shown_in_info(
    secured_stub: hashcheck_pb2_grpc.HashCheckStub, tenant_keys: dict[str, str]
) -> None:
    key = tenant_keys["small"]

    code = _code(lambda: check(secured_stub, np.zeros((11, 16), np.uint8), key))
    info = secured_stub.GetInfo(hashcheck_pb2.GetInfoRequest(), metadata=as_key(key))

    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert info.max_batch_hashes == 10
    assert check(secured_stub, np.zeros((10, 16), np.uint8), key).checked == 10


def test_rate_limit_is_resource_exhausted_with_retry_after(
    secured_stub: hashcheck_pb2_grpc.HashCheckStub, tenant_keys: dict[str, str]
) -> None:
    batch = np.zeros((1_000, 16), np.uint8)
    key = tenant_keys["quick"]

    first = check(secured_stub, batch, key)
    with pytest.raises(grpc.RpcError) as refused:
        check(secured_stub, batch, key)

    assert first.checked == 1_000
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    trailers = dict(refused.value.trailing_metadata())
    assert 1 <= int(trailers["retry-after-ms"]) <= 60


def test_sdk_waits_out_the_rate_limit(
    secured: RunningServer, tenant_keys: dict[str, str], list_hashes: ListHashes
) -> None:
    batch = [row.tobytes() for row in list_hashes.hotline[:5]] + [bytes(16)] * 995

    with Client(f"127.0.0.1:{secured.port}", api_key=tenant_keys["quick"]) as client:
        results = [client.check(batch, algorithm="md5") for _ in range(3)]

    assert [len(result.hits) for result in results] == [5, 5, 5]


def test_a_pdq_hash_takes_a_thousand_tokens_of_the_rate(
    secured_stub: hashcheck_pb2_grpc.HashCheckStub, tenant_keys: dict[str, str]
) -> None:
    key = as_key(tenant_keys["quick"])  # 20,000 a second, a bucket of 1,000

    def two_of(algorithm: int) -> hashcheck_pb2.CheckReply:
        request = hashcheck_pb2.CheckRequest(algorithm=algorithm, hashes=bytes(64))
        reply: hashcheck_pb2.CheckReply = secured_stub.Check(request, metadata=key)
        return reply

    exact = [two_of(MD5).checked for _ in range(2)]
    first_pdq = two_of(hashcheck_pb2.ALGORITHM_PDQ).checked
    with pytest.raises(grpc.RpcError) as refused:
        two_of(hashcheck_pb2.ALGORITHM_PDQ)

    assert exact == [4, 4] and first_pdq == 2
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "counts as 1,000 hashes" in str(refused.value.details())


def test_a_stream_over_the_rate_is_slowed_not_ended(
    secured: RunningServer, tenant_keys: dict[str, str], list_hashes: ListHashes
) -> None:
    listed = [row.tobytes() for row in list_hashes.hotline[:3]]
    hashes = (listed + [bytes(16)] * 1_997) * 5  # 10,000 at 20,000 a second

    started = time.monotonic()
    with Client(f"127.0.0.1:{secured.port}", api_key=tenant_keys["quick"]) as client:
        results = list(client.check_stream(hashes, algorithm="md5", batch_size=1_000))
    elapsed = time.monotonic() - started

    assert sum(result.checked for result in results) == 10_000
    assert sum(len(result.hits) for result in results) == 15
    # The bucket holds 1,000 tokens: the other 9,000 hashes wait for theirs.
    assert elapsed >= 9_000 / 20_000 * 0.9


def test_a_paced_stream_ends_when_its_client_goes(
    secured: RunningServer,
    secured_stub: hashcheck_pb2_grpc.HashCheckStub,
    tenant_keys: dict[str, str],
) -> None:
    # Endless batches far over the rate: the server holds most of them back.
    request = hashcheck_pb2.CheckRequest(algorithm=MD5, hashes=bytes(16) * 5_000)
    replies = secured_stub.CheckStream(
        _requests_until_cancelled(request), metadata=as_key(tenant_keys["quick"])
    )
    next(replies)
    replies.cancel()

    assert secured.access is not None
    streams = secured.access.interceptor.streams
    _wait_until(lambda: streams.open_count("quick") == 0)


def test_stream_limit_is_resource_exhausted(
    secured: RunningServer,
    secured_stub: hashcheck_pb2_grpc.HashCheckStub,
    tenant_keys: dict[str, str],
) -> None:
    key = as_key(tenant_keys["small"])
    request = hashcheck_pb2.CheckRequest(algorithm=MD5, hashes=bytes(16))
    held = secured_stub.CheckStream(_requests_until_cancelled(request), metadata=key)
    next(held)  # the first stream is open on the server

    second = _code(
        lambda: list(secured_stub.CheckStream(iter([request]), metadata=key))
    )
    held.cancel()
    assert secured.access is not None
    streams = secured.access.interceptor.streams
    _wait_until(lambda: streams.open_count("small") == 0)
    third = list(secured_stub.CheckStream(iter([request]), metadata=key))

    assert second == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert len(third) == 1


def test_cli_check_takes_api_key_and_exits_2_when_refused(
    secured: RunningServer,
    tenant_keys: dict[str, str],
    list_hashes: ListHashes,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    target = f"127.0.0.1:{secured.port}"
    hit = list_hashes.hotline[0].tobytes().hex()
    monkeypatch.delenv("HASHCHECK_API_KEY", raising=False)

    with_key = client_main(
        ["check", "--server", target, "--api-key", tenant_keys["beta"], hit]
    )
    printed = capsys.readouterr().out
    monkeypatch.setenv("HASHCHECK_API_KEY", "hck_000000000000_" + "B" * 43)
    refused = client_main(["check", "--server", target, hit])
    error = capsys.readouterr().err

    assert with_key == 1 and '"hotline"' in printed
    assert refused == 2 and "API key" in error


def test_server_without_tenants_refuses_non_loopback(tmp_path: Path) -> None:
    data = tmp_path / "data"
    layout.Environment(data, create=True).close()
    config = ServerConfig(data=data, listen="0.0.0.0:0")

    with pytest.raises(UnsafeListen, match="--insecure-no-auth"):
        start_server(config)

    # The store was closed again: it can be opened once more in this process.
    layout.Environment(data).close()


@pytest.mark.parametrize(
    "listen",
    ["127.0.0.1:50051", "localhost:1", "[::1]:50051", "127.8.0.1:1", "unix:/tmp/s"],
)
def test_loopback_without_tenants_serves_openly(listen: str) -> None:
    check_listen_is_safe(listen, has_tenants=False, insecure_no_auth=False)


def test_insecure_no_auth_is_logged_loudly(caplog: pytest.LogCaptureFixture) -> None:
    check_listen_is_safe("0.0.0.0:50051", has_tenants=False, insecure_no_auth=True)

    (record,) = [r for r in caplog.records if r.levelname == "WARNING"]
    assert "WITHOUT AUTHENTICATION" in record.getMessage()


def test_tenants_make_any_address_safe() -> None:
    check_listen_is_safe("203.0.113.7:443", has_tenants=True, insecure_no_auth=False)


def test_access_config_needs_cert_and_key_together(tmp_path: Path) -> None:
    from hashcheck_server.access import access_config
    from hashcheck_server.errors import HashCheckError

    with pytest.raises(HashCheckError, match="go together"):
        access_config(
            tls_cert=tmp_path / "c.pem",
            tls_key=None,
            client_ca=None,
            insecure_no_auth=False,
            audit=None,
            audit_retention_days=None,
        )
    assert AccessConfig().tls is None


def _requests_until_cancelled(
    request: hashcheck_pb2.CheckRequest,
) -> object:
    yield request
    while True:
        time.sleep(0.05)
        yield request


def _wait_for_code(call: object, timeout_seconds: float = 5.0) -> grpc.StatusCode:
    deadline = time.monotonic() + timeout_seconds
    while True:
        try:
            call()  # type: ignore[operator]
        except grpc.RpcError as error:
            code: grpc.StatusCode = error.code()
            return code
        if time.monotonic() > deadline:
            raise AssertionError("the call was never refused")
        time.sleep(0.02)


def _wait_until(condition: object, timeout_seconds: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_seconds
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError("the condition never held")
        time.sleep(0.02)


def test_follower_takes_tenants_from_each_snapshot(
    tmp_path: Path, tenant_store: Path, list_hashes: ListHashes
) -> None:
    from hashcheck_server.snapshot import publish_snapshot

    root = tmp_path / "snapshots"
    first = _add_tenant(tenant_store, "acme")
    publish_snapshot(tenant_store, root)
    config = ServerConfig(
        data=root, follow=True, listen="127.0.0.1:0", reload_interval_seconds=0.05
    )
    running = start_server(config)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            stub = hashcheck_pb2_grpc.HashCheckStub(channel)
            batch = list_hashes.hotline[:1]
            keyless = _code(lambda: check(stub, batch, None))
            with_first = check(stub, batch, first).checked
            second = _add_tenant(tenant_store, "beta")
            publish_snapshot(tenant_store, root)
            _wait_until(lambda: _code_or_ok(lambda: check(stub, batch, second)))
            with_second = check(stub, batch, second).checked
    finally:
        running.stop(grace_seconds=1.0)

    assert keyless == grpc.StatusCode.UNAUTHENTICATED
    assert (with_first, with_second) == (1, 1)


def test_follower_beyond_loopback_demands_keys_before_any_tenant(
    tenant_store: Path, list_hashes: ListHashes
) -> None:
    running = serve(tenant_store)
    try:
        assert running.access is not None
        running.access.directory.is_open_allowed = False  # as beyond loopback
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            stub = hashcheck_pb2_grpc.HashCheckStub(channel)
            code = _code(lambda: check(stub, list_hashes.hotline[:1], None))
    finally:
        running.stop(grace_seconds=1.0)

    assert code == grpc.StatusCode.UNAUTHENTICATED


def _add_tenant(data: Path, name: str) -> str:
    environment = layout.Environment(data)
    try:
        return TenantRegistry(environment).add(name)[1]
    finally:
        environment.close()


def _code_or_ok(call: object) -> bool:
    try:
        call()  # type: ignore[operator]
    except grpc.RpcError:
        return False
    return True
