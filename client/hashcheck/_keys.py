"""The hotline's public key, for checking what it signed: receipts and manifests.

A hotline signs with an Ed25519 key. Its public key travels as text, in one
of two forms, both accepted wherever a key is asked for:

- the base64 of the raw 32-byte key, 44 characters (what
  `hashcheck-server keys show` prints), or
- a PEM ``PUBLIC KEY`` block (SubjectPublicKeyInfo, as OpenSSL writes it).

A key's id is the hex SHA-256 of its raw 32 bytes. Receipts and manifests
name the key that signed them by its id, so that a hotline can rotate keys
and old receipts can still be checked against the key that signed them.

Checking a signature needs the `cryptography` package, an optional extra
(`pip install 'hashcheck[verify]'`). It is imported only when a signature is
checked, so that the SDK itself needs nothing but grpcio and protobuf.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

__all__ = ["PublicKey"]

#: Bytes of a raw Ed25519 public key.
RAW_KEY_BYTES = 32

_PEM_BEGIN = "-----BEGIN PUBLIC KEY-----"

_MISSING_CRYPTOGRAPHY = (
    "Checking receipts and manifests needs the `cryptography` package. "
    "Install it with: pip install 'hashcheck[verify]'"
)


def key_id_of(raw: bytes) -> str:
    """The id of a raw public key: the hex SHA-256 of its 32 bytes."""
    return hashlib.sha256(raw).hexdigest()


class PublicKey:
    """A hotline's Ed25519 public key, to check its receipts and manifests.

        key = PublicKey.from_text("Xb3v...=")   # base64 of the raw key, or PEM
        print(key.key_id)
        verified = hashcheck.verify_receipt(hit.receipt, key)

    Parse a key once and reuse it: `verify_receipt` also takes the text, but
    then parses it on every call.
    """

    __slots__ = ("_verifier", "key_id", "raw")

    def __init__(self, raw: bytes) -> None:
        if len(raw) != RAW_KEY_BYTES:
            raise ValueError(
                f"An Ed25519 public key is {RAW_KEY_BYTES} raw bytes, not {len(raw)}."
            )
        #: The raw 32-byte key.
        self.raw = bytes(raw)
        #: The hex SHA-256 of `raw`, as receipts and manifests name their key.
        self.key_id = key_id_of(self.raw)
        self._verifier: Ed25519PublicKey | None = None

    @classmethod
    def from_text(cls, text: str | bytes) -> PublicKey:
        """The key written as base64 of its raw bytes, or as a PEM block."""
        if isinstance(text, bytes):
            text = text.decode("ascii", "replace")
        text = text.strip()
        if text.startswith(_PEM_BEGIN):
            return cls(_raw_from_pem(text))
        try:
            raw = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raw = b""
        if len(raw) != RAW_KEY_BYTES:
            raise ValueError(
                "A public key is the base64 of its raw 32 bytes (44 characters) "
                "or a PEM 'PUBLIC KEY' block, as `hashcheck-server keys show` "
                "prints it; this is neither."
            )
        return cls(raw)

    @property
    def base64(self) -> str:
        """The raw key as base64: the form `hashcheck-server keys show` prints."""
        return base64.b64encode(self.raw).decode("ascii")

    def is_valid_signature(self, signature: bytes, message: bytes) -> bool:
        """Whether `signature` is this key's Ed25519 signature of `message`."""
        verifier = self._verifier
        if verifier is None:
            verifier = self._verifier = _load_verifier(self.raw)
        from cryptography.exceptions import InvalidSignature

        try:
            verifier.verify(signature, message)
        except InvalidSignature:
            return False
        return True

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PublicKey) and other.raw == self.raw

    def __hash__(self) -> int:
        return hash(self.raw)

    def __repr__(self) -> str:
        return f"PublicKey(key_id={self.key_id!r})"


def as_public_key(key: PublicKey | str | bytes) -> PublicKey:
    """A PublicKey from itself, its text, or its raw 32 bytes."""
    if isinstance(key, PublicKey):
        return key
    if isinstance(key, bytes) and len(key) == RAW_KEY_BYTES:
        return PublicKey(key)
    return PublicKey.from_text(key)


def read_public_key_argument(value: str) -> PublicKey:
    """A command line's `--public-key`: a file holding the key, or the key itself.

    A file is read when one exists at `value`; anything else is taken as the
    key's own text.
    """
    path = Path(value)
    if path.is_file():
        try:
            return PublicKey.from_text(path.read_text(encoding="ascii"))
        except (UnicodeDecodeError, ValueError) as error:
            raise ValueError(f"{value}: {error}") from None
    return PublicKey.from_text(value)


def require_cryptography() -> None:
    """ImportError, saying what to install, unless `cryptography` can be imported."""
    try:
        import cryptography  # noqa: F401
    except ModuleNotFoundError as error:
        raise ImportError(_MISSING_CRYPTOGRAPHY) from error


def _load_verifier(raw: bytes) -> Ed25519PublicKey:
    require_cryptography()
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    return Ed25519PublicKey.from_public_bytes(raw)


def _raw_from_pem(text: str) -> bytes:
    require_cryptography()
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        loaded = serialization.load_pem_public_key(text.encode("ascii"))
    except (ValueError, UnicodeEncodeError) as error:
        raise ValueError(
            f"The PEM block is not a readable public key: {error}"
        ) from None
    if not isinstance(loaded, Ed25519PublicKey):
        raise ValueError(
            f"The PEM block holds a {type(loaded).__name__}, not an Ed25519 key."
        )
    return loaded.public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
