"""Hashing files: MD5, SHA-1 and SHA-256 of one file in a single read pass.

hashlib releases the GIL while it digests a chunk, so threads hashing
different files run in parallel.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

from hashcheck._algorithms import Algorithm

__all__ = ["FileHashes", "hash_file"]

_CHUNK_BYTES = 1024 * 1024


@dataclass(frozen=True, slots=True)
class FileHashes:
    """The digests of one file's content, and how many bytes were read."""

    md5: bytes
    sha1: bytes
    sha256: bytes
    size_bytes: int

    def digest(self, algorithm: Algorithm) -> bytes:
        """The digest of the given algorithm; ValueError for one not computed."""
        if algorithm is Algorithm.MD5:
            return self.md5
        if algorithm is Algorithm.SHA1:
            return self.sha1
        if algorithm is Algorithm.SHA256:
            return self.sha256
        raise ValueError(f"Files are not hashed with {algorithm.value}.")


def hash_file(path: str | os.PathLike[str]) -> FileHashes:
    """MD5, SHA-1 and SHA-256 of a file, read once in 1 MiB chunks.

        hashes = hash_file("upload.jpg")
        client.check([hashes.sha256])

    Every file is hashed, empty ones included; OSError when it cannot be read.
    """
    md5 = hashlib.md5(usedforsecurity=False)
    sha1 = hashlib.sha1(usedforsecurity=False)
    sha256 = hashlib.sha256()
    size_bytes = 0

    # One buffer for the whole file: readinto fills it without a new bytes
    # object per chunk, and the digests read it through a view.
    buffer = bytearray(_CHUNK_BYTES)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as file:
        while read := file.readinto(buffer):
            chunk = view[:read]
            md5.update(chunk)
            sha1.update(chunk)
            sha256.update(chunk)
            size_bytes += read

    return FileHashes(md5.digest(), sha1.digest(), sha256.digest(), size_bytes)
