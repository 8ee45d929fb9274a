"""The hash algorithms HashCheck serves, their widths, and hex parsing.

Every hash in a batch has the width of its algorithm; the server rejects a
batch whose length is not a multiple of it. Hashes are written as hex in any
case; on the wire and on disk they are raw bytes.
"""

from __future__ import annotations

import binascii
import enum
import hashlib

from hashcheck.v1 import hashcheck_pb2

__all__ = ["Algorithm", "infer_algorithm", "parse_hex"]


class Algorithm(enum.Enum):
    """A hash algorithm, named as on the command line (`md5`, `sha1`, ...)."""

    MD5 = "md5"
    SHA1 = "sha1"
    SHA256 = "sha256"
    PDQ = "pdq"

    @property
    def width(self) -> int:
        """Bytes per hash."""
        return _WIDTHS[self]

    @property
    def proto(self) -> hashcheck_pb2.Algorithm.ValueType:
        """The value of this algorithm in the hashcheck.v1 API."""
        return _PROTO_VALUES[self]

    @property
    def empty_file_hash(self) -> bytes | None:
        """The hash of a zero-byte file, which no list may hold as an entry."""
        return _EMPTY_FILE_HASHES.get(self)

    @classmethod
    def from_proto(cls, value: int) -> Algorithm:
        """The algorithm for an API value; ValueError for unknown values."""
        for algorithm, proto_value in _PROTO_VALUES.items():
            if proto_value == value:
                return algorithm
        raise ValueError(f"Unknown algorithm value {value} in the hashcheck.v1 API.")

    @classmethod
    def from_name(cls, name: str) -> Algorithm:
        """The algorithm for a name such as `md5` or `SHA-1`, in any case."""
        normalized = name.strip().lower().replace("-", "").replace("_", "")
        try:
            return cls(normalized)
        except ValueError:
            known = ", ".join(algorithm.value for algorithm in cls)
            raise ValueError(
                f"Unknown hash algorithm {name!r}; use one of: {known}."
            ) from None


_WIDTHS = {
    Algorithm.MD5: 16,
    Algorithm.SHA1: 20,
    Algorithm.SHA256: 32,
    Algorithm.PDQ: 32,
}

_PROTO_VALUES: dict[Algorithm, hashcheck_pb2.Algorithm.ValueType] = {
    Algorithm.MD5: hashcheck_pb2.ALGORITHM_MD5,
    Algorithm.SHA1: hashcheck_pb2.ALGORITHM_SHA1,
    Algorithm.SHA256: hashcheck_pb2.ALGORITHM_SHA256,
    Algorithm.PDQ: hashcheck_pb2.ALGORITHM_PDQ,
}

_EMPTY_FILE_HASHES = {
    Algorithm.MD5: hashlib.md5(b"").digest(),
    Algorithm.SHA1: hashlib.sha1(b"").digest(),
    Algorithm.SHA256: hashlib.sha256(b"").digest(),
}

# PDQ shares its width with SHA-256, so a bare 64-digit hex hash means SHA-256;
# PDQ must always be named.
_BY_HEX_LENGTH = {32: Algorithm.MD5, 40: Algorithm.SHA1, 64: Algorithm.SHA256}


def infer_algorithm(hex_hash: str) -> Algorithm:
    """The cryptographic algorithm whose width matches a hex hash's length."""
    digits = hex_hash.strip()
    try:
        return _BY_HEX_LENGTH[len(digits)]
    except KeyError:
        raise ValueError(
            f"Cannot tell the algorithm of a {len(digits)}-digit hash; "
            "MD5 has 32 hex digits, SHA-1 40 and SHA-256 64."
        ) from None


def parse_hex(hex_hash: str, algorithm: Algorithm) -> bytes:
    """The raw bytes of one hex hash, checked against the algorithm's width."""
    digits = hex_hash.strip()
    if len(digits) != 2 * algorithm.width:
        raise ValueError(
            f"{digits[:80]!r} is {len(digits)} hex digits long; "
            f"{algorithm.value} hashes have {2 * algorithm.width}."
        )
    try:
        return binascii.unhexlify(digits)
    except (binascii.Error, ValueError):
        raise ValueError(f"{digits[:80]!r} is not a hex hash.") from None
