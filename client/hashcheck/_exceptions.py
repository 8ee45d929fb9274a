"""The errors the HashCheck SDK raises, as one small tree.

    HashCheckError              base of everything the SDK raises on purpose
    ├── InvalidHash             a hash or algorithm that cannot be used (ValueError)
    ├── CallError               the server ended a call with an error status
    │   ├── ServerUnavailable   UNAVAILABLE, DEADLINE_EXCEEDED: try again later
    │   ├── InvalidRequest      INVALID_ARGUMENT: fix the request first
    │   ├── AuthenticationError UNAUTHENTICATED: the API key is missing or unknown
    │   ├── PermissionDenied    PERMISSION_DENIED: the key may not do this
    │   ├── RateLimited         RESOURCE_EXHAUSTED: slow down, maybe after a delay
    │   └── ServerError         any other status
    ├── ProtocolError           the server broke the hashcheck.v1 contract
    ├── ReceiptInvalid          a receipt altered, malformed or from another key
    └── ManifestInvalid         a manifest altered, malformed or from another key

`CallError` and its subclasses are errors a caller can act on; each carries
the gRPC status code and the server's own message. `ProtocolError` means the
server (or this SDK) is wrong, and retrying will not help. `ReceiptInvalid`
and `ManifestInvalid` mean a document does not prove what it claims: it was
altered, or not signed by the key it was checked against.

Every `grpc.RpcError` becomes one of these in `error_from_rpc`, the only place
that maps status codes, and is chained to it with `from`. Messages are whole
sentences that say what to do next.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator

import grpc

__all__ = [
    "AuthenticationError",
    "CallError",
    "HashCheckError",
    "InvalidHash",
    "InvalidRequest",
    "ManifestInvalid",
    "PermissionDenied",
    "ProtocolError",
    "RateLimited",
    "ReceiptInvalid",
    "ServerError",
    "ServerUnavailable",
]

# The trailer a server sets on RESOURCE_EXHAUSTED to say when to come back.
RETRY_AFTER_KEY = "retry-after-ms"

# A wait the SDK takes on the caller's behalf; longer ones are the caller's call.
LONGEST_AUTOMATIC_WAIT_SECONDS = 30.0


class HashCheckError(Exception):
    """Base class of every error the HashCheck SDK raises on purpose."""


class InvalidHash(HashCheckError, ValueError):
    """A hash of the wrong width or not hex, or an unknown algorithm name.

    Raised before anything is sent, so nothing reached the server.
    """


class CallError(HashCheckError):
    """The server ended a call with an error status."""

    def __init__(
        self, message: str, *, code: grpc.StatusCode, details: str = ""
    ) -> None:
        super().__init__(message)
        self.code = code
        self.details = details


class ServerUnavailable(CallError):
    """The server could not be reached, or did not answer in time."""


class InvalidRequest(CallError):
    """The server rejected the request itself; sending it again will not help."""


class AuthenticationError(CallError):
    """The server did not accept the API key, or none was sent."""


class PermissionDenied(CallError):
    """The API key is known, but may not make this call."""


class RateLimited(CallError):
    """The server asks this caller to slow down.

    `retry_after_seconds` says when to try again, if the server said so.
    """

    def __init__(
        self,
        message: str,
        *,
        code: grpc.StatusCode,
        details: str = "",
        retry_after_seconds: float | None = None,
    ) -> None:
        super().__init__(message, code=code, details=details)
        self.retry_after_seconds = retry_after_seconds


class ServerError(CallError):
    """The call failed with a status the SDK has no more specific error for."""


class ProtocolError(HashCheckError):
    """A reply that breaks the hashcheck.v1 contract, such as one out of order."""


class ReceiptInvalid(HashCheckError):
    """A receipt that proves nothing: altered, signed by another key, or malformed."""


class ManifestInvalid(HashCheckError):
    """A generation manifest that proves nothing: altered, or another key's."""


def error_from_rpc(error: grpc.RpcError, target: str) -> CallError:
    """The SDK error for a failed gRPC call to the server at `target`."""
    code = _code_of(error)
    details = _details_of(error)
    said = f" The server said: {details}" if details else ""

    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        return ServerUnavailable(
            f"The HashCheck server at {target} is unavailable ({code.name}). "
            f"Check the address and that the server runs, then try again.{said}",
            code=code,
            details=details,
        )
    if code is grpc.StatusCode.INVALID_ARGUMENT:
        return InvalidRequest(
            "The server rejected the request as invalid. Fix the request; "
            f"sending it again unchanged will fail again.{said}",
            code=code,
            details=details,
        )
    if code is grpc.StatusCode.UNAUTHENTICATED:
        return AuthenticationError(
            f"The server at {target} did not accept the API key. Pass a valid "
            f"key with api_key= or --api-key, or set HASHCHECK_API_KEY.{said}",
            code=code,
            details=details,
        )
    if code is grpc.StatusCode.PERMISSION_DENIED:
        return PermissionDenied(
            f"The server at {target} does not allow this API key to make this "
            f"call. Ask the hotline to grant it access.{said}",
            code=code,
            details=details,
        )
    if code is grpc.StatusCode.RESOURCE_EXHAUSTED:
        return _rate_limited(error, code, details, said)
    return ServerError(
        f"The server at {target} failed the call with status {code.name}. "
        f"Try again later, and tell its operators if it persists.{said}",
        code=code,
        details=details,
    )


@contextlib.contextmanager
def rpc_errors_translated(target: str) -> Iterator[None]:
    """Raise the SDK's error, chained, for any gRPC error inside the block."""
    try:
        yield
    except grpc.RpcError as error:
        raise error_from_rpc(error, target) from error


def automatic_wait_seconds(error: grpc.RpcError) -> float | None:
    """How long to wait before the one retry of a rate-limited call, if at all.

    Only a RESOURCE_EXHAUSTED that names a delay is retried, and only when the
    delay is short enough to spend on the caller's behalf.
    """
    if _code_of(error) is not grpc.StatusCode.RESOURCE_EXHAUSTED:
        return None

    delay_seconds = retry_after_seconds(error)
    if delay_seconds is None or delay_seconds > LONGEST_AUTOMATIC_WAIT_SECONDS:
        return None
    return delay_seconds


def retry_after_seconds(error: grpc.RpcError) -> float | None:
    """The delay in the `retry-after-ms` trailer, or None when absent or unreadable."""
    for key, value in _trailers_of(error):
        if key != RETRY_AFTER_KEY:
            continue
        text = value.decode("ascii", "replace") if isinstance(value, bytes) else value
        try:
            milliseconds = float(text)
        except ValueError:
            return None
        return max(milliseconds, 0.0) / 1000.0
    return None


def _rate_limited(
    error: grpc.RpcError, code: grpc.StatusCode, details: str, said: str
) -> RateLimited:
    delay_seconds = retry_after_seconds(error)
    when = (
        f"Try again in {delay_seconds:.3g} seconds."
        if delay_seconds is not None
        else "Slow down and try again later."
    )
    return RateLimited(
        f"The server is limiting this caller's requests. {when}{said}",
        code=code,
        details=details,
        retry_after_seconds=delay_seconds,
    )


# Errors raised by grpcio's channel carry the call's status, but a bare
# grpc.RpcError (as raised by some interceptors) need not, so every accessor
# tolerates its absence.


def _code_of(error: grpc.RpcError) -> grpc.StatusCode:
    code = getattr(error, "code", None)
    if not callable(code):
        return grpc.StatusCode.UNKNOWN
    value = code()
    return value if isinstance(value, grpc.StatusCode) else grpc.StatusCode.UNKNOWN


def _details_of(error: grpc.RpcError) -> str:
    details = getattr(error, "details", None)
    if not callable(details):
        return ""
    return str(details() or "")


def _trailers_of(error: grpc.RpcError) -> Iterable[tuple[str, str | bytes]]:
    trailing_metadata = getattr(error, "trailing_metadata", None)
    if not callable(trailing_metadata):
        return ()
    # grpc gives named (key, value) tuples, grpc.aio a Metadata of plain pairs;
    # both unpack the same way.
    pairs: Iterable[tuple[str, str | bytes]] = trailing_metadata() or ()
    return pairs
