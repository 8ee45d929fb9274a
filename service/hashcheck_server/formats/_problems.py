"""The malformed records of one import file: the first few kept, all counted."""

from __future__ import annotations

from hashcheck_server.errors import MalformedInput, Problem

__all__ = ["ProblemLog"]


class ProblemLog:
    """Collects Problems while a file is read, and raises them all at the end.

    Readers keep going after a problem so that one import attempt reports every
    bad record's count, not just the first; only `limit` of them are kept so a
    file of garbage cannot fill memory with reasons. Readers add problems in
    file order, so the kept ones are the first in the file.
    """

    def __init__(self, source: str, limit: int) -> None:
        if limit < 0:
            raise ValueError(f"max_problems must be 0 or more, not {limit}.")
        self._source = source
        self._limit = limit
        self._kept: list[Problem] = []
        self._total = 0

    def add(self, line: int, reason: str) -> None:
        """Record that `line` (or record number) cannot be read, and why."""
        self._total += 1
        if len(self._kept) < self._limit:
            self._kept.append(Problem(self._source, line, reason))

    def raise_if_any(self) -> None:
        """Raise MalformedInput if any problem was recorded."""
        if self._total:
            raise MalformedInput(self._kept, self._total)
