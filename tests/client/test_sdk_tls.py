"""TLS and mutual TLS, against the fake behind a TLS-only server."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from hashcheck import Client, ServerUnavailable, TLSOptions
from hashcheck._cli import main

if TYPE_CHECKING:
    from conftest import FakeHashCheck, TLSFiles


def test_tls_client_certificate_is_accepted(
    tls_target: str, tls_files: TLSFiles, fake: FakeHashCheck
) -> None:
    tls = TLSOptions.from_files(
        ca_file=tls_files.cert, cert_file=tls_files.cert, key_file=tls_files.key
    )

    with Client(tls_target, tls=tls) as client:
        assert client.check(["00" * 16]).checked == 1


def test_tls_without_client_certificate_is_refused(
    tls_target: str, tls_files: TLSFiles, fake: FakeHashCheck
) -> None:
    tls = TLSOptions.from_files(ca_file=tls_files.cert)

    with Client(tls_target, tls=tls, timeout_seconds=5) as client:
        with pytest.raises(ServerUnavailable):
            client.info()


def test_tls_plaintext_client_is_refused(tls_target: str, fake: FakeHashCheck) -> None:
    with Client(tls_target, timeout_seconds=5) as client:
        with pytest.raises(ServerUnavailable):
            client.info()


def test_tls_cli_options_connect(
    tls_target: str,
    tls_files: TLSFiles,
    fake: FakeHashCheck,
    capsys: pytest.CaptureFixture[str],
) -> None:
    fake.add(b"\x11" * 20)

    status = main(
        [
            "check", "--server", tls_target, "--ca-cert", str(tls_files.cert),
            "--client-cert", str(tls_files.cert), "--client-key", str(tls_files.key),
            "11" * 20,
        ]
    )  # fmt: skip

    assert status == 1
    assert '"algorithm": "sha1"' in capsys.readouterr().out


@pytest.mark.parametrize(
    ("certificate_chain", "private_key"),
    [(b"cert", None), (None, b"key")],
    ids=["certificate-only", "key-only"],
)
def test_tls_options_need_certificate_and_key_together(
    certificate_chain: bytes | None, private_key: bytes | None
) -> None:
    with pytest.raises(ValueError, match="needs its private key"):
        TLSOptions(certificate_chain=certificate_chain, private_key=private_key)
