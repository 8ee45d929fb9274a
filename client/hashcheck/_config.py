"""Where the client connects, how it authenticates, and how its channel behaves.

The channel's service config carries two policies, so that gRPC itself
applies them to every call:

- round_robin load balancing, which spreads calls over every address a
  `dns:///host:port` target resolves to;
- a retry policy for Check and GetInfo on UNAVAILABLE, with exponential
  backoff. Both calls only read, so repeating them is harmless. CheckStream is
  left out: gRPC cannot replay a stream once replies have arrived.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

__all__ = ["TLSOptions"]

DEFAULT_TARGET = "127.0.0.1:50051"
TARGET_ENV = "HASHCHECK_SERVER"
API_KEY_ENV = "HASHCHECK_API_KEY"

# Ten thousand hashes make a request of at most 320 KB: large enough that
# per-message costs vanish, small enough to stay far below message limits.
DEFAULT_BATCH_SIZE = 10_000
# Unanswered batches a stream may have on the way; enough to keep a link with
# tens of milliseconds of latency busy without queueing much in memory.
DEFAULT_MAX_IN_FLIGHT = 8
# For the unary calls; a stream runs as long as its input lasts.
DEFAULT_TIMEOUT_SECONDS = 30.0

_SERVICE = "hashcheck.v1.HashCheck"

# Replies of an all-hit batch of 100,000 hashes stay well under this.
_MAX_RECEIVE_BYTES = 64 * 1024 * 1024

_SERVICE_CONFIG = {
    "loadBalancingConfig": [{"round_robin": {}}],
    "methodConfig": [
        {
            "name": [
                {"service": _SERVICE, "method": "Check"},
                {"service": _SERVICE, "method": "GetInfo"},
            ],
            "retryPolicy": {
                "maxAttempts": 4,
                "initialBackoff": "0.1s",
                "maxBackoff": "2s",
                "backoffMultiplier": 2,
                "retryableStatusCodes": ["UNAVAILABLE"],
            },
        }
    ],
}


@dataclass(frozen=True, slots=True)
class TLSOptions:
    """TLS for the channel, optionally with a client certificate (mTLS).

        tls = TLSOptions.from_files(ca_file="ca.pem")
        client = Client("hashcheck.example:443", tls=tls)

    Without `root_certificates` the system's roots are used. A client
    certificate needs its private key and the other way round, both PEM.
    `server_name` overrides the name checked against the server's certificate.
    """

    root_certificates: bytes | None = None
    certificate_chain: bytes | None = None
    private_key: bytes | None = None
    server_name: str | None = None

    def __post_init__(self) -> None:
        if (self.certificate_chain is None) != (self.private_key is None):
            raise ValueError(
                "A client certificate needs its private key, and the other way "
                "round; pass both certificate_chain and private_key, or neither."
            )

    @classmethod
    def from_files(
        cls,
        *,
        ca_file: str | os.PathLike[str] | None = None,
        cert_file: str | os.PathLike[str] | None = None,
        key_file: str | os.PathLike[str] | None = None,
        server_name: str | None = None,
    ) -> TLSOptions:
        """Options read from PEM files; any file may be left out."""
        return cls(
            root_certificates=_read_optional(ca_file),
            certificate_chain=_read_optional(cert_file),
            private_key=_read_optional(key_file),
            server_name=server_name,
        )

    def credentials(self) -> grpc.ChannelCredentials:
        """The gRPC channel credentials these options describe."""
        return grpc.ssl_channel_credentials(
            root_certificates=self.root_certificates,
            private_key=self.private_key,
            certificate_chain=self.certificate_chain,
        )


def resolve_target(target: str | None) -> str:
    """The target given, else $HASHCHECK_SERVER, else the local default."""
    chosen = target if target is not None else os.environ.get(TARGET_ENV, "")
    chosen = chosen.strip() or DEFAULT_TARGET
    return chosen


def resolve_api_key(api_key: str | None) -> str | None:
    """The key given, else $HASHCHECK_API_KEY; None when neither is set."""
    chosen = api_key if api_key is not None else os.environ.get(API_KEY_ENV, "")
    chosen = chosen.strip()
    if any(not 0x20 < ord(char) < 0x7F for char in chosen):
        raise ValueError(
            "The API key holds spaces or characters outside printable ASCII; "
            "copy it again without them."
        )
    return chosen or None


def call_metadata(api_key: str | None) -> tuple[tuple[str, str], ...]:
    """The metadata sent with every call: the bearer key, when there is one."""
    if api_key is None:
        return ()
    return (("authorization", f"Bearer {api_key}"),)


def require_max_in_flight(max_in_flight: int) -> None:
    """ValueError unless a stream may have at least one batch unanswered."""
    if max_in_flight < 1:
        raise ValueError(f"max_in_flight must be at least 1, not {max_in_flight}.")


def channel_options(tls: TLSOptions | None) -> Sequence[tuple[str, Any]]:
    """The channel arguments: service config, retries, message size, TLS name."""
    options: list[tuple[str, Any]] = [
        ("grpc.service_config", json.dumps(_SERVICE_CONFIG)),
        ("grpc.enable_retries", 1),
        ("grpc.max_receive_message_length", _MAX_RECEIVE_BYTES),
    ]
    if tls is not None and tls.server_name is not None:
        options.append(("grpc.ssl_target_name_override", tls.server_name))
    return options


def _read_optional(path: str | os.PathLike[str] | None) -> bytes | None:
    return None if path is None else Path(path).read_bytes()
