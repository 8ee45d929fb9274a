"""Project VIC / CAID "VICS" JSON: media records, each with hashes and a category.

Layout, from the fields open-source importers know (the full schema is shared
only under agreement):

    VICS 1.x  {"odata.metadata": ".../DataModels/1.<n>.xml#Media", "value": [...]}
    VICS 2.0  {"@odata.context": ".../DataModels/2.0.xml/...", "value": [...]}

The data model header is checked before any record is read: a file that is
not VICS is rejected whole instead of yielding a list of bogus problems.

`value` holds media, or cases that hold their media in `Media`; the two may
mix. A media is an object with, among others:
- `MD5`, `SHA1`, `SHA256`: hex strings; null or empty means absent;
- `Hashes`: a list of `{"HashName": "MD5", "HashValue": "..."}` objects (the
  2.0 form; read in 1.x files too). Names are matched like algorithm names;
  PhotoDNA and other hash types are ignored;
- `Category`: the integer verdict, kept as its decimal string ("1"); a string
  holding an integer is accepted too; absent or null means no category.

Media are numbered from 1 in document order, cases flattened; a hash's `lines`
entry is the number of its media. Several media often share a hash: all are
kept, as the store merges them. Within one media a hash given both flat and
nested is kept once.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import BinaryIO

from hashcheck._algorithms import Algorithm
from hashcheck_server.errors import ImportRejected
from hashcheck_server.formats._hex import BadHash
from hashcheck_server.formats._parsed import (
    NO_CATEGORY,
    CategoryTable,
    Destination,
    Destinations,
    ParsedFile,
    finish_file,
    reject_empty,
)
from hashcheck_server.formats._problems import ProblemLog
from hashcheck_server.formats._source import Progress, read_all

__all__ = ["read_vics"]

# The header key of each VICS version, and the data model it must name.
_DATA_MODELS = {
    "odata.metadata": re.compile(r"/DataModels/1\.\d+\.xml(?:[#/]|$)"),
    "@odata.context": re.compile(r"/DataModels/2\.0\.xml(?:[#/]|$)"),
}

_FLAT_HASH_FIELDS = (
    ("MD5", Algorithm.MD5),
    ("SHA1", Algorithm.SHA1),
    ("SHA256", Algorithm.SHA256),
)

_EXPECTED_HEADER = (
    'a top-level "odata.metadata" naming a .../DataModels/1.x.xml model '
    '(VICS 1.x) or "@odata.context" naming .../DataModels/2.0.xml (VICS 2.0)'
)


def read_vics(
    stream: BinaryIO,
    source: str,
    *,
    algorithm: Algorithm | None,
    progress: Progress | None,
    max_problems: int,
) -> ParsedFile:
    """Read a VICS 1.x or 2.0 JSON file; see the module docstring."""
    data = read_all(stream, progress)
    if not data or data.isspace():
        raise reject_empty(source)

    media_list = _media_list(_load_json(data, source), source)
    reader = _VicsReader(algorithm, ProblemLog(source, max_problems))
    for number, media in enumerate(_flattened_media(media_list), start=1):
        reader.read_media(media, number)

    return reader.finish(source)


def _load_json(data: bytearray, source: str) -> object:
    try:
        return json.loads(data)
    except json.JSONDecodeError as error:
        raise ImportRejected(
            f"{source} is not valid JSON ({error.msg} at line {error.lineno}, "
            f"column {error.colno}); VICS files are JSON."
        ) from error
    except (ValueError, RecursionError) as error:
        raise ImportRejected(
            f"{source} cannot be read as JSON ({error}); VICS files are UTF-8 JSON."
        ) from error


def _media_list(document: object, source: str) -> list[object]:
    """The `value` list of a document whose data model header is VICS."""
    if not isinstance(document, dict):
        raise ImportRejected(
            f"{source} is not VICS JSON: expected {_EXPECTED_HEADER}, "
            f"found a top-level {_json_type(document)}."
        )
    _check_data_model(document, source)

    media_list = document.get("value")
    if not isinstance(media_list, list):
        raise ImportRejected(
            f'{source} has no "value" list; VICS files hold their media '
            "(or cases of media) there."
        )
    return media_list


def _check_data_model(document: dict[str, object], source: str) -> None:
    for key, model in _DATA_MODELS.items():
        named = document.get(key)
        if isinstance(named, str) and model.search(named):
            return

    found = [
        f'"{key}": {document[key]!r:.120}' for key in _DATA_MODELS if key in document
    ]
    seen = f"; found {', '.join(found)}" if found else "; found neither"
    raise ImportRejected(
        f"{source} is not Project VIC / CAID VICS JSON: expected "
        f"{_EXPECTED_HEADER}{seen}."
    )


def _flattened_media(media_list: list[object]) -> Iterator[object]:
    """Every media in document order, with cases opened up.

    A case's `Media` that is not a list is passed on as if it were one media,
    so that it is reported as a problem under a record number.
    """
    for entry in media_list:
        if not (isinstance(entry, dict) and "Media" in entry):
            yield entry
            continue

        case_media = entry["Media"]
        if isinstance(case_media, list):
            yield from case_media
        elif case_media is not None:
            yield case_media


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "list"
    return "object"


class _VicsReader:
    """Media to hashes, one builder per algorithm."""

    def __init__(self, algorithm: Algorithm | None, problems: ProblemLog) -> None:
        self._algorithm = algorithm
        self._problems = problems
        self._categories = CategoryTable()
        self._destinations = Destinations()
        self._records = 0
        self._flat_fields = [
            (field, self._destinations[named])
            for field, named in _FLAT_HASH_FIELDS
            if self._wants(named)
        ]

    def read_media(self, media: object, number: int) -> None:
        self._records += 1
        if not isinstance(media, dict):
            reason = f"expected a media object, found a {_json_type(media)}"
            self._problems.add(number, reason)
            return

        try:
            category = self._category_code(media.get("Category"))
            digests = self._hashes_of(media)
        except BadHash as bad:
            self._problems.add(number, str(bad))
            return

        for destination, digest in digests:
            destination.builder.add(digest, category, number)

    def finish(self, source: str) -> ParsedFile:
        return finish_file(
            source=source,
            format="vics",
            records=self._records,
            builders=self._destinations.builders(),
            categories=self._categories,
            problems=self._problems,
            algorithm=self._algorithm,
        )

    def _wants(self, algorithm: Algorithm) -> bool:
        return self._algorithm is None or algorithm is self._algorithm

    def _category_code(self, value: object) -> int:
        if value is None:
            return NO_CATEGORY

        if isinstance(value, str) and _is_integer(value):
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise BadHash(f"Category must be an integer, found a {_json_type(value)}")
        return self._categories.code(str(value))

    def _hashes_of(self, media: dict[str, object]) -> list[tuple[Destination, bytes]]:
        """The media's hashes of the wanted algorithms, each once, in field order."""
        found: list[tuple[Destination, bytes]] = []
        for field, destination in self._flat_fields:
            _add_hash(found, destination, media.get(field), field)

        for name, value in _nested_hashes(media.get("Hashes")):
            named = _algorithm_named(name)
            if named is not None and self._wants(named):
                destination = self._destinations[named]
                _add_hash(found, destination, value, f"Hashes {name}")
        return found


def _add_hash(
    found: list[tuple[Destination, bytes]],
    destination: Destination,
    value: object,
    field: str,
) -> None:
    if value is None or value == "":
        return
    if not isinstance(value, str):
        raise BadHash(f"{field} must be a hex string, found a {_json_type(value)}")

    try:
        digest = destination.decoder.decode(value.strip())
    except BadHash as bad:
        raise BadHash(f"{field}: {bad}") from None

    # A media has a handful of hashes: a list is the cheapest set here.
    if (destination, digest) not in found:
        found.append((destination, digest))


def _nested_hashes(hashes: object) -> Iterator[tuple[str, object]]:
    """(HashName, HashValue) pairs of a 2.0 `Hashes` list."""
    if hashes is None:
        return
    if not isinstance(hashes, list):
        raise BadHash(f"Hashes must be a list, found a {_json_type(hashes)}")

    for entry in hashes:
        if not isinstance(entry, dict):
            raise BadHash(
                f"Hashes entries must be objects, found a {_json_type(entry)}"
            )
        name = entry.get("HashName")
        if isinstance(name, str):
            yield name, entry.get("HashValue")


def _algorithm_named(name: str) -> Algorithm | None:
    try:
        return Algorithm.from_name(name)
    except ValueError:
        return None


def _is_integer(text: str) -> bool:
    return re.fullmatch(r"\s*-?\d+\s*", text) is not None
