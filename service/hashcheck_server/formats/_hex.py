"""Hex digits to raw hash bytes: one hash at a time, or a whole block of rows at once.

A hash is written as `2 * width` ASCII hex digits in any case. The block decoder
takes a `(rows, 2 * width)` uint8 array of ASCII codes, with any strides, so it
can be a zero-copy window into a chunk of a file. Every byte goes through a
256-entry table: `0`-`9`, `a`-`f` and `A`-`F` become their value 0-15 and every
other byte becomes 0xFF. A row is hex exactly when none of its looked-up values
has a high nibble, which finds bad rows without a Python loop.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from hashcheck._algorithms import Algorithm

__all__ = ["NOT_HEX_REASON", "BadHash", "decode_hex", "decode_hex_rows", "is_hex"]

_HEX_DIGITS = "0123456789abcdef"
_HEX_CHARACTERS = frozenset(_HEX_DIGITS + _HEX_DIGITS.upper())
_NOT_HEX = 0xFF
_HIGH_NIBBLES = np.uint64(0xF0F0_F0F0_F0F0_F0F0)

NOT_HEX_REASON = "not hex: a hash holds only the digits 0-9 and letters a-f"


class BadHash(ValueError):
    """A hash that cannot be read; the message is the reason, without the hash."""


def _nibble_table() -> npt.NDArray[np.uint8]:
    table = np.full(256, _NOT_HEX, dtype=np.uint8)
    for value, digit in enumerate(_HEX_DIGITS):
        table[ord(digit)] = value
        table[ord(digit.upper())] = value
    return table


_NIBBLES = _nibble_table()


def is_hex(digits: str) -> bool:
    """Whether a string is non-empty and holds only hex digits."""
    return bool(digits) and _HEX_CHARACTERS.issuperset(digits)


class HexDecoder:
    """Decodes single hex hashes of one algorithm.

    Readers keep one per column or field, so the width is looked up once rather
    than per hash: Algorithm's hash is computed in Python, which shows at
    millions of cells.
    """

    __slots__ = ("_digit_count", "algorithm")

    def __init__(self, algorithm: Algorithm) -> None:
        self.algorithm = algorithm
        self._digit_count = 2 * algorithm.width

    def decode(self, digits: str) -> bytes:
        """The raw bytes of one hex hash; BadHash says why it cannot be read."""
        if len(digits) == self._digit_count and _HEX_CHARACTERS.issuperset(digits):
            return bytes.fromhex(digits)

        if not is_hex(digits):
            raise BadHash(NOT_HEX_REASON)
        raise BadHash(
            f"expected {self._digit_count} hex digits for {self.algorithm.value}, "
            f"found {len(digits)}"
        )


def decode_hex(digits: str, algorithm: Algorithm) -> bytes:
    """The raw bytes of one hex hash; BadHash says why it cannot be read."""
    return HexDecoder(algorithm).decode(digits)


def decode_hex_rows(
    digits: npt.NDArray[np.uint8],
) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.bool_]]:
    """Decode `(rows, 2 * width)` ASCII digits into `(rows, width)` bytes.

    Returns the bytes and a mask of the rows that were all hex. The bytes of a
    row outside the mask are meaningless.
    """
    # mode="clip" cannot change a result, as uint8 codes never exceed the
    # table, and it spares numpy the bounds check of mode="raise", which
    # costs twice the lookup itself.
    nibbles = np.take(_NIBBLES, digits, mode="clip")

    is_hex = _rows_without_high_nibbles(nibbles)

    hashes = np.left_shift(nibbles[:, 0::2], np.uint8(4))
    hashes |= nibbles[:, 1::2]
    return hashes, is_hex


def _rows_without_high_nibbles(
    nibbles: npt.NDArray[np.uint8],
) -> npt.NDArray[np.bool_]:
    rows, digit_count = nibbles.shape
    if digit_count % 8:
        return np.asarray(nibbles.max(axis=1, initial=0) < 16)

    high = nibbles.view(np.uint64) & _HIGH_NIBBLES
    # Nearly every chunk is all hex; one flat test spares the per-row reduction.
    if not high.any():
        return np.ones(rows, dtype=np.bool_)
    return np.asarray(~high.any(axis=1))
