"""Access control: who may call, checked before any lookup runs.

Every call to hashcheck.v1.HashCheck passes `AccessInterceptor`; the
standard health and reflection services pass without a key, so probes and
`grpcurl list` work. For a HashCheck call the interceptor hands grpcio a
handler that takes the raw request bytes and, in order:

1. authenticates: the `authorization: Bearer <key>` metadata (and, over
   mutual TLS, the client certificate's names) against the current
   `TenantSnapshot`: none, unknown, expired or malformed -> UNAUTHENTICATED;
2. authorizes: a disabled tenant -> PERMISSION_DENIED;
3. for a stream, takes one of the tenant's stream slots, then one of the
   process's (`OpenStreams`) -> RESOURCE_EXHAUSTED;
4. decodes the request(s) itself, so that bytes that are no CheckRequest
   get INVALID_ARGUMENT rather than grpcio's generic error, and only after
   the key was accepted;
5. runs the servicer inside a context whose `current_caller()` is the
   tenant (hashcheck_server.caller). The servicer applies the tenant's
   largest batch, its rate, and its lists and categories.

Every open stream holds a handler thread, so the process's stream slots are
taken by the reflection service's streams too (they need no key, which makes
them the cheapest way to hold threads); health's Watch does not hold a
thread, and unary calls hold one only while they are answered.

Refusals become status codes in hashcheck_server.servicer, like every other
error. Their messages are the same for every unknown key, so that a caller
learns nothing about which keys or tenants exist.

Without any tenant in the store, calls need no key: the server is open, as
a demo on loopback is. `check_listen_is_safe` refuses to start such a server
on any other address unless `--insecure-no-auth` is given. Once a tenant is
added, keys are required from the next poll on, without a restart.

Tenants are re-read when their version changes: one tiny read transaction
per poll interval (a follower re-reads them from each new snapshot). A
follower beyond loopback demands keys even before its first snapshot.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import grpc
from google.protobuf.message import DecodeError, Message

from hashcheck_server import layout
from hashcheck_server.audit import AuditLog, AuditPruner
from hashcheck_server.caller import Caller, context_for
from hashcheck_server.errors import (
    AccessRefused,
    BadRequest,
    Forbidden,
    HashCheckError,
    NotReady,
    OverLimit,
    Unauthenticated,
    UnsafeListen,
)
from hashcheck_server.follow import SnapshotFollower
from hashcheck_server.limits import OpenStreams, StreamSlots, TokenBuckets
from hashcheck_server.metrics import ServerMetrics
from hashcheck_server.refusals import RefusalRecorder
from hashcheck_server.servicer import abort_with, status_for
from hashcheck_server.serving import GenerationKeeper
from hashcheck_server.snapshot import current_snapshot
from hashcheck_server.tenants import TenantSnapshot, read_version
from hashcheck_server.transport import ServerTLS, bind, is_loopback

__all__ = [
    "AccessConfig",
    "AccessControl",
    "AccessInterceptor",
    "TenantDirectory",
    "access_config",
    "check_listen_is_safe",
    "check_start",
]

logger = logging.getLogger(__name__)

if TYPE_CHECKING:
    _ServerInterceptor = grpc.ServerInterceptor[Any, Any]
else:  # grpc's classes are generic only in its type stubs
    _ServerInterceptor = grpc.ServerInterceptor

_GUARDED_PREFIX = "/hashcheck.v1.HashCheck/"
_REQUEST_ID_KEY = "x-request-id"
_MAX_REQUEST_ID_CHARS = 128
_UNKNOWN_KEY_MESSAGE = (
    "This call needs a valid API key: send `authorization: Bearer <key>` "
    "(hashcheck --api-key, or HASHCHECK_API_KEY)."
)
_DISABLED_MESSAGE = "This API key's access is suspended; contact the hotline."
_SECONDS_PER_DAY = 86400.0
_REQUEST_ID_PREFIX = os.urandom(8).hex()
_request_numbers = itertools.count(1)


@dataclass(frozen=True)
class AccessConfig:
    """Transport security, the no-tenant opt-out, and the audit's settings."""

    tls: ServerTLS | None = None
    #: Serve without tenants on an address beyond loopback (logged loudly).
    insecure_no_auth: bool = False
    #: Where the audit environment lives; None: DATA/audit.
    audit_dir: Path | None = None
    #: Audit entries older than this are pruned; None keeps them forever.
    audit_retention_days: float | None = 365.0


class TenantDirectory:
    """The current TenantSnapshot, re-read when the tenants' version changes."""

    def __init__(
        self,
        version: Callable[[], object],
        load: Callable[[], TenantSnapshot],
    ) -> None:
        self._version = version
        self._load = load
        self._seen = version()
        self.snapshot = load()
        #: May calls go without a key while there is no tenant? Only on
        #: loopback or with --insecure-no-auth (see AccessControl.start).
        self.is_open_allowed = True
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None

    @classmethod
    def of_environment(cls, environment: layout.Environment) -> TenantDirectory:
        return cls(
            lambda: read_version(environment),
            lambda: TenantSnapshot.load(environment),
        )

    @classmethod
    def of_follower(cls, follower: SnapshotFollower) -> TenantDirectory:
        """Tenants of the snapshot a follower serves (hashcheck_server.follow).

        Read through the follower's open environment, under a lease so that
        it stays open; before the first snapshot is served, straight from
        the snapshot that ``current`` names.
        """

        def load() -> TenantSnapshot:
            with contextlib.suppress(NotReady), follower.lease():
                environment = follower.served_environment
                if environment is not None:
                    return TenantSnapshot.load(environment)
            snapshot = current_snapshot(follower.root)
            if snapshot is None:
                return TenantSnapshot(0, b"", ())
            return TenantSnapshot.load_snapshot_directory(snapshot)

        return cls(lambda: (follower.snapshot, current_snapshot(follower.root)), load)

    def refresh(self) -> None:
        """Re-read the tenants if their version moved since the last look."""
        version = self._version()
        if version == self._seen:
            return
        snapshot = self._load()
        self._seen, self.snapshot = version, snapshot
        logger.info("tenants changed: %d tenants", len(snapshot.tenants))

    def start_watching(self, interval_seconds: float) -> None:
        self._watcher = threading.Thread(
            target=self._watch,
            args=(interval_seconds,),
            name="tenant-watcher",
            daemon=True,
        )
        self._watcher.start()

    def stop(self) -> None:
        self._stop.set()
        if self._watcher is not None:
            self._watcher.join()

    def _watch(self, interval_seconds: float) -> None:
        while not self._stop.wait(interval_seconds):
            try:
                self.refresh()
            except Exception:
                # The tenants in force stay in force: a store that cannot be
                # read now is no reason to open the door or close it.
                logger.exception("cannot re-read the tenants; keeping the last ones")


class AccessInterceptor(_ServerInterceptor):
    """Admits HashCheck calls by key; see the module docstring for the order."""

    def __init__(
        self,
        directory: TenantDirectory,
        metrics: ServerMetrics,
        open_streams: OpenStreams,
    ) -> None:
        self._directory = directory
        self._metrics = metrics
        self._refusals = RefusalRecorder(metrics)
        self._buckets = TokenBuckets()
        #: Each tenant's open streams, and all of this process's.
        self.streams = StreamSlots()
        self.open_streams = open_streams

    def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], grpc.RpcMethodHandler[Any, Any] | None
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = continuation(handler_call_details)
        method_path: str = handler_call_details.method
        if handler is None:
            return None
        if not method_path.startswith(_GUARDED_PREFIX):
            if handler.stream_stream is not None:
                return self._cap_stream(method_path.rsplit("/", 1)[-1], handler)
            return handler
        method = method_path.removeprefix(_GUARDED_PREFIX)
        if handler.unary_unary is not None:
            return self._guard_unary(method, handler)
        if handler.stream_stream is not None:
            return self._guard_stream(method, handler)
        return handler

    def admit(self, method: str, context: grpc.ServicerContext) -> Caller:
        """The caller of this call, or abort it with the refusal's status."""
        try:
            return self._identify(context)
        except AccessRefused as error:
            self._refuse(method, context, error)

    def _identify(self, context: grpc.ServicerContext) -> Caller:
        metadata = _metadata(context)
        request_id = _request_id(metadata.get(_REQUEST_ID_KEY))
        peer = context.peer()
        snapshot = self._directory.snapshot
        if not snapshot.requires_keys and self._directory.is_open_allowed:
            return Caller(None, request_id, peer)

        key = _bearer_key(metadata.get("authorization"))
        # Reading the TLS peer's names costs more than the key check: only
        # when a certificate could matter.
        names = (
            _certificate_names(context)
            if key is None or snapshot.binds_certificates
            else ()
        )
        tenant = snapshot.authenticate(key, names, time.time())
        if tenant is None:
            raise Unauthenticated(_UNKNOWN_KEY_MESSAGE)
        if tenant.disabled:
            raise Forbidden(_DISABLED_MESSAGE)
        return Caller(tenant, request_id, peer, self._buckets.bucket_for(tenant))

    def _refuse(
        self, method: str, context: grpc.ServicerContext, error: HashCheckError
    ) -> NoReturn:
        status = status_for(error)
        self._metrics.requests.labels(method, status.code.name).inc()
        self._refusals.record(method, status.code, status.message)
        abort_with(context, status)

    def _guard_unary(
        self, method: str, handler: grpc.RpcMethodHandler[Any, Any]
    ) -> grpc.RpcMethodHandler[Any, Any]:
        behavior = handler.unary_unary
        decode = handler.request_deserializer
        assert behavior is not None

        def guarded(raw: bytes, context: grpc.ServicerContext) -> Any:
            caller = self.admit(method, context)
            try:
                request = _decode(decode, raw)
            except BadRequest as error:
                self._refuse(method, context, error)
            return context_for(caller).run(behavior, request, context)

        return grpc.unary_unary_rpc_method_handler(
            guarded, response_serializer=handler.response_serializer
        )

    def _guard_stream(
        self, method: str, handler: grpc.RpcMethodHandler[Any, Any]
    ) -> grpc.RpcMethodHandler[Any, Any]:
        behavior = handler.stream_stream
        decode = handler.request_deserializer
        assert behavior is not None

        def guarded(
            raw_requests: Iterable[bytes], context: grpc.ServicerContext
        ) -> Iterator[Any]:
            caller = self.admit(method, context)
            with contextlib.ExitStack() as slots:
                self._hold_stream_slots(method, context, caller, slots)
                yield from _run_stream(caller, behavior, raw_requests, decode, context)

        return grpc.stream_stream_rpc_method_handler(
            guarded, response_serializer=handler.response_serializer
        )

    def _cap_stream(
        self, method: str, handler: grpc.RpcMethodHandler[Any, Any]
    ) -> grpc.RpcMethodHandler[Any, Any]:
        """A stream of another service (reflection), held to the process's slots."""
        behavior = handler.stream_stream
        assert behavior is not None

        def capped(
            requests: Iterator[Any], context: grpc.ServicerContext
        ) -> Iterator[Any]:
            with contextlib.ExitStack() as slots:
                self._hold_stream_slots(method, context, None, slots)
                yield from behavior(requests, context)

        return grpc.stream_stream_rpc_method_handler(
            capped,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )

    def _hold_stream_slots(
        self,
        method: str,
        context: grpc.ServicerContext,
        caller: Caller | None,
        slots: contextlib.ExitStack,
    ) -> None:
        """Take the tenant's stream slot and the process's, or refuse the call.

        The tenant's first, so that a tenant over its own limit is told so;
        `slots` gives back whatever was taken when the stream ends.
        """
        tenant = caller.tenant if caller is not None else None
        try:
            if tenant is not None:
                slots.enter_context(self.streams.slot(tenant))
            slots.enter_context(self.open_streams.slot())
        except OverLimit as error:
            self._refuse(method, context, error)


class AccessControl:
    """Everything a server needs for access: tenants, interceptor, TLS, audit."""

    def __init__(
        self,
        config: AccessConfig,
        directory: TenantDirectory,
        audit: AuditLog,
        metrics: ServerMetrics,
        open_streams: OpenStreams,
    ) -> None:
        self.config = config
        self.directory = directory
        self.audit = audit
        self.interceptor = AccessInterceptor(directory, metrics, open_streams)
        self._pruner: AuditPruner | None = None

    @classmethod
    def start(
        cls,
        config: AccessConfig,
        *,
        data: Path,
        listen: str,
        environment: layout.Environment | None,
        keeper: GenerationKeeper,
        metrics: ServerMetrics,
        reload_interval_seconds: float,
        max_open_streams: int,
    ) -> AccessControl:
        """Read the tenants, refuse an unsafe address, open the audit, start polls.

        A follower may start before its first snapshot arrives, so it is not
        refused for having no tenants yet; instead, beyond loopback and
        without `--insecure-no-auth`, it demands keys even while it has none.
        """
        is_open_allowed = is_loopback(listen) or config.insecure_no_auth
        if environment is None and isinstance(keeper, SnapshotFollower):
            directory = TenantDirectory.of_follower(keeper)
        else:
            assert environment is not None, "only followers have no environment"
            directory = TenantDirectory.of_environment(environment)
            check_listen_is_safe(
                listen, bool(directory.snapshot.tenants), config.insecure_no_auth
            )
        directory.is_open_allowed = is_open_allowed
        if (
            directory.snapshot.tenants
            and config.tls is None
            and not is_loopback(listen)
        ):
            logger.warning(
                "API keys travel in plaintext to %s: serve with --tls-cert and "
                "--tls-key unless a proxy in front terminates TLS",
                listen,
            )
        audit = AuditLog.open(
            config.audit_dir or data / "audit", backlog=metrics.audit_backlog
        )
        access = cls(config, directory, audit, metrics, OpenStreams(max_open_streams))
        logger.info(
            "access: %d tenants (%s), transport %s, audit in %s, at most %d "
            "streams open",
            len(directory.snapshot.tenants),
            "keys required" if directory.snapshot.requires_keys else "open",
            _transport_name(config.tls),
            audit.path,
            max_open_streams,
        )
        directory.start_watching(reload_interval_seconds)
        if config.audit_retention_days:
            retention_seconds = config.audit_retention_days * _SECONDS_PER_DAY
            access._pruner = AuditPruner(audit, retention_seconds)
            access._pruner.start()
        return access

    def bind(self, server: grpc.Server, listen: str) -> int:
        """Add the listening port, with TLS when configured."""
        return bind(server, listen, self.config.tls)

    def close(self) -> None:
        self.directory.stop()
        if self._pruner is not None:
            self._pruner.stop()
        self.audit.close()


def access_config(
    *,
    tls_cert: Path | None,
    tls_key: Path | None,
    client_ca: Path | None,
    insecure_no_auth: bool,
    audit: Path | None,
    audit_retention_days: float | None,
) -> AccessConfig:
    """The AccessConfig that `serve`'s settings describe, checked for sense."""
    if (tls_cert is None) != (tls_key is None):
        raise HashCheckError(
            "--tls-cert and --tls-key go together: give the certificate and its "
            "private key, or neither."
        )
    if client_ca is not None and tls_cert is None:
        raise HashCheckError(
            "--client-ca needs --tls-cert and --tls-key: mutual TLS is TLS first."
        )
    tls = None
    if tls_cert is not None and tls_key is not None:
        tls = ServerTLS(tls_cert, tls_key, client_ca)
    return AccessConfig(
        tls=tls,
        insecure_no_auth=insecure_no_auth,
        audit_dir=audit,
        audit_retention_days=audit_retention_days or None,
    )


def check_start(data: Path, follow: bool, listen: str, config: AccessConfig) -> None:
    """What `start` would refuse, checked once before workers are spawned."""
    if not follow:
        environment = layout.Environment(data, readonly=True)
        try:
            directory = TenantDirectory.of_environment(environment)
        finally:
            environment.close()
        has_tenants = bool(directory.snapshot.tenants)
        check_listen_is_safe(listen, has_tenants, config.insecure_no_auth)
    if config.tls is not None:
        config.tls.credentials()


def check_listen_is_safe(
    listen: str, has_tenants: bool, insecure_no_auth: bool
) -> None:
    """Refuse to serve without keys beyond loopback, unless explicitly told to."""
    if has_tenants or is_loopback(listen):
        return
    if not insecure_no_auth:
        raise UnsafeListen(
            f"No tenant is configured, so anyone who reaches {listen} could "
            "check hashes without a key. Add one first (hashcheck-server tenant "
            "add --data DIR NAME), listen on 127.0.0.1, or pass "
            "--insecure-no-auth if a proxy in front authenticates callers."
        )
    logger.warning(
        "INSECURE: serving %s WITHOUT AUTHENTICATION (--insecure-no-auth): anyone "
        "who reaches this address can check hashes until a tenant is added",
        listen,
    )


def _transport_name(tls: ServerTLS | None) -> str:
    if tls is None:
        return "plaintext"
    return "mutual TLS" if tls.is_mutual else "TLS"


def _run_stream(
    caller: Caller,
    behavior: Callable[[Iterator[Any], grpc.ServicerContext], Iterator[Any]],
    raw_requests: Iterable[bytes],
    decode: Callable[[bytes], Message] | None,
    context: grpc.ServicerContext,
) -> Iterator[Any]:
    """Run a streaming behaviour step by step inside the caller's context."""
    requests = (_decode(decode, raw) for raw in raw_requests)
    caller_context = context_for(caller)
    replies = caller_context.run(behavior, requests, context)
    try:
        while True:
            try:
                reply = caller_context.run(next, replies)
            except StopIteration:
                return
            yield reply
    finally:
        close = getattr(replies, "close", None)
        if close is not None:
            caller_context.run(close)


def _decode(decode: Callable[[bytes], Message] | None, raw: bytes) -> Any:
    if decode is None:
        return raw
    try:
        return decode(raw)
    except DecodeError:
        raise BadRequest(
            "The request is not a hashcheck.v1 message; use the HashCheck SDK or "
            "the generated stubs."
        ) from None


def _metadata(context: grpc.ServicerContext) -> dict[str, str]:
    found: dict[str, str] = {}
    for key, value in context.invocation_metadata():
        if isinstance(value, str) and key not in found:
            found[key] = value
    return found


def _bearer_key(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, key = authorization.partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        return ""
    return key.strip()


def _request_id(given: str | None) -> str:
    """The caller's x-request-id if it is sane, else a fresh one."""
    if (
        given
        and len(given) <= _MAX_REQUEST_ID_CHARS
        and all(0x20 < ord(char) < 0x7F for char in given)
    ):
        return given
    # A process-unique prefix and a counter: unique without a system call
    # (os.urandom per call gives up the GIL, which costs more than the rest).
    return f"{_REQUEST_ID_PREFIX}-{next(_request_numbers)}"


def _certificate_names(context: grpc.ServicerContext) -> tuple[str, ...]:
    """The verified client certificate's common and DNS names, over mutual TLS."""
    properties = context.auth_context()
    names = [
        *properties.get("x509_common_name", ()),
        *properties.get("x509_subject_alternative_name", ()),
    ]
    return tuple(name.decode("utf-8", "replace") for name in names)
