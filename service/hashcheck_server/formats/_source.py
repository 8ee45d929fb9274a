"""Where the bytes of an import come from: a path, "-" for stdin, or an open stream.

Readers always get a binary stream. A path is opened here and closed when the
read ends; a stream the caller passed in stays open, as it is the caller's.
"""

from __future__ import annotations

import contextlib
import io
import os
import stat
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, TextIO

from hashcheck_server.errors import ImportRejected

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

__all__ = [
    "STDIN",
    "Progress",
    "open_source",
    "read_all",
    "remaining_bytes",
    "source_name",
    "text_reader",
]

STDIN = "-"

Progress = Callable[[int], None]

_BLOCK_BYTES = 1 << 20


def source_name(source: str | Path | BinaryIO) -> str:
    """The name problems and messages use for a source."""
    if isinstance(source, str | Path):
        return "<stdin>" if source == STDIN else str(source)

    name = getattr(source, "name", None)
    return name if isinstance(name, str) else "<stream>"


@contextlib.contextmanager
def open_source(source: str | Path | BinaryIO) -> Iterator[BinaryIO]:
    """The source as a binary stream; a file opened here is closed on exit."""
    if isinstance(source, str) and source == STDIN:
        yield sys.stdin.buffer
    elif isinstance(source, str | Path):
        with _open_file(Path(source)) as stream:
            yield stream
    else:
        yield source


def _open_file(path: Path) -> BinaryIO:
    try:
        return path.open("rb")
    except OSError as error:
        reason = error.strerror or str(error)
        raise ImportRejected(f"Cannot open {path}: {reason}.") from error


def remaining_bytes(stream: BinaryIO) -> int | None:
    """How many bytes a regular file has left to read; None for pipes and the like."""
    try:
        status = os.fstat(stream.fileno())
        if not stat.S_ISREG(status.st_mode):
            return None
        return max(status.st_size - stream.tell(), 0)
    except (OSError, ValueError, AttributeError):
        # io.UnsupportedOperation (no file descriptor: BytesIO) is an OSError.
        return None


def read_all(stream: BinaryIO, progress: Progress | None) -> bytearray:
    """Every byte of the stream, reporting progress after each block."""
    data = bytearray()
    while block := stream.read(_BLOCK_BYTES):
        data += block
        if progress is not None:
            progress(len(data))
    return data


def text_reader(stream: BinaryIO, progress: Progress | None) -> TextIO:
    """The stream decoded as UTF-8 (BOM skipped), for the csv module.

    Bytes that are not UTF-8 become U+FFFD rather than stopping the import:
    only hash and category columns are read, and a damaged hash is then
    reported as not hex on its own line.
    """
    counting = _CountingReader(stream, progress)
    buffered = io.BufferedReader(counting, buffer_size=_BLOCK_BYTES)
    return io.TextIOWrapper(
        buffered, encoding="utf-8-sig", errors="replace", newline=""
    )


class _CountingReader(io.RawIOBase):
    """A raw reader over a stream that reports the bytes consumed so far.

    Closing it leaves the wrapped stream open: that belongs to open_source.
    """

    def __init__(self, stream: BinaryIO, progress: Progress | None) -> None:
        super().__init__()
        self._stream = stream
        self._progress = progress
        self._consumed = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: WriteableBuffer) -> int:
        view = memoryview(buffer).cast("B")
        data = self._stream.read(len(view))
        view[: len(data)] = data

        self._consumed += len(data)
        if self._progress is not None and data:
            self._progress(self._consumed)
        return len(data)
