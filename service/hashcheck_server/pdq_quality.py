"""Holding back PDQ hashes of low quality before an import.

PDQ's hasher scores each hash from 0 to 100. A low score means the image had
too little structure for a stable hash (a flat colour, a tiny thumbnail), and
such hashes match unrelated images; the field discards scores of 49 or less.
A list file may carry the scores (a CSV `quality` column, see
hashcheck_server.formats._csv). `import --min-quality N` then holds back every
PDQ hash scored below N, before anything reaches the store, and says how many.

Hashes without a score are kept (nothing is known against them) and counted,
so the operator can tell a list without scores from one without bad hashes.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from hashcheck._algorithms import Algorithm
from hashcheck_server.errors import ImportRejected
from hashcheck_server.formats import ParsedFile, ParsedHashes

__all__ = ["QualityReport", "hold_back_low_quality"]

logger = logging.getLogger(__name__)

#: The field's rule: PDQ hashes of quality 49 or less are discarded.
FIELD_MIN_QUALITY = 50


@dataclass(frozen=True)
class QualityReport:
    """What --min-quality did to the PDQ hashes of one file."""

    min_quality: int
    kept: int
    held_back: int
    unscored: int

    def describe(self) -> str:
        return (
            f"pdq: {self.held_back} hash(es) below quality {self.min_quality} "
            f"held back (not imported); {self.kept} kept, of which "
            f"{self.unscored} without a quality score"
        )


def hold_back_low_quality(
    parsed: ParsedFile, min_quality: int
) -> tuple[ParsedFile, QualityReport | None]:
    """The file without its PDQ hashes scored below `min_quality`.

    Returns the file as it was and None when it holds no PDQ hashes. Raises
    ImportRejected when every hash of the file would be held back.
    """
    part = parsed.by_algorithm.get(Algorithm.PDQ)
    if part is None:
        return parsed, None

    count = part.hashes.shape[0]
    if part.qualities is None:
        report = QualityReport(min_quality, count, 0, count)
        return parsed, report

    scored = part.qualities >= 0
    keep = ~scored | (part.qualities >= min_quality)
    kept = int(keep.sum())
    report = QualityReport(min_quality, kept, count - kept, int((~scored).sum()))
    if report.held_back:
        logger.warning(
            "%s: held back %d PDQ hash(es) of quality below %d",
            parsed.source,
            report.held_back,
            min_quality,
        )

    by_algorithm = dict(parsed.by_algorithm)
    if kept:
        by_algorithm[Algorithm.PDQ] = _select(part, keep)
    else:
        del by_algorithm[Algorithm.PDQ]
    if not by_algorithm:
        raise ImportRejected(
            f"{parsed.source}: all {count} PDQ hashes are of quality below "
            f"{min_quality}; nothing was imported. Lower --min-quality or check "
            "the file's quality column."
        )
    return dataclasses.replace(parsed, by_algorithm=by_algorithm), report


def _select(part: ParsedHashes, keep: npt.NDArray[np.bool_]) -> ParsedHashes:
    assert part.qualities is not None
    return dataclasses.replace(
        part,
        hashes=part.hashes[keep],
        categories=part.categories[keep],
        lines=part.lines[keep],
        qualities=part.qualities[keep],
    )
