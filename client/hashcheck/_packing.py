"""Turning the caller's hashes into packed batches.

A hash is given either as hex (`str`, any case, surrounding whitespace
ignored) or as the raw digest (`bytes`). A batch holds one algorithm; when
the caller names none, the first hash decides: hex by its length (32, 40, 64
digits), raw bytes by theirs (16, 20, 32 bytes). A 32-byte or 64-digit hash
is taken as SHA-256; PDQ must always be named.

Packing works on whole batches: the common case (all hex, or all bytes, all
of the right width) is joined and decoded in one call, and only a batch that
fails that is walked hash by hash to say which hash is wrong.

A stream of hashes (`iter_batches`, `aiter_batches`) is read on a thread or
task of its own, a batch's worth at a time, so that a slow stream's hashes
go out in a shorter batch once they have waited a moment (see `_flushing`)
instead of waiting for a full one.
"""

from __future__ import annotations

import binascii
import itertools
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator, Sequence

from hashcheck._algorithms import Algorithm, infer_algorithm, parse_hex
from hashcheck._exceptions import InvalidHash
from hashcheck._flushing import (
    AsyncBackgroundPull,
    BackgroundPull,
    FlushTimer,
    ReadElsewhere,
)
from hashcheck._models import Batch

__all__ = ["pack_hashes"]

_BY_RAW_WIDTH = {16: Algorithm.MD5, 20: Algorithm.SHA1, 32: Algorithm.SHA256}


def pack_hashes(
    hashes: Iterable[str | bytes], algorithm: Algorithm | str | None = None
) -> tuple[Algorithm, bytes]:
    """The algorithm of a batch and its hashes packed end to end.

        algorithm, packed = pack_hashes(["d41d8cd98f00b204e9800998ecf8427e"])
        client.check_batches([Batch(algorithm, packed, context=None)])

    Raises InvalidHash naming the first hash that is not of the algorithm.
    """
    items = as_hash_sequence(hashes)
    chosen = resolve_algorithm(algorithm, items)
    return chosen, pack_sequence(items, chosen)


def as_hash_sequence(hashes: Iterable[str | bytes]) -> Sequence[str | bytes]:
    """The hashes as a sequence, refusing a lone hash passed where a batch belongs."""
    refuse_lone_hash(hashes)
    return hashes if isinstance(hashes, Sequence) else tuple(hashes)


def refuse_lone_hash(hashes: Iterable[str | bytes]) -> None:
    """TypeError for one str or bytes, which would otherwise iterate as digits."""
    if isinstance(hashes, str | bytes):
        raise TypeError(
            "Pass hashes as a list (or other iterable) of hashes; "
            "wrap a single hash in a list."
        )


def coerce_algorithm(algorithm: Algorithm | str) -> Algorithm:
    """An Algorithm from itself or its name, InvalidHash for unknown names."""
    if isinstance(algorithm, Algorithm):
        return algorithm
    try:
        return Algorithm.from_name(algorithm)
    except ValueError as error:
        raise InvalidHash(str(error)) from None


def resolve_algorithm(
    algorithm: Algorithm | str | None, items: Sequence[str | bytes]
) -> Algorithm:
    """The named algorithm, or else the one the first hash's width identifies."""
    if algorithm is not None:
        return coerce_algorithm(algorithm)
    if not items:
        raise InvalidHash(
            "Cannot tell the algorithm of an empty batch; name it with algorithm=."
        )
    return algorithm_of(items[0], index=0)


def algorithm_of(item: str | bytes, index: int) -> Algorithm:
    """The algorithm a single hash's width identifies."""
    if isinstance(item, str):
        try:
            return infer_algorithm(item)
        except ValueError as error:
            raise InvalidHash(f"Hash {index}: {error}") from None

    algorithm = _BY_RAW_WIDTH.get(len(item))
    if algorithm is None:
        raise InvalidHash(
            f"Hash {index} is {len(item)} raw bytes, which is no known width "
            "(MD5 has 16, SHA-1 20, SHA-256 32). Pass hex as str, raw digests "
            "as bytes, or name the algorithm."
        )
    return algorithm


def pack_sequence(
    items: Sequence[str | bytes], algorithm: Algorithm, first_index: int = 0
) -> bytes:
    """The hashes packed end to end; InvalidHash names the first bad one.

    `first_index` is the index of `items[0]` in the caller's whole input, so
    that errors in a stream point at the right hash.
    """
    packed = _pack_uniform(items, algorithm)
    if packed is not None:
        return packed
    return b"".join(
        _hash_bytes(item, algorithm, first_index + offset)
        for offset, item in enumerate(items)
    )


def iter_batches(
    hashes: Iterable[str | bytes],
    algorithm: Algorithm | str | None,
    batch_size: int,
) -> Iterator[Batch[tuple[str | bytes, ...]]]:
    """Batches of up to `batch_size` hashes, each carrying its own inputs.

    Without a named algorithm the first hash of the stream decides it for the
    whole stream. The arguments are checked now, the hashes as they are read.
    Unless `hashes` is a sequence, it is read on a thread of its own, at
    most one batch ahead of the batches taken, and a batch is shorter when
    the `FlushTimer` says its hashes have waited long enough. What the
    iterable raises is raised after a batch of the hashes it gave before.
    """
    if isinstance(hashes, Sequence):
        # All there already: nothing to wait for, so no thread to hand over to.
        return iter_batches_inline(hashes, algorithm, batch_size)
    require_batch_size(batch_size)
    chosen = None if algorithm is None else coerce_algorithm(algorithm)
    return ReadElsewhere(_generate_batches(iter(hashes), chosen, batch_size))


def iter_batches_inline(
    hashes: Iterable[str | bytes],
    algorithm: Algorithm | str | None,
    batch_size: int,
) -> Iterator[Batch[tuple[str | bytes, ...]]]:
    """`iter_batches` read on the caller's own thread, for input that never blocks."""
    require_batch_size(batch_size)
    refuse_lone_hash(hashes)
    chosen = None if algorithm is None else coerce_algorithm(algorithm)
    return _generate_batches_inline(iter(hashes), chosen, batch_size)


def aiter_batches(
    hashes: AsyncIterable[str | bytes],
    algorithm: Algorithm | str | None,
    batch_size: int,
) -> AsyncIterator[Batch[tuple[str | bytes, ...]]]:
    """`iter_batches` for an async iterable of hashes, read by a task of its own."""
    require_batch_size(batch_size)
    chosen = None if algorithm is None else coerce_algorithm(algorithm)
    return _agenerate_batches(aiter(hashes), chosen, batch_size)


def require_batch_size(batch_size: int) -> None:
    """ValueError unless a batch may hold at least one hash."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, not {batch_size}.")


def require_whole_hashes(hashes: bytes, algorithm: Algorithm) -> None:
    """InvalidHash unless a packed batch holds a whole number of hashes."""
    if len(hashes) % algorithm.width:
        raise InvalidHash(
            f"A packed {algorithm.value} batch must be a multiple of "
            f"{algorithm.width} bytes long, not {len(hashes)}."
        )


def _generate_batches(
    hashes: Iterator[str | bytes], algorithm: Algorithm | None, batch_size: int
) -> Iterator[Batch[tuple[str | bytes, ...]]]:
    pull = BackgroundPull(hashes)
    timer = FlushTimer()
    chunk: list[str | bytes] = []
    offset = 0
    try:
        while not pull.ended:
            # Only what the batch lacks, so nothing is read ahead of demand.
            pull.start(batch_size - len(chunk))
            chunk += pull.take(timer.wait_seconds())
            if _is_ready(chunk, batch_size, pull.ended, timer):
                algorithm = algorithm or algorithm_of(chunk[0], index=offset)
                yield _batch_of(chunk, algorithm, offset)
                offset += len(chunk)
                chunk = []
                timer.sent()
        pull.raise_if_failed()
    finally:
        pull.close()


async def _agenerate_batches(
    hashes: AsyncIterator[str | bytes], algorithm: Algorithm | None, batch_size: int
) -> AsyncIterator[Batch[tuple[str | bytes, ...]]]:
    pull = AsyncBackgroundPull(hashes)
    timer = FlushTimer()
    chunk: list[str | bytes] = []
    offset = 0
    try:
        while not pull.ended:
            pull.start(batch_size - len(chunk))
            chunk += await pull.take(timer.wait_seconds())
            if _is_ready(chunk, batch_size, pull.ended, timer):
                algorithm = algorithm or algorithm_of(chunk[0], index=offset)
                yield _batch_of(chunk, algorithm, offset)
                offset += len(chunk)
                chunk = []
                timer.sent()
        pull.raise_if_failed()
    finally:
        await pull.aclose()


def _generate_batches_inline(
    hashes: Iterator[str | bytes], algorithm: Algorithm | None, batch_size: int
) -> Iterator[Batch[tuple[str | bytes, ...]]]:
    offset = 0
    while chunk := tuple(itertools.islice(hashes, batch_size)):
        algorithm = algorithm or algorithm_of(chunk[0], index=offset)
        yield _batch_of(chunk, algorithm, offset)
        offset += len(chunk)


def _is_ready(
    chunk: Sequence[str | bytes], batch_size: int, ended: bool, timer: FlushTimer
) -> bool:
    """Whether to send the chunk: full, the last, or due by the timer."""
    if not chunk:
        return False
    return len(chunk) >= batch_size or ended or timer.is_due(len(chunk))


def _batch_of(
    chunk: Sequence[str | bytes], algorithm: Algorithm, offset: int
) -> Batch[tuple[str | bytes, ...]]:
    return Batch(algorithm, pack_sequence(chunk, algorithm, offset), tuple(chunk))


def _pack_uniform(items: Sequence[str | bytes], algorithm: Algorithm) -> bytes | None:
    """The packed batch when every hash is of one kind and width, else None."""
    if not items:
        return b""
    try:
        if isinstance(items[0], str):
            return _pack_hex(items, algorithm)
        return _pack_raw(items, algorithm)
    except (TypeError, ValueError):
        # A str among bytes, or a non-hex digit: the slow path says which.
        return None


def _pack_hex(items: Sequence[str | bytes], algorithm: Algorithm) -> bytes | None:
    digits = list(map(str.strip, items))  # type: ignore[arg-type]
    if set(map(len, digits)) != {2 * algorithm.width}:
        return None
    return binascii.unhexlify("".join(digits))


def _pack_raw(items: Sequence[str | bytes], algorithm: Algorithm) -> bytes | None:
    if set(map(len, items)) != {algorithm.width}:
        return None
    return b"".join(items)  # type: ignore[arg-type]


def _hash_bytes(item: str | bytes, algorithm: Algorithm, index: int) -> bytes:
    if isinstance(item, str):
        try:
            return parse_hex(item, algorithm)
        except ValueError as error:
            raise InvalidHash(
                f"Hash {index}: {error} A batch holds hashes of one algorithm."
            ) from None

    if not isinstance(item, bytes | bytearray):
        raise InvalidHash(
            f"Hash {index} is a {type(item).__name__}; "
            "pass hex as str or raw digests as bytes."
        )
    if len(item) != algorithm.width:
        raise InvalidHash(
            f"Hash {index} is {len(item)} raw bytes long; {algorithm.value} hashes "
            f"have {algorithm.width}. A batch holds hashes of one algorithm."
        )
    return bytes(item)
