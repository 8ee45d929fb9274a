"""TLS and mutual TLS on the real server, with certificates made at run time."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from certificates import CertificateAuthority, Issued
from hashcheck import (
    AuthenticationError,
    Client,
    Info,
    ServerUnavailable,
    TLSOptions,
)
from hashcheck_server import layout
from hashcheck_server.access import AccessConfig
from hashcheck_server.server import RunningServer
from hashcheck_server.tenants import TenantRegistry
from hashcheck_server.transport import ServerTLS
from tenancy import ListHashes, serve

SERVER_CLI = str(Path(sys.executable).parent / "hashcheck-server")


@pytest.fixture(scope="module")
def authority(tmp_path_factory: pytest.TempPathFactory) -> CertificateAuthority:
    return CertificateAuthority.create(tmp_path_factory.mktemp("ca"))


@pytest.fixture(scope="module")
def server_cert(authority: CertificateAuthority) -> Issued:
    return authority.issue_server()


@pytest.fixture(scope="module")
def client_cert(authority: CertificateAuthority) -> Issued:
    return authority.issue_client("platform-one")


@pytest.fixture
def tls_server(
    tenant_store: Path, tenant_keys: dict[str, str], server_cert: Issued
) -> Iterator[RunningServer]:
    tls = ServerTLS(server_cert.cert, server_cert.key)
    running = serve(tenant_store, AccessConfig(tls=tls))
    yield running
    running.stop(grace_seconds=1.0)


@pytest.fixture
def mtls_server(
    tenant_store: Path,
    tenant_keys: dict[str, str],
    server_cert: Issued,
    authority: CertificateAuthority,
) -> Iterator[RunningServer]:
    tls = ServerTLS(server_cert.cert, server_cert.key, client_ca_file=authority.cert)
    running = serve(tenant_store, AccessConfig(tls=tls))
    yield running
    running.stop(grace_seconds=1.0)


def test_tls_client_with_key_gets_hits(
    tls_server: RunningServer,
    authority: CertificateAuthority,
    tenant_keys: dict[str, str],
    list_hashes: ListHashes,
) -> None:
    tls = TLSOptions.from_files(ca_file=authority.cert)

    with Client(
        f"localhost:{tls_server.port}", api_key=tenant_keys["beta"], tls=tls
    ) as client:
        result = client.check([list_hashes.hotline[0].tobytes()], algorithm="md5")

    assert [hit.list_names for hit in result.hits] == [("hotline",)]


def test_tls_server_refuses_plaintext(tls_server: RunningServer) -> None:
    with Client(f"127.0.0.1:{tls_server.port}", timeout_seconds=3) as client:
        with pytest.raises(ServerUnavailable):
            client.info()


def test_mtls_refuses_client_without_certificate(
    mtls_server: RunningServer,
    authority: CertificateAuthority,
    tenant_keys: dict[str, str],
) -> None:
    tls = TLSOptions.from_files(ca_file=authority.cert)

    with Client(
        f"localhost:{mtls_server.port}",
        api_key=tenant_keys["acme"],
        tls=tls,
        timeout_seconds=3,
    ) as client:
        with pytest.raises(ServerUnavailable):
            client.info()


def test_mtls_certificate_identifies_tenant_instead_of_key(
    mtls_server: RunningServer,
    authority: CertificateAuthority,
    client_cert: Issued,
    list_hashes: ListHashes,
) -> None:
    assert mtls_server.environment is not None and mtls_server.access is not None
    TenantRegistry(mtls_server.environment).add(
        "platform", lists=["police"], client_cert_name="platform-one"
    )
    mtls_server.access.directory.refresh()
    tls = TLSOptions.from_files(
        ca_file=authority.cert, cert_file=client_cert.cert, key_file=client_cert.key
    )

    batch = [list_hashes.police_a1[0].tobytes(), list_hashes.hotline[0].tobytes()]
    with Client(f"localhost:{mtls_server.port}", tls=tls) as client:
        result = client.check(batch, algorithm="md5")

    # No key was sent: the certificate named the tenant, whose lists apply.
    assert [hit.list_names for hit in result.hits] == [("police",)]


def test_mtls_key_bound_to_a_certificate_needs_that_certificate(
    mtls_server: RunningServer, authority: CertificateAuthority, client_cert: Issued
) -> None:
    assert mtls_server.environment is not None and mtls_server.access is not None
    _, key = TenantRegistry(mtls_server.environment).add(
        "bound", client_cert_name="someone-else"
    )
    mtls_server.access.directory.refresh()
    tls = TLSOptions.from_files(
        ca_file=authority.cert, cert_file=client_cert.cert, key_file=client_cert.key
    )

    with Client(f"localhost:{mtls_server.port}", api_key=key, tls=tls) as client:
        with pytest.raises(AuthenticationError):
            client.info()


def test_serve_cli_takes_tls_options(
    tenant_store: Path,
    tenant_keys: dict[str, str],
    server_cert: Issued,
    authority: CertificateAuthority,
    client_cert: Issued,
) -> None:
    port = _free_port()
    server = subprocess.Popen(
        [
            SERVER_CLI, "--log-format", "text", "serve", "--data", str(tenant_store),
            "--listen", f"127.0.0.1:{port}", "--tls-cert", str(server_cert.cert),
            "--tls-key", str(server_cert.key), "--client-ca", str(authority.cert),
        ],
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "HASHCHECK_CONFIG": ""},
    )  # fmt: skip
    tls = TLSOptions.from_files(
        ca_file=authority.cert, cert_file=client_cert.cert, key_file=client_cert.key
    )
    try:
        with Client(f"localhost:{port}", api_key=tenant_keys["ops"], tls=tls) as client:
            info = _when_up(client)
    finally:
        log = _stop(server)

    # The operator's key was accepted: only operators are shown counts.
    counts = {a.algorithm.value: a.hash_count for a in info.algorithms}
    assert counts["md5"] == 750
    assert "mutual TLS" in log


def test_serve_cli_without_tenants_refuses_non_loopback(tmp_path: Path) -> None:
    data = tmp_path / "data"
    layout.Environment(data, create=True).close()

    refused = subprocess.run(
        [SERVER_CLI, "serve", "--data", str(data), "--listen", "0.0.0.0:0"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "HASHCHECK_CONFIG": ""},
    )

    assert refused.returncode == 2
    assert "--insecure-no-auth" in refused.stderr


def _stop(server: subprocess.Popen[str]) -> str:
    """SIGTERM, then the log; a server that does not drain fails the test.

    It is killed first, so that a hang fails only this test, not a later
    one that would trip over the leftover process.
    """
    server.terminate()
    try:
        _, log = server.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        server.kill()
        _, log = server.communicate()
        pytest.fail(f"serve did not stop within 30 s of SIGTERM; its log:\n{log}")
    return log


def _when_up(client: Client, timeout_seconds: float = 30.0) -> Info:
    deadline = time.monotonic() + timeout_seconds
    while True:
        try:
            return client.info()
        except ServerUnavailable:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port
