"""The hotline's signing key: Ed25519, for hit receipts and generation manifests.

Where it lives: one file, ``signing-key.pem`` in the data directory beside
``data.mdb`` unless `serve --signing-key FILE` names another. It is a PKCS#8
PEM private key, unencrypted so that a server can start unattended, written
with mode 0600. It lives outside LMDB on purpose: snapshots
(hashcheck_server.snapshot) copy only the LMDB environments, so the key never
travels to replicas, backups of the store or anyone who receives them. A
replica that should issue receipts gets the key file by the operators' own
means, or uses a key of its own whose public key the hotline publishes too.

The public key is published as the base64 of its raw 32 bytes, and named by
its id, the hex SHA-256 of those bytes (hashcheck._keys).

Ed25519 signatures are deterministic: the same key signs the same bytes the
same way every time, so a generation's signed manifest is the same whenever
it is made. Signing costs some tens of microseconds, which is why receipts are
signed per hit only, and only when asked for.
"""

from __future__ import annotations

import logging
import os
import stat
import tempfile
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from hashcheck._keys import PublicKey
from hashcheck_server.errors import SigningKeyError

__all__ = [
    "DEFAULT_KEY_FILE",
    "SigningKey",
    "default_key_path",
    "generate_key_file",
    "load_key_file",
    "server_signing_key",
]

logger = logging.getLogger(__name__)

#: The key file's name in the data directory, unless another file is named.
DEFAULT_KEY_FILE = "signing-key.pem"

_KEY_FILE_MODE = 0o600


class SigningKey:
    """An Ed25519 private key and its public half; signs receipts and manifests."""

    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        self._private_key = private_key
        raw = private_key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        self.public_key = PublicKey(raw)
        #: The hex SHA-256 of the raw public key, as receipts name it.
        self.key_id = self.public_key.key_id

    @classmethod
    def generate(cls) -> SigningKey:
        return cls(Ed25519PrivateKey.generate())

    def sign(self, message: bytes) -> bytes:
        """The 64-byte Ed25519 signature of `message`."""
        return self._private_key.sign(message)

    def private_pem(self) -> bytes:
        """The private key as unencrypted PKCS#8 PEM."""
        return self._private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    def public_pem(self) -> str:
        """The public key as a PEM SubjectPublicKeyInfo block, for OpenSSL."""
        pem = self._private_key.public_key().public_bytes(
            serialization.Encoding.PEM,
            serialization.PublicFormat.SubjectPublicKeyInfo,
        )
        return pem.decode("ascii")

    def __repr__(self) -> str:
        return f"SigningKey(key_id={self.key_id!r})"


def default_key_path(data: Path) -> Path:
    """Where a data directory's signing key lives unless another file is named."""
    return data / DEFAULT_KEY_FILE


def generate_key_file(path: Path, *, force: bool = False) -> SigningKey:
    """Make a new key and write it to `path` (mode 0600); never overwrite unasked.

    With `force`, an existing file is replaced atomically: a reader sees the
    old key or the new one, never half a file.
    """
    if path.exists() and not force:
        raise SigningKeyError(
            f"{path} already holds a signing key. A new one would sign from now "
            "on, and the old public key must stay published for the receipts "
            "it signed. Pass --force to replace it, or --out FILE to write the "
            "new key elsewhere."
        )
    key = SigningKey.generate()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_private(path, key.private_pem(), replace=force)
    except FileExistsError:
        raise SigningKeyError(
            f"{path} appeared while the key was made; nothing was replaced."
        ) from None
    except OSError as error:
        raise SigningKeyError(
            f"Cannot write the signing key to {path}: {error.strerror}."
        ) from error
    logger.info("made signing key %s in %s", key.key_id, path)
    return key


def load_key_file(path: Path) -> SigningKey:
    """The key in `path`; SigningKeyError when it is missing or not an Ed25519 key."""
    try:
        pem = path.read_bytes()
        mode = path.stat().st_mode
    except OSError as error:
        raise SigningKeyError(
            f"Cannot read the signing key {path}: {error.strerror}. Make one with "
            "`hashcheck-server keys generate --data DIR`."
        ) from error
    try:
        private_key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as error:
        raise SigningKeyError(
            f"{path} is not an unencrypted PEM private key ({error})."
        ) from None
    if not isinstance(private_key, Ed25519PrivateKey):
        raise SigningKeyError(
            f"{path} holds a {type(private_key).__name__}; HashCheck signs with "
            "Ed25519 keys only."
        )
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        logger.warning(
            "the signing key %s can be read by other users (mode %o); chmod 600 it",
            path,
            stat.S_IMODE(mode),
        )
    return SigningKey(private_key)


def server_signing_key(data: Path, named: Path | None) -> SigningKey | None:
    """The key a server signs receipts with, or None to refuse receipts.

    A named file must exist. Without one, the data directory's
    ``signing-key.pem`` is used when it exists.
    """
    path = named if named is not None else default_key_path(data)
    if named is None and not path.exists():
        logger.info("no signing key in %s: receipts are refused", data)
        return None
    key = load_key_file(path)
    logger.info("signing receipts with key %s from %s", key.key_id, path)
    return key


def _write_private(path: Path, content: bytes, *, replace: bool) -> None:
    """Write `content` readable by its owner alone, then move it into place.

    Without `replace`, the file is linked into place, which fails rather than
    overwrite a file that another command made meanwhile.
    """
    descriptor, temporary = tempfile.mkstemp(
        dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"
    )
    try:
        # mkstemp makes the file 0600 already; fchmod states it, whatever umask.
        os.fchmod(descriptor, _KEY_FILE_MODE)
        with os.fdopen(descriptor, "wb") as file:
            file.write(content)
            file.flush()
            os.fsync(file.fileno())
        if replace:
            os.replace(temporary, path)
        else:
            os.link(temporary, path)
    finally:
        Path(temporary).unlink(missing_ok=True)
