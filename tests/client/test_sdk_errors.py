"""Status codes become the SDK's errors; gRPC retries UNAVAILABLE; retry-after."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import grpc
import pytest

from hashcheck import (
    AuthenticationError,
    CallError,
    Client,
    HashCheckError,
    InvalidRequest,
    PermissionDenied,
    RateLimited,
    ServerError,
    ServerUnavailable,
)

if TYPE_CHECKING:
    from conftest import FakeHashCheck

_MAPPING = [
    (grpc.StatusCode.UNAVAILABLE, ServerUnavailable),
    (grpc.StatusCode.DEADLINE_EXCEEDED, ServerUnavailable),
    (grpc.StatusCode.INVALID_ARGUMENT, InvalidRequest),
    (grpc.StatusCode.UNAUTHENTICATED, AuthenticationError),
    (grpc.StatusCode.PERMISSION_DENIED, PermissionDenied),
    (grpc.StatusCode.RESOURCE_EXHAUSTED, RateLimited),
    (grpc.StatusCode.INTERNAL, ServerError),
    (grpc.StatusCode.UNKNOWN, ServerError),
    (grpc.StatusCode.UNIMPLEMENTED, ServerError),
]

_CALLS: dict[str, Callable[[Client], object]] = {
    "Check": lambda client: client.check(["00" * 16]),
    "GetInfo": lambda client: client.info(),
    "CheckStream": lambda client: list(client.check_stream(["00" * 16])),
}


@pytest.mark.parametrize("method", list(_CALLS))
@pytest.mark.parametrize(
    ("code", "error_type"), _MAPPING, ids=[code.name for code, _ in _MAPPING]
)
def test_status_code_maps_to_error(
    client: Client,
    fake: FakeHashCheck,
    method: str,
    code: grpc.StatusCode,
    error_type: type[CallError],
) -> None:
    # Enough failures to outlast gRPC's own retries of UNAVAILABLE.
    fake.fail_next(code, times=5, details="Details from the server.")

    with pytest.raises(error_type) as raised:
        _CALLS[method](client)

    error = raised.value
    assert isinstance(error, HashCheckError)
    assert error.code is code
    assert error.details == "Details from the server."
    assert isinstance(error.__cause__, grpc.RpcError)
    assert str(error).endswith("The server said: Details from the server.")


def test_unavailable_is_retried_by_grpc(client: Client, fake: FakeHashCheck) -> None:
    fake.fail_next(grpc.StatusCode.UNAVAILABLE, times=2)

    assert client.check(["00" * 16]).checked == 1
    assert fake.calls == ["Check"] * 3


def test_unreachable_server_raises_server_unavailable() -> None:
    # Port 1 on the loopback interface: nothing listens there.
    with Client("127.0.0.1:1", timeout_seconds=5) as client:
        with pytest.raises(ServerUnavailable, match="127.0.0.1:1"):
            client.info()


def test_retry_after_is_waited_then_retried_once(
    client: Client, fake: FakeHashCheck
) -> None:
    fake.fail_next(
        grpc.StatusCode.RESOURCE_EXHAUSTED, trailing=(("retry-after-ms", "200"),)
    )

    started = time.monotonic()
    result = client.check(["00" * 16])
    waited_seconds = time.monotonic() - started

    assert result.checked == 1
    assert fake.calls == ["Check", "Check"]
    assert waited_seconds >= 0.2


def test_retry_after_twice_raises_rate_limited(
    client: Client, fake: FakeHashCheck
) -> None:
    fake.fail_next(
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        times=2,
        trailing=(("retry-after-ms", "20"),),
    )

    with pytest.raises(RateLimited, match="Try again in 0.02 seconds") as raised:
        client.info()

    assert raised.value.retry_after_seconds == pytest.approx(0.02)
    assert fake.calls == ["GetInfo", "GetInfo"]


@pytest.mark.parametrize(
    ("trailing", "retry_after_seconds"),
    [
        ((), None),
        ((("retry-after-ms", "soon"),), None),
        ((("retry-after-ms", "600000"),), 600.0),
    ],
    ids=["no-delay", "unreadable-delay", "long-delay"],
)
def test_rate_limited_without_short_delay_is_not_retried(
    client: Client,
    fake: FakeHashCheck,
    trailing: tuple[tuple[str, str], ...],
    retry_after_seconds: float | None,
) -> None:
    fake.fail_next(grpc.StatusCode.RESOURCE_EXHAUSTED, trailing=trailing)

    with pytest.raises(RateLimited) as raised:
        client.check(["00" * 16])

    assert raised.value.retry_after_seconds == retry_after_seconds
    assert fake.calls == ["Check"]


def test_refused_key_message_says_what_to_do(target: str, fake: FakeHashCheck) -> None:
    fake.api_keys = {"right"}

    with Client(target, api_key="wrong") as client:
        with pytest.raises(AuthenticationError, match="HASHCHECK_API_KEY"):
            client.check(["00" * 16])
