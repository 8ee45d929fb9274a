"""Building and running one server process: gRPC, health, reflection, metrics.

Lifecycle of `serve`:

1. open the data directory and map the committed generation (a clear error
   and exit if the directory is not a HashCheck store);
2. start the gRPC server with health NOT_SERVING, then flip it to SERVING
   once a generation is mapped (a follower may wait for its first snapshot);
3. watch for new generations and switch to them while serving;
4. on SIGTERM or SIGINT: health NOT_SERVING, keep answering for the drain
   delay (so that load balancers move away), refuse new calls, let the calls
   in flight finish within the grace period, then close the store and exit.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from wsgiref.simple_server import WSGIServer

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import CollectorRegistry, start_http_server

from hashcheck.v1 import hashcheck_pb2, hashcheck_pb2_grpc
from hashcheck_server import layout
from hashcheck_server.access import AccessConfig, AccessControl
from hashcheck_server.disputes import DisputeDesk
from hashcheck_server.errors import CannotListen, NotReady
from hashcheck_server.floods import QuarantineGuard, QuarantineMetrics, QuarantinePolicy
from hashcheck_server.follow import SnapshotFollower
from hashcheck_server.generation import Generation
from hashcheck_server.limits import open_stream_limit
from hashcheck_server.metrics import ServerMetrics
from hashcheck_server.servicer import SERVED_ALGORITHMS, CheckPolicy, HashCheckServicer
from hashcheck_server.serving import GenerationKeeper
from hashcheck_server.signing import server_signing_key

__all__ = ["RunningServer", "ServerConfig", "start_server"]

logger = logging.getLogger(__name__)

_SERVICE_NAME = hashcheck_pb2.DESCRIPTOR.services_by_name["HashCheck"].full_name
#: A health "service" that is SERVING as long as the process answers at all,
#: for liveness probes: readiness ("" or hashcheck.v1.HashCheck) is
#: NOT_SERVING while a replica waits for its first snapshot, which is no
#: reason to restart it.
LIVENESS_SERVICE = "liveness"

#: Room for the protobuf framing around the largest batch.
_MESSAGE_OVERHEAD_BYTES = 64 * 1024


@dataclass(frozen=True)
class ServerConfig:
    """How one server process runs."""

    data: Path
    listen: str = "127.0.0.1:50051"
    metrics_port: int | None = None
    #: The metrics endpoint's host, apart from `listen`'s: its samples name
    #: tenants, lists and table sizes, which GetInfo shows only to operators.
    metrics_listen: str = "127.0.0.1"
    threads: int = 16
    #: Streams open at once in this process, for every caller together; None:
    #: the threads less a reserve for unary calls and health
    #: (hashcheck_server.limits.open_stream_limit).
    max_open_streams: int | None = None
    reload_interval_seconds: float = 1.0
    grace_seconds: float = 10.0
    #: Let other processes bind the same port (the workers of one machine).
    #: Off for a single process, so that a port already taken is an error.
    reuse_port: bool = False
    policy: CheckPolicy = field(default_factory=CheckPolicy)
    #: `data` is a snapshot root to follow (hashcheck_server.follow), not a store.
    follow: bool = False
    #: On SIGTERM, report NOT_SERVING this long before refusing calls, so that
    #: load balancers and readiness probes move traffic away first.
    drain_delay_seconds: float = 0.0
    #: Tenants' keys, TLS and the audit (hashcheck_server.access).
    access: AccessConfig = field(default_factory=AccessConfig)
    #: The receipt signing key; None: `data`/signing-key.pem if it exists
    #: (hashcheck_server.signing). Without a key, receipts are refused.
    signing_key_file: Path | None = None
    #: When a hash that floods is put on hold (hashcheck_server.floods).
    quarantine: QuarantinePolicy = field(default_factory=QuarantinePolicy)


class RunningServer:
    """A started server: its port, and how to stop it."""

    def __init__(
        self,
        server: grpc.Server,
        port: int,
        keeper: GenerationKeeper,
        environment: layout.Environment | None,
        health_servicer: health.HealthServicer,
        registry: CollectorRegistry,
        drain_delay_seconds: float = 0.0,
        access: AccessControl | None = None,
        quarantine: QuarantineGuard | None = None,
        metrics_endpoint: WSGIServer | None = None,
    ) -> None:
        self.port = port
        self.registry = registry
        #: Tenants, interceptor and audit; closed after the calls have drained.
        self.access = access
        #: The open data directory. LMDB allows one environment per path and
        #: process, so code in the same process must change lists through it.
        #: None for a follower, whose keeper opens each snapshot itself.
        self.environment = environment
        self._drain_delay_seconds = drain_delay_seconds
        self._server = server
        self._keeper = keeper
        self._environment = environment
        self._health = health_servicer
        self._quarantine = quarantine
        self._metrics_endpoint = metrics_endpoint
        # Held for a whole drain: signals often come in twos (a terminal's
        # Ctrl-C reaches every process of its group, then a wrapper script
        # adds SIGTERM), each starts a drain, and only the first may close
        # the store; the others wait for it and return.
        self._stopping = threading.Lock()
        self._stopped = threading.Event()

    def stop(self, grace_seconds: float | None = 10.0) -> None:
        """Drain: refuse new calls, finish those in flight, then close the store.

        Safe to call again and from several threads: later calls wait for the
        first drain to finish and do nothing more.
        """
        with self._stopping:
            if self._stopped.is_set():
                return
            self._drain(grace_seconds)
            self._stopped.set()

    def _drain(self, grace_seconds: float | None) -> None:
        logger.info(
            "draining: refusing new calls, %s s for calls in flight", grace_seconds
        )
        self._health.enter_graceful_shutdown()
        time.sleep(self._drain_delay_seconds)
        self._server.stop(grace_seconds).wait()
        if self._quarantine is not None:
            self._quarantine.stop()
        self._keeper.stop()
        if self.access is not None:
            self.access.close()
        if self._environment is not None:
            self._environment.close()
        if self._metrics_endpoint is not None:
            self._metrics_endpoint.shutdown()
            self._metrics_endpoint.server_close()
        logger.info("stopped")


#: How often the main thread of a waiting server looks for signals.
_SIGNAL_POLL_SECONDS = 0.2


def start_server(
    config: ServerConfig, registry: CollectorRegistry | None = None
) -> RunningServer:
    """Open the store, map its generation and start answering on config.listen."""
    registry = registry or CollectorRegistry()
    # First, so that a bad key file fails before anything is opened.
    signing_key = server_signing_key(config.data, config.signing_key_file)
    metrics = ServerMetrics(registry)
    health_servicer = health.HealthServicer(experimental_non_blocking=True)
    _set_health(health_servicer, health_pb2.HealthCheckResponse.NOT_SERVING)
    health_servicer.set(LIVENESS_SERVICE, health_pb2.HealthCheckResponse.SERVING)
    quarantine_metrics = QuarantineMetrics(registry)
    environment, keeper = _open_keeper(
        config,
        lambda g: _record_switch(metrics, health_servicer, g, quarantine_metrics),
    )
    access = _start_access(config, environment, keeper, metrics)
    quarantine = _quarantine_guard(config, environment, quarantine_metrics)

    server = _grpc_server(config, access)
    hashcheck_pb2_grpc.add_HashCheckServicer_to_server(
        HashCheckServicer(
            keeper,
            metrics,
            config.policy,
            access.audit,
            signing_key=signing_key,
            quarantine=quarantine,
            disputes=DisputeDesk(environment, access.audit, signing_key),
        ),
        server,
    )
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (_SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )

    port = _bind(access, server, config.listen)
    # Both addresses are taken before anything serves, so that a taken one
    # ends the start with one clear message and nothing left running.
    metrics_endpoint = _start_metrics_endpoint(config, registry)
    if quarantine is not None:
        quarantine.start()
    server.start()

    _map_first_generation(config, keeper)
    keeper.start_watching(config.reload_interval_seconds)
    logger.info(
        "listening on %s (port %d), data %s, metrics %s",
        config.listen,
        port,
        config.data,
        _metrics_address(config) or "off",
    )
    return RunningServer(
        server,
        port,
        keeper,
        environment,
        health_servicer,
        registry,
        config.drain_delay_seconds,
        access,
        quarantine,
        metrics_endpoint,
    )


def _metrics_address(config: ServerConfig) -> str | None:
    """HOST:PORT of the metrics endpoint, None when it is off."""
    if config.metrics_port is None:
        return None
    host = config.metrics_listen
    shown = f"[{host}]" if ":" in host else host
    return f"{shown}:{config.metrics_port}"


def _bind(access: AccessControl, server: grpc.Server, listen: str) -> int:
    """The port the gRPC server listens on; CannotListen if it cannot."""
    try:
        return access.bind(server, listen)
    except RuntimeError as error:
        # grpcio (1.85, as pinned) raises this for an address it cannot bind.
        raise CannotListen(
            f"Cannot listen on {listen}: the address is taken or invalid. "
            "Choose another --listen, or stop what holds it."
        ) from error


def _start_metrics_endpoint(
    config: ServerConfig, registry: CollectorRegistry
) -> WSGIServer | None:
    """Serve the metrics on their own host, not on the gRPC listener's."""
    if config.metrics_port is None:
        return None
    try:
        endpoint, _ = start_http_server(
            config.metrics_port, addr=config.metrics_listen, registry=registry
        )
    except OSError as error:
        raise CannotListen(
            f"Cannot serve metrics on {_metrics_address(config)}: "
            f"{error.strerror or error}. Choose another --metrics-port."
        ) from error
    return endpoint


def serve_until_signalled(config: ServerConfig) -> None:
    """Run a server in the foreground until SIGTERM or SIGINT, then drain."""
    stop_requested = threading.Event()

    def request_stop(signum: int, _: FrameType | None) -> None:
        logger.info("received %s", signal.Signals(signum).name)
        stop_requested.set()

    # Installed before the server starts: a supervisor may send SIGTERM the
    # moment it sees the port open or the "listening" line, and a signal
    # that came before its handler would kill the server without a drain.
    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    running = start_server(config)

    # Timed waits: a signal's Python handler runs only in the main thread,
    # once it runs Python code. When the kernel hands SIGTERM to one of
    # gRPC's threads instead, an untimed wait would never wake for it, and
    # the server would ignore the signal for good.
    while not stop_requested.wait(_SIGNAL_POLL_SECONDS):
        pass
    running.stop(config.grace_seconds)


def _start_access(
    config: ServerConfig,
    environment: layout.Environment | None,
    keeper: GenerationKeeper,
    metrics: ServerMetrics,
) -> AccessControl:
    """Tenants, audit and TLS; the store is closed again if they cannot start."""
    try:
        return AccessControl.start(
            config.access,
            data=config.data,
            listen=config.listen,
            environment=environment,
            keeper=keeper,
            metrics=metrics,
            reload_interval_seconds=config.reload_interval_seconds,
            max_open_streams=open_stream_limit(config.threads, config.max_open_streams),
        )
    except BaseException:
        if environment is not None:
            environment.close()
        raise


def _grpc_server(config: ServerConfig, access: AccessControl) -> grpc.Server:
    largest_message = (
        config.policy.max_batch_hashes * max(a.width for a in SERVED_ALGORITHMS)
        + _MESSAGE_OVERHEAD_BYTES
    )
    options = [
        ("grpc.max_receive_message_length", largest_message),
        ("grpc.max_send_message_length", largest_message),
        ("grpc.so_reuseport", int(config.reuse_port)),
    ]
    return grpc.server(
        ThreadPoolExecutor(max_workers=config.threads, thread_name_prefix="grpc"),
        interceptors=[access.interceptor],
        options=options,
    )


def _set_health(servicer: health.HealthServicer, status: int) -> None:
    servicer.set("", status)
    servicer.set(_SERVICE_NAME, status)


def _open_keeper(
    config: ServerConfig, on_switch: Callable[[Generation], None]
) -> tuple[layout.Environment | None, GenerationKeeper]:
    """The data directory's keeper, or a follower of the snapshot root."""
    if config.follow:
        return None, SnapshotFollower(config.data, on_switch=on_switch)
    environment = layout.Environment(config.data)
    return environment, GenerationKeeper(environment, on_switch=on_switch)


def _map_first_generation(config: ServerConfig, keeper: GenerationKeeper) -> None:
    try:
        keeper.load_current()
    except NotReady:
        if not config.follow:
            raise
        # A replica whose first snapshot has not arrived: it stays NOT_SERVING
        # and its watcher maps the snapshot as soon as `current` names one.
        logger.info("waiting for a snapshot in %s", config.data)


def _quarantine_guard(
    config: ServerConfig,
    environment: layout.Environment | None,
    metrics: QuarantineMetrics,
) -> QuarantineGuard | None:
    """The flood counter, unless turned off; a replica holds no hashes itself."""
    policy = config.quarantine
    if environment is None:
        logger.info(
            "flood quarantine: not counted on a replica; holds arrive with the "
            "primary's snapshots"
        )
        return None
    if not policy.is_enabled:
        logger.info("flood quarantine off")
        return None
    logger.info(
        "flood quarantine: a hash that hits for %d tenants within %g s is held "
        "(counted per server process)",
        policy.tenants,
        policy.window_seconds,
    )
    return QuarantineGuard(environment, policy, metrics)


def _record_switch(
    metrics: ServerMetrics,
    health_servicer: health.HealthServicer,
    generation: Generation,
    quarantine_metrics: QuarantineMetrics,
) -> None:
    metrics.record_switch(generation)
    quarantine_metrics.record_switch(generation)
    # Ignored once draining: the health servicer keeps NOT_SERVING then.
    _set_health(health_servicer, health_pb2.HealthCheckResponse.SERVING)
