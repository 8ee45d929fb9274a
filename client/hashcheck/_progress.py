"""A one-line progress display for terminals, redrawn in place on stderr.

    bar = ProgressBar(total=size_bytes, unit="B", label="reading")
    bar.update(done_bytes)          # an absolute count, from any thread
    bar.note("cannot read x.jpg")   # a line of its own, above the bar
    bar.close()

With a total it draws a bar and a percentage; without one, the count and the
rate. It draws only when its stream is a terminal (unless told otherwise) and
at most ten times a second, so updating it per chunk or per batch costs next
to nothing. Output piped to a file never carries it.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import TextIO

__all__ = ["ProgressBar"]

_REDRAW_SECONDS = 0.1
_BAR_CELLS = 24
_CLEAR_LINE = "\r\x1b[K"
_BINARY_PREFIXES = ("", "Ki", "Mi", "Gi", "Ti", "Pi")


class ProgressBar:
    """Progress of one task on one line; safe to update from several threads.

    `unit` "B" shows bytes with binary prefixes; any other unit is shown after
    the count as given (for example "hashes").
    """

    def __init__(
        self,
        total: int | None = None,
        *,
        unit: str = "",
        label: str = "",
        stream: TextIO | None = None,
        enabled: bool | None = None,
    ) -> None:
        self._stream = stream if stream is not None else sys.stderr
        self._enabled = self._stream.isatty() if enabled is None else enabled
        self._total = total
        self._unit = unit
        self._label = label
        self._lock = threading.Lock()
        self._done = 0
        self._suffix = ""
        self._started = time.monotonic()
        self._drawn_at = 0.0

    @property
    def is_enabled(self) -> bool:
        """Whether the bar draws at all."""
        return self._enabled

    def update(self, done: int, *, suffix: str | None = None) -> None:
        """Set the count reached so far, and optionally the text after it."""
        if not self._enabled:
            return
        with self._lock:
            self._done = done
            if suffix is not None:
                self._suffix = suffix
            now = time.monotonic()
            if now - self._drawn_at >= _REDRAW_SECONDS:
                self._drawn_at = now
                self._draw(now)

    def note(self, message: str) -> None:
        """Print a message on a line of its own without tearing the bar."""
        with self._lock:
            if self._enabled:
                self._stream.write(_CLEAR_LINE)
            self._stream.write(message + "\n")
            if self._enabled:
                self._draw(time.monotonic())
            self._stream.flush()

    def close(self) -> None:
        """Clear the bar's line, leaving the terminal as it was."""
        if not self._enabled:
            return
        with self._lock:
            self._stream.write(_CLEAR_LINE)
            self._stream.flush()
            self._enabled = False

    def _draw(self, now: float) -> None:
        self._stream.write(_CLEAR_LINE + self._render(now))
        self._stream.flush()

    def _render(self, now: float) -> str:
        elapsed_seconds = max(now - self._started, 1e-9)
        rate = self._format_amount(self._done / elapsed_seconds) + "/s"
        parts = [self._label] if self._label else []

        if self._total:
            fraction = min(self._done / self._total, 1.0)
            filled = round(fraction * _BAR_CELLS)
            parts.append("[" + "#" * filled + "." * (_BAR_CELLS - filled) + "]")
            parts.append(f"{fraction:4.0%}")
            total = self._format_amount(self._total)
            parts.append(f"{self._format_amount(self._done)}/{total}")
        else:
            parts.append(self._format_amount(self._done))

        parts.append(rate)
        if self._suffix:
            parts.append(self._suffix)
        return "  ".join(parts)

    def _format_amount(self, amount: float) -> str:
        if self._unit != "B":
            unit = f" {self._unit}" if self._unit else ""
            return f"{amount:,.0f}{unit}"

        step = 0
        while amount >= 1024 and step < len(_BINARY_PREFIXES) - 1:
            amount /= 1024
            step += 1
        return f"{amount:.1f} {_BINARY_PREFIXES[step]}B"
