"""Reading hex hashes, one a line, from a byte stream into packed batches.

This is the hot path of `hashcheck check -`, built to read tens of millions
of lines a second: the stream is read up to 1 MiB at a time, and a block of
whole lines that are all bare hashes of one width ends at every line's
width + 1 with a newline; such a block is checked and decoded with three
calls over its bytes (a strided slice of the newlines, `translate` to drop
them, one `unhexlify`), and no Python object is made per line. Any other
block (blank lines, spaces, CRLF, a bad line) is split into lines, stripped,
length-checked and decoded with a handful of calls over the whole block.
Only a block that fails those checks too is walked line by line, to name
the first bad line.

Blank lines and whitespace around a hash are ignored. Without a named
algorithm, the first hash decides it for the whole input.

A slow input (`tail -f uploads | hashcheck check -`) is not held back until a
batch is full: the stream is read and decoded on another thread, and the
hashes decoded so far are sent once no line has come for a moment or the
oldest has waited a little while (see `_flushing`). Decoded blocks are
handed over up to 16 reads at a time, so a fast input costs one hand-over
between threads per megabyte or more, not one per line.
"""

from __future__ import annotations

import binascii
from collections.abc import Iterator
from typing import BinaryIO

from hashcheck._algorithms import Algorithm, infer_algorithm, parse_hex
from hashcheck._exceptions import InvalidHash
from hashcheck._flushing import FlushTimer, ReadElsewhere, read_ahead
from hashcheck._models import Batch

__all__ = ["HexLineDecoder", "read_hex_batches"]

_READ_BYTES = 1024 * 1024


def read_hex_batches(
    stream: BinaryIO, algorithm: Algorithm | None, batch_size: int
) -> Iterator[Batch[None]]:
    """Batches of `batch_size` hashes read from `stream`, the last one shorter.

    While the stream is slow, shorter batches too: the hashes read so far,
    once the `FlushTimer` says they have waited long enough.

    Raises InvalidHash naming the line number of the first bad line, after
    yielding the batches of the lines before its block.
    """
    return ReadElsewhere(_hex_batches(stream, algorithm, batch_size))


def _hex_batches(
    stream: BinaryIO, algorithm: Algorithm | None, batch_size: int
) -> Iterator[Batch[None]]:
    decoder = HexLineDecoder(algorithm)
    timer = FlushTimer()
    pending = bytearray()

    # Read and decoded on another thread, each block before the next read, so
    # that a pipe's writer refills the pipe while a block is decoded.
    decoded = map(decoder.decode, _blocks_of_lines(stream))
    for packed in read_ahead(decoded, timer):
        if packed is not None:
            pending += packed
        if decoder.algorithm is not None:
            yield from _batches_due(pending, decoder.algorithm, batch_size, timer)

    if pending and decoder.algorithm is not None:
        yield Batch(decoder.algorithm, bytes(pending), None)


def _batches_due(
    pending: bytearray, algorithm: Algorithm, batch_size: int, timer: FlushTimer
) -> Iterator[Batch[None]]:
    """The full batches of `pending`, and the rest once due; each leaves `pending`."""
    batch_bytes = batch_size * algorithm.width
    while len(pending) >= batch_bytes:
        yield Batch(algorithm, bytes(pending[:batch_bytes]), None)
        del pending[:batch_bytes]
        timer.sent()

    if pending and timer.is_due(len(pending)):
        yield Batch(algorithm, bytes(pending), None)
        pending.clear()
        timer.sent()


def _blocks_of_lines(stream: BinaryIO) -> Iterator[bytes]:
    """The stream's bytes, a block of whole lines (newlines kept) for each read.

    `read` returns what one read gave, so a slow writer's lines are passed on
    as they come; a line cut by the end of a read waits for the next one.
    The last line of the stream may lack its newline.
    """
    carry = b""
    while block := stream.read(_READ_BYTES):
        data = carry + block
        end = data.rfind(b"\n") + 1
        carry = data[end:]
        if end:
            yield data[:end]
    if carry:
        yield carry


class HexLineDecoder:
    """Decodes blocks of lines in order, counting lines for error messages."""

    def __init__(self, algorithm: Algorithm | None) -> None:
        self.algorithm = algorithm
        self.lines_read = 0

    def decode(self, block: bytes) -> bytes:
        """The packed hashes of a block of whole lines."""
        if self.algorithm is not None:
            packed = _decode_bare_hashes(block, self.algorithm)
            if packed is not None:
                self.lines_read += len(block) // (2 * self.algorithm.width + 1)
                return packed
        return self._decode_lines(_lines_of(block))

    def _decode_lines(self, lines: list[bytes]) -> bytes:
        first_line_number = self.lines_read + 1
        self.lines_read += len(lines)
        digits = list(filter(None, map(bytes.strip, lines)))
        if not digits:
            return b""

        if self.algorithm is None:
            self.algorithm = _infer(digits[0], lines, first_line_number)
        if set(map(len, digits)) == {2 * self.algorithm.width}:
            try:
                return binascii.unhexlify(b"".join(digits))
            except binascii.Error:
                pass
        raise _first_bad_line(lines, first_line_number, self.algorithm)


def _lines_of(block: bytes) -> list[bytes]:
    """A block's lines, without the newline that ends the last one."""
    if block.endswith(b"\n"):
        block = block[:-1]
    return block.split(b"\n")


def _decode_bare_hashes(block: bytes, algorithm: Algorithm) -> bytes | None:
    """The packed hashes of a block of bare hex lines, or None if it is not one.

    Every line is exactly the hash's hex digits and a newline. A block whose
    newlines all stand at those places, and nowhere else, is decoded whole;
    anything else (and bad digits) is left to the line-by-line path, which
    also names the line at fault.
    """
    line_bytes = 2 * algorithm.width + 1
    lines, rest = divmod(len(block), line_bytes)
    if rest or not lines:
        return None
    if block[line_bytes - 1 :: line_bytes] != b"\n" * lines:
        return None
    digits = block.translate(None, b"\n")
    if len(digits) != lines * (line_bytes - 1):
        return None
    try:
        return binascii.unhexlify(digits)
    except binascii.Error:
        return None


def _infer(
    first_digits: bytes, lines: list[bytes], first_line_number: int
) -> Algorithm:
    try:
        return infer_algorithm(first_digits.decode("ascii", "replace"))
    except ValueError as error:
        line_number = first_line_number + _index_of_first_hash(lines)
        raise InvalidHash(
            f"Line {line_number}: {error} Name the algorithm with --algorithm."
        ) from None


def _index_of_first_hash(lines: list[bytes]) -> int:
    return next(index for index, line in enumerate(lines) if line.strip())


def _first_bad_line(
    lines: list[bytes], first_line_number: int, algorithm: Algorithm
) -> InvalidHash:
    for index, line in enumerate(lines):
        text = line.strip().decode("ascii", "replace")
        if not text:
            continue
        try:
            parse_hex(text, algorithm)
        except ValueError as error:
            return InvalidHash(f"Line {first_line_number + index}: {error}")
    return InvalidHash(
        f"Lines {first_line_number} to {first_line_number + len(lines) - 1} "
        "cannot be read as hex hashes."
    )
