"""How the server's port is bound: plaintext, TLS, or mutual TLS.

- Plaintext: for loopback, or behind a proxy that terminates TLS.
- TLS: `serve --tls-cert FILE --tls-key FILE`, PEM files. The certificate
  file may hold the whole chain, leaf first.
- Mutual TLS: add `--client-ca FILE`. Every client must then present a
  certificate signed by that CA, or the handshake fails. grpcio's Python API
  can require client certificates or not ask for them at all; it cannot ask
  and accept their absence, so a client CA always means required.

Over mutual TLS a tenant may be named by its certificate (its common name or
a DNS subject alternative name), instead of, or on top of, its API key (see
hashcheck_server.tenants). Files are read once, at start; a renewed
certificate takes effect on restart.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path

import grpc

from hashcheck_server.errors import HashCheckError

__all__ = ["ServerTLS", "bind", "is_loopback"]

_LOCAL_NAMES = ("localhost",)


@dataclass(frozen=True)
class ServerTLS:
    """The server's certificate and key, and optionally a CA for clients."""

    cert_file: Path
    key_file: Path
    client_ca_file: Path | None = None

    @property
    def is_mutual(self) -> bool:
        return self.client_ca_file is not None

    def credentials(self) -> grpc.ServerCredentials:
        client_ca = _read(self.client_ca_file) if self.client_ca_file else None
        return grpc.ssl_server_credentials(
            [(_read(self.key_file), _read(self.cert_file))],
            root_certificates=client_ca,
            require_client_auth=client_ca is not None,
        )


def bind(server: grpc.Server, listen: str, tls: ServerTLS | None) -> int:
    """Add the listening port, with TLS when configured; returns the port bound."""
    if tls is None:
        return server.add_insecure_port(listen)
    return server.add_secure_port(listen, tls.credentials())


def is_loopback(listen: str) -> bool:
    """Is HOST:PORT (or unix:PATH) reachable from this machine only?"""
    if listen.startswith(("unix:", "unix-abstract:")):
        return True
    host = listen.rsplit(":", 1)[0].strip("[]")
    if host.lower() in _LOCAL_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _read(path: Path) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as error:
        raise HashCheckError(
            f"Cannot read the TLS file {path}: {error.strerror}. Check the path "
            "and that the server may read it."
        ) from error
