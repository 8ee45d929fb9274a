"""Throw-away X.509 certificates for TLS tests, made at run time.

A test CA signs a server certificate for localhost/127.0.0.1 and client
certificates with a chosen common name. Keys are P-256, valid for one day,
written as PEM files; nothing here is ever used outside a test.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class Issued:
    """A certificate and its private key, as PEM files."""

    cert: Path
    key: Path


@dataclass(frozen=True)
class CertificateAuthority:
    """A CA that issues certificates into one directory."""

    directory: Path
    cert: Path
    _key: ec.EllipticCurvePrivateKey
    _certificate: x509.Certificate

    @classmethod
    def create(
        cls, directory: Path, name: str = "HashCheck test CA"
    ) -> CertificateAuthority:
        key = ec.generate_private_key(ec.SECP256R1())
        subject = _name(name)
        certificate = (
            _builder(subject, subject, key.public_key())
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), True)
            .sign(key, hashes.SHA256())
        )
        path = directory / f"{_slug(name)}.pem"
        path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
        return cls(directory, path, key, certificate)

    def issue_server(self, name: str = "localhost") -> Issued:
        alternatives = x509.SubjectAlternativeName(
            [
                x509.DNSName("localhost"),
                x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
            ]
        )
        return self._issue(name, ExtendedKeyUsageOID.SERVER_AUTH, alternatives)

    def issue_client(self, name: str) -> Issued:
        alternatives = x509.SubjectAlternativeName([x509.DNSName(name)])
        return self._issue(name, ExtendedKeyUsageOID.CLIENT_AUTH, alternatives)

    def _issue(
        self,
        name: str,
        usage: x509.ObjectIdentifier,
        alternatives: x509.SubjectAlternativeName,
    ) -> Issued:
        key = ec.generate_private_key(ec.SECP256R1())
        certificate = (
            _builder(_name(name), self._certificate.subject, key.public_key())
            .add_extension(alternatives, False)
            .add_extension(x509.ExtendedKeyUsage([usage]), False)
            .sign(self._key, hashes.SHA256())
        )
        stem = f"{_slug(name)}-{usage.dotted_string.rsplit('.', 1)[-1]}"
        issued = Issued(
            self.directory / f"{stem}.pem", self.directory / f"{stem}-key.pem"
        )
        issued.cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
        issued.key.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        return issued


def _builder(
    subject: x509.Name, issuer: x509.Name, public_key: ec.EllipticCurvePublicKey
) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
    )


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name.lower())
