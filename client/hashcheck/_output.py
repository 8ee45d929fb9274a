"""The CLI's output: one JSON object a line for each hit, nothing for misses.

    {"path": "photos/a.jpg", "hash": "5d41...", "algorithm": "md5",
     "lists": ["police-2024"], "matches": [{"list": "police-2024",
     "category": "A1"}], "generation": 42}

`path` appears only for `hashcheck scan`. `lists` holds the list names alone
for simple scripts; `matches` adds each list's category. PDQ hits add
`distance`, the Hamming distance to the known hash (nearest first; an image
near several known hashes gives one line for each).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, TextIO

from hashcheck._models import CheckResult, Hit

__all__ = ["HitWriter", "hit_record"]


def hit_record(hit: Hit, path: str | None = None) -> dict[str, Any]:
    """The JSON object printed for one hit."""
    record: dict[str, Any] = {} if path is None else {"path": path}
    record["hash"] = hit.hex
    record["algorithm"] = hit.algorithm.value
    record["lists"] = list(hit.list_names)
    record["matches"] = [
        {"list": match.list, "category": match.category} for match in hit.lists
    ]
    record["generation"] = hit.generation
    if hit.distance is not None:
        record["distance"] = hit.distance
    return record


class HitWriter:
    """Writes the hits of results as JSON lines, and counts them."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self.hits = 0

    def write(self, result: CheckResult, paths: Sequence[str] | None = None) -> None:
        """Write a result's hits; `paths` names the batch's files, by position."""
        if not result.hits:
            return
        for hit in result.hits:
            path = None if paths is None else paths[hit.position]
            self._stream.write(json.dumps(hit_record(hit, path)) + "\n")

        # Hits are few and each matters: flush so a reader sees them at once.
        self._stream.flush()
        self.hits += len(result.hits)
