"""Readers of hash-list files: a file in, numpy arrays out. They never touch the store.

    parsed = read_hash_file("police-2024.csv", progress=bar.update_to)
    for algorithm, hashes in parsed.by_algorithm.items():
        ...  # hashes.hashes[i] came from line hashes.lines[i]

The contract:

    @dataclass(frozen=True)
    class ParsedHashes:
        algorithm: Algorithm
        hashes: np.ndarray          # (n, algorithm.width) uint8, in file order,
                                    # duplicates kept
        categories: np.ndarray      # (n,) int32 codes into category_names;
                                    # -1 where the file gave none
        category_names: tuple[str, ...]
        lines: np.ndarray           # (n,) int64: the line (the media's record
                                    # number for VICS) each hash came from

    @dataclass(frozen=True)
    class ParsedFile:
        source: str                 # file name, "<stdin>", or a stream's name
        format: str                 # "text" | "csv" | "vics" | "ncmec"
        records: int                # lines with a hash, CSV rows, VICS media,
                                    # NCMEC entries and tombstones
        by_algorithm: dict[Algorithm, ParsedHashes]
        skipped: int                # NCMEC entries without a hash to read
        skipped_reason: str         # why, e.g. "without an md5 fingerprint"

What a caller can rely on:
- All or nothing. Every malformed record becomes a Problem (source, line,
  reason); reading goes on to the end, then MalformedInput is raised with the
  first `max_problems` problems and the total count. No partial result is
  ever returned. The one exception is an NCMEC entry that holds no
  fingerprint of the algorithms read (only PhotoDNA, say): it is well formed
  but useless here, so it is skipped and counted in `skipped`.
- An empty input, or one without a single hash, raises ImportRejected with a
  sentence saying so; so do a missing file, a CSV without the wanted column
  and a JSON file whose header is not a VICS data model.
- Algorithms. With `algorithm` given, only hashes of that algorithm are read
  (and a text line prefixed with another type is a problem). Without it, a
  text file takes the algorithm of its first hash, from its prefix or its
  length (32 hex digits MD5, 40 SHA-1, 64 SHA-256); CSV and VICS files give
  every algorithm they name. PDQ is read only where it is named: by
  `algorithm`, a `pdq:` prefix, a PDQ column or a PDQ HashName.
- Every ParsedHashes in one ParsedFile is non-empty, and its category_names
  lists only the categories its hashes use (in no promised order).
- Hashes are not filtered: the hash of an empty file and duplicates come back
  as they were in the file. Dropping and merging them is the importer's job.
- `progress`, if given, is called with the number of bytes consumed so far,
  once per chunk read.
- Problem reasons never quote a hash or a whole line; at most a short type
  prefix or flag value that could not be understood.

Formats are described in their modules: _text (one hash a line, the fast one),
_csv (a header row; the Interpol ICSE export), _vics (Project VIC / CAID
VICS JSON 1.x and 2.0) and _ncmec (NCMEC-style XML pages with tombstones).
"""

from __future__ import annotations

from pathlib import Path
from typing import BinaryIO

from hashcheck._algorithms import Algorithm
from hashcheck_server.formats._csv import read_csv
from hashcheck_server.formats._ncmec import read_ncmec
from hashcheck_server.formats._parsed import ParsedFile, ParsedHashes
from hashcheck_server.formats._source import (
    Progress,
    open_source,
    source_name,
)
from hashcheck_server.formats._text import read_text
from hashcheck_server.formats._vics import read_vics

__all__ = [
    "FORMATS",
    "ParsedFile",
    "ParsedHashes",
    "infer_format",
    "read_hash_file",
]

FORMATS = ("text", "csv", "icse", "vics", "ncmec")

_FORMAT_BY_SUFFIX = {
    ".csv": "csv",
    ".tsv": "csv",
    ".json": "vics",
    ".xml": "ncmec",
}


def infer_format(name: str) -> str:
    """The format a file name's suffix suggests, text when it suggests none.

    `.csv` and `.tsv` mean csv, `.json` vics and `.xml` ncmec. Plain lists
    come under many names (`.txt`, `.hashes`, `.md5`, `.sha1`, no suffix at
    all), so text is the default rather than an error.

        infer_format("ICSE-export.CSV")  # "csv"
    """
    suffix = Path(name).suffix.lower()
    return _FORMAT_BY_SUFFIX.get(suffix, "text")


def read_hash_file(
    source: str | Path | BinaryIO,
    *,
    format: str | None = None,
    algorithm: Algorithm | None = None,
    hash_column: str | None = None,
    category_column: str | None = None,
    progress: Progress | None = None,
    max_problems: int = 20,
) -> ParsedFile:
    """Read every hash of a hash-list file, or raise; never a partial result.

    `source` is a path, "-" for standard input, or a binary stream (left open).
    `format` defaults to what the name suggests (see infer_format).
    `hash_column` and `category_column` apply to CSV files only.

        parsed = read_hash_file("list.txt", algorithm=Algorithm.MD5)
        md5 = parsed.by_algorithm[Algorithm.MD5].hashes  # (n, 16) uint8

    Raises MalformedInput for unreadable records and ImportRejected for a file
    that cannot be used at all; ValueError for arguments that make no sense.
    """
    name = source_name(source)
    chosen = format if format is not None else infer_format(name)
    _check_arguments(chosen, hash_column, category_column)

    with open_source(source) as stream:
        # The Interpol ICSE export is a semicolon CSV with a Baseline column,
        # which the CSV reader detects; "icse" just names it.
        if chosen in ("csv", "icse"):
            return read_csv(
                stream,
                name,
                algorithm=algorithm,
                hash_column=hash_column,
                category_column=category_column,
                progress=progress,
                max_problems=max_problems,
            )
        readers = {"vics": read_vics, "ncmec": read_ncmec}
        reader = readers.get(chosen, read_text)
        return reader(
            stream,
            name,
            algorithm=algorithm,
            progress=progress,
            max_problems=max_problems,
        )


def _check_arguments(
    format: str, hash_column: str | None, category_column: str | None
) -> None:
    if format not in FORMATS:
        known = ", ".join(FORMATS)
        raise ValueError(f"Unknown hash-list format {format!r}; use one of: {known}.")

    is_csv = format in ("csv", "icse")
    if not is_csv and (hash_column is not None or category_column is not None):
        raise ValueError(
            f"hash_column and category_column apply to CSV files only, "
            f"not to the {format} format."
        )
