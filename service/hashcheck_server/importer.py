"""From a parsed hash-list file to list entries: defaults, guards, report.

The readers in hashcheck_server.formats turn a file into arrays and reject it
whole when any record is malformed. This step prepares what the store takes:

- records without a category get the import's default category;
- the hash of an empty file is dropped and counted: it matches every empty
  upload, so no list may hold it as an entry;
- records the reader skipped (NCMEC entries without a fingerprint of the
  algorithms read) are logged, so the operator's log says what was left out.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from hashcheck._algorithms import Algorithm
from hashcheck_server.formats import ParsedFile, ParsedHashes
from hashcheck_server.store import Entries, Withdrawals

__all__ = ["PreparedImport", "prepare_entries"]

logger = logging.getLogger(__name__)


@dataclass
class PreparedImport:
    """Entries ready for the store, and what was held back on the way."""

    entries: list[Entries] = field(default_factory=list)
    dropped_empty_file: dict[Algorithm, int] = field(default_factory=dict)
    withdrawals: Withdrawals = field(default_factory=Withdrawals)
    record_ids: dict[str, tuple[tuple[Algorithm, bytes], ...]] = field(
        default_factory=dict
    )


def prepare_entries(parsed: ParsedFile, default_category: str = "") -> PreparedImport:
    """Entries for every algorithm of a parsed file."""
    prepared = PreparedImport(
        withdrawals=Withdrawals(dict(parsed.withdrawn), parsed.withdrawn_ids),
        record_ids=dict(parsed.record_ids),
    )
    if parsed.skipped:
        logger.warning(
            "%s: skipped %d record(s) %s",
            parsed.source,
            parsed.skipped,
            parsed.skipped_reason,
        )
    for algorithm, part in parsed.by_algorithm.items():
        entries, dropped = _prepare_algorithm(part, default_category)
        prepared.entries.append(entries)
        if dropped:
            prepared.dropped_empty_file[algorithm] = dropped
            logger.warning(
                "%s: dropped %d record(s) holding the %s hash of an empty file",
                parsed.source,
                dropped,
                algorithm.value,
            )
    return prepared


def _prepare_algorithm(
    part: ParsedHashes, default_category: str
) -> tuple[Entries, int]:
    hashes = part.hashes
    categories = part.categories
    names = (*part.category_names, default_category)
    categories = np.where(categories < 0, len(names) - 1, categories).astype(np.int32)

    empty = part.algorithm.empty_file_hash
    keep = np.ones(hashes.shape[0], dtype=bool)
    if empty is not None and hashes.shape[0]:
        keep = np.any(hashes != np.frombuffer(empty, dtype=np.uint8), axis=1)
    dropped = int(hashes.shape[0] - np.count_nonzero(keep))
    if dropped:
        hashes, categories = hashes[keep], categories[keep]
    return Entries(part.algorithm, hashes, categories, names), dropped
