"""Reading hex lines in bulk: cut reads, batch sizes, line numbers, slow streams."""

from __future__ import annotations

import io
import os
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hashcheck import Algorithm, InvalidHash
from hashcheck._hexlines import read_hex_batches


class _TrickleStream(io.RawIOBase):
    """A stream whose reads return a few bytes at a time, as a slow pipe does."""

    def __init__(self, data: bytes, step: int) -> None:
        self._data = data
        self._step = step

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        piece, self._data = self._data[: self._step], self._data[self._step :]
        return piece


def _hex_lines(count: int, width: int = 16) -> list[str]:
    return [f"{number:0{2 * width}x}" for number in range(count)]


@pytest.mark.parametrize(
    "step", [1, 7, 33, 1 << 20], ids=lambda step: f"reads-of-{step}"
)
def test_read_hex_batches_joins_lines_cut_by_reads(step: int) -> None:
    lines = _hex_lines(50)
    data = ("\n".join(lines) + "\n").encode()

    batches = list(read_hex_batches(_TrickleStream(data, step), None, 20))

    assert [batch.count for batch in batches] == [20, 20, 10]
    assert b"".join(batch.hashes for batch in batches) == bytes.fromhex("".join(lines))
    assert {batch.algorithm for batch in batches} == {Algorithm.MD5}


def test_read_hex_batches_last_line_without_newline() -> None:
    data = "\n".join(_hex_lines(3, width=20)).encode()

    batches = list(read_hex_batches(io.BytesIO(data), None, 10))

    assert [(batch.algorithm, batch.count) for batch in batches] == [
        (Algorithm.SHA1, 3)
    ]


def test_read_hex_batches_named_algorithm_checks_every_line() -> None:
    data = "\n".join(_hex_lines(3, width=16)).encode()

    with pytest.raises(InvalidHash, match="Line 1: .* sha256 hashes have 64"):
        list(read_hex_batches(io.BytesIO(data), Algorithm.SHA256, 10))


def test_read_hex_batches_counts_lines_across_reads() -> None:
    lines = _hex_lines(40)
    lines[36] = "g" * 32
    data = ("\n".join(lines) + "\n").encode()

    with pytest.raises(InvalidHash, match="Line 37: 'g{32}' is not a hex hash"):
        list(read_hex_batches(_TrickleStream(data, 100), None, 10))


def test_read_hex_batches_only_blank_lines_yield_nothing() -> None:
    assert list(read_hex_batches(io.BytesIO(b"\n  \n\t\n"), None, 10)) == []


def test_read_hex_batches_slow_stream_sends_what_came() -> None:
    lines = _hex_lines(5)
    read_end, write_end = os.pipe()
    with (
        open(read_end, "rb", buffering=0) as stream,
        open(write_end, "wb", buffering=0) as writer,
    ):
        writer.write(("\n".join(lines[:3]) + "\n").encode())
        batches = read_hex_batches(stream, None, 10_000)

        started = time.monotonic()
        first = next(batches)
        waited = time.monotonic() - started

        writer.write(("\n".join(lines[3:]) + "\n").encode())
        writer.close()
        rest = list(batches)

    # The pipe stays open with three lines in it: they go out on their own.
    assert first.count == 3
    assert waited < 1.0
    sent = b"".join(batch.hashes for batch in [first, *rest])
    assert sent == bytes.fromhex("".join(lines))


def test_read_hex_batches_fast_stream_sends_full_batches() -> None:
    lines = _hex_lines(100_000)
    data = ("\n".join(lines) + "\n").encode()

    batches = list(read_hex_batches(_TrickleStream(data, 64 * 1024), None, 10_000))

    assert [batch.count for batch in batches] == [10_000] * 10


_LINE_FORMS = st.sampled_from(["bare", "upper", "padded", "crlf", "blank"])


@settings(max_examples=200, deadline=None)
@given(
    forms=st.lists(_LINE_FORMS, min_size=1, max_size=60),
    bad_at=st.none() | st.integers(0, 59),
    step=st.integers(1, 200),
)
def test_read_hex_batches_equals_reading_line_by_line(
    forms: list[str], bad_at: int | None, step: int
) -> None:
    digits = _hex_lines(len(forms))
    shaped = {
        "bare": "{}\n",
        "upper": "{}\n",
        "padded": "  {} \n",
        "crlf": "{}\r\n",
        "blank": "\n",
    }
    lines = [
        shaped[form].format(hex_.upper() if form == "upper" else hex_)
        for form, hex_ in zip(forms, digits, strict=True)
    ]
    if bad_at is not None and bad_at < len(lines):
        lines[bad_at] = "z" * 32 + "\n"
    data = "".join(lines).encode()
    expected = [line.strip() for line in lines if line.strip()]
    reader = read_hex_batches(_TrickleStream(data, step), Algorithm.MD5, 7)

    if any(line.startswith("z") for line in expected):
        with pytest.raises(InvalidHash) as bad:
            list(reader)
        assert f"Line {lines.index('z' * 32 + chr(10)) + 1}:" in str(bad.value)
        return
    batches = list(reader)

    assert b"".join(batch.hashes for batch in batches) == bytes.fromhex(
        "".join(expected)
    )
