"""The progress bar: drawn only on terminals, cleared at the end."""

from __future__ import annotations

import io

import pytest

from hashcheck._progress import ProgressBar


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_draws_nothing_off_terminal() -> None:
    stream = io.StringIO()
    bar = ProgressBar(total=10, unit="B", label="reading", stream=stream)

    bar.update(5)
    bar.close()

    assert not bar.is_enabled
    assert stream.getvalue() == ""


def test_progress_bar_draws_on_terminal_and_clears() -> None:
    stream = _Terminal()
    bar = ProgressBar(total=4 * 1024 * 1024, unit="B", label="reading", stream=stream)

    bar.update(1024 * 1024, suffix="3 files")
    bar.close()

    drawn = stream.getvalue()
    assert "reading" in drawn
    assert "25%" in drawn
    assert "1.0 MiB/4.0 MiB" in drawn
    assert "3 files" in drawn
    assert drawn.endswith("\r\x1b[K")


@pytest.mark.parametrize("enabled", [False, True], ids=["pipe", "terminal"])
def test_progress_bar_note_always_printed(enabled: bool) -> None:
    stream = _Terminal()
    bar = ProgressBar(unit="hashes", stream=stream, enabled=enabled)

    bar.note("hashcheck: cannot read x")

    assert "hashcheck: cannot read x\n" in stream.getvalue()


def test_progress_bar_without_total_shows_count_and_rate() -> None:
    stream = _Terminal()
    bar = ProgressBar(unit="hashes", label="checked", stream=stream)

    bar.update(1_234_567)

    assert "checked  1,234,567 hashes" in stream.getvalue()
    assert "hashes/s" in stream.getvalue()
