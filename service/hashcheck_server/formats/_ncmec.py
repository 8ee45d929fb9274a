"""NCMEC-style hash-sharing XML: pages of image and video entries, and tombstones.

A page, as the hash-sharing service sends about a thousand entries at a time
(element names are matched without their XML namespace):

    <queryResult>
      <images count="2" maxTimestamp="...">
        <image>
          <id>4711</id>
          <classification>A1</classification>
          <fingerprints><md5>HEX</md5><sha1>HEX</sha1><pdq>HEX</pdq>...</fingerprints>
        </image>
        <deletedImage><id>4711</id></deletedImage>
      </images>
      <videos> <video>...</video> <deletedVideo>...</deletedVideo> </videos>
    </queryResult>

- An entry's hashes are its fingerprints of the algorithms we serve (`md5`,
  `sha1`, `sha256`, `pdq`), or of `algorithm` alone when one is given;
  others (`pdna`, ...) are passed over. Its classification becomes the
  category.
- A tombstone (`deletedImage`, `deletedVideo`) withdraws an earlier entry. It
  names the entry by `id` and may repeat its fingerprints; the store takes the
  hashes it recorded for that id, plus any fingerprints given, off the list.
- An entry left without a fingerprint to read (a PhotoDNA-only image, a
  SHA-1-only video read for MD5), or a tombstone without an id whose
  fingerprints are all of that kind, is skipped and counted in
  `ParsedFile.skipped`: the service shares such entries routinely, and one
  of them must not hold back the rest of the page.
- A malformed hex fingerprint, or a tombstone that names nothing (no id and
  no fingerprint at all), is a problem and rejects the file, as does XML
  that is not well-formed.

Record numbers (a hash's `lines` entry, a problem's line) count entries and
tombstones from 1 in document order. This reader does not stream: it reads
the whole file into memory first (reporting progress as it does), then walks
that copy with ElementTree's iterparse, clearing each entry once it is read
so that the tree keeps only an empty element per entry. A page costs about
its size in bytes plus its hashes, which suits pages of a few thousand
entries as the service sends them.
"""

from __future__ import annotations

import xml.etree.ElementTree as ElementTree
from typing import BinaryIO

from hashcheck._algorithms import Algorithm
from hashcheck_server.errors import ImportRejected
from hashcheck_server.formats._hex import BadHash, HexDecoder
from hashcheck_server.formats._parsed import (
    CategoryTable,
    Destinations,
    ParsedFile,
    finish_file,
)
from hashcheck_server.formats._problems import ProblemLog
from hashcheck_server.formats._source import Progress, read_all

__all__ = ["read_ncmec"]

_ENTRY_TAGS = {"image", "video"}
_TOMBSTONE_TAGS = {"deletedImage", "deletedVideo"}
_FINGERPRINTS = {
    "md5": Algorithm.MD5,
    "sha1": Algorithm.SHA1,
    "sha256": Algorithm.SHA256,
    "pdq": Algorithm.PDQ,
}


def read_ncmec(
    stream: BinaryIO,
    source: str,
    *,
    algorithm: Algorithm | None,
    progress: Progress | None,
    max_problems: int,
) -> ParsedFile:
    """Read one NCMEC-style XML page; see the module docstring."""
    data = read_all(stream, progress)
    reader = _NcmecReader(source, algorithm, ProblemLog(source, max_problems))
    try:
        for _, element in ElementTree.iterparse(_Bytes(data), events=("end",)):
            reader.read_element(element)
    except ElementTree.ParseError as error:
        raise ImportRejected(
            f"{source} is not well-formed XML ({error}); NCMEC hash-sharing "
            "pages are XML."
        ) from error
    return reader.finish()


class _Bytes:
    """A minimal file object over bytes for iterparse, without a second copy."""

    def __init__(self, data: bytearray) -> None:
        self._view = memoryview(data)
        self._offset = 0

    def read(self, size: int = -1) -> bytes:
        end = len(self._view) if size < 0 else self._offset + size
        chunk = bytes(self._view[self._offset : end])
        self._offset += len(chunk)
        return chunk


class _NcmecReader:
    def __init__(
        self, source: str, algorithm: Algorithm | None, problems: ProblemLog
    ) -> None:
        self._source = source
        self._algorithm = algorithm
        self._problems = problems
        self._categories = CategoryTable()
        self._destinations = Destinations()
        self._withdrawn = Destinations()
        self._record_ids: dict[str, list[tuple[Algorithm, bytes]]] = {}
        self._withdrawn_ids: list[str] = []
        self._records = 0
        self._skipped = 0
        self._saw_root = False

    def read_element(self, element: ElementTree.Element) -> None:
        tag = _local(element.tag)
        if tag == "queryResult":
            self._saw_root = True
        if tag in _ENTRY_TAGS:
            self._records += 1
            self._read_entry(element, self._records)
            element.clear()
        elif tag in _TOMBSTONE_TAGS:
            self._records += 1
            self._read_tombstone(element, self._records)
            element.clear()

    def _read_entry(self, element: ElementTree.Element, record: int) -> None:
        fingerprints = self._fingerprints(element, record)
        if fingerprints is None:
            return
        if not fingerprints:
            self._skipped += 1
            return

        category = self._categories.code(_child_text(element, "classification"))
        for algorithm, digest in fingerprints:
            self._destinations[algorithm].builder.add(digest, category, record)
        entry_id = _child_text(element, "id")
        if entry_id:
            self._record_ids.setdefault(entry_id, []).extend(fingerprints)

    def _read_tombstone(self, element: ElementTree.Element, record: int) -> None:
        fingerprints = self._fingerprints(element, record)
        if fingerprints is None:
            return
        entry_id = _child_text(element, "id")
        if not entry_id and not fingerprints:
            if _has_fingerprint_elements(element):
                self._skipped += 1
            else:
                self._problems.add(record, "tombstone without an id or a fingerprint")
            return

        if entry_id:
            self._withdrawn_ids.append(entry_id)
        for algorithm, digest in fingerprints:
            self._withdrawn[algorithm].builder.add(digest, -1, record)

    def _fingerprints(
        self, element: ElementTree.Element, record: int
    ) -> list[tuple[Algorithm, bytes]] | None:
        """(algorithm, hash) of the element's usable fingerprints; None on a problem."""
        found: list[tuple[Algorithm, bytes]] = []
        for holder in element.iter():
            if _local(holder.tag) != "fingerprints":
                continue
            for fingerprint in holder:
                algorithm = _FINGERPRINTS.get(_local(fingerprint.tag).lower())
                if algorithm is None or (
                    self._algorithm is not None and algorithm != self._algorithm
                ):
                    continue
                try:
                    digest = HexDecoder(algorithm).decode(
                        (fingerprint.text or "").strip()
                    )
                except BadHash as error:
                    self._problems.add(
                        record, f"{algorithm.value} fingerprint: {error}"
                    )
                    return None
                found.append((algorithm, digest))
        return found

    def finish(self) -> ParsedFile:
        if not self._saw_root and not self._records:
            raise ImportRejected(
                f"{self._source} is XML but not an NCMEC hash-sharing page "
                "(no <queryResult> and no image or video entries)."
            )
        self._problems.raise_if_any()
        withdrawn = {
            builder.algorithm: builder.build(CategoryTable()).hashes
            for builder in self._withdrawn.builders()
            if len(builder)
        }
        # A page of tombstones, or of entries all skipped, is still a page.
        if not self._destinations.builders() and (
            withdrawn or self._withdrawn_ids or self._skipped
        ):
            parsed = ParsedFile(self._source, "ncmec", self._records, {})
        else:
            parsed = finish_file(
                source=self._source,
                format="ncmec",
                records=self._records,
                builders=self._destinations.builders(),
                categories=self._categories,
                problems=self._problems,
                algorithm=self._algorithm,
            )
        return ParsedFile(
            parsed.source,
            parsed.format,
            parsed.records,
            parsed.by_algorithm,
            withdrawn=withdrawn,
            withdrawn_ids=tuple(self._withdrawn_ids),
            record_ids={
                entry_id: tuple(hashes) for entry_id, hashes in self._record_ids.items()
            },
            skipped=self._skipped,
            skipped_reason=f"without {self._wanted_fingerprint()} fingerprint",
        )

    def _wanted_fingerprint(self) -> str:
        if self._algorithm is None:
            return "an md5, sha1, sha256 or pdq"
        article = "a" if self._algorithm is Algorithm.PDQ else "an"
        return f"{article} {self._algorithm.value}"


def _local(tag: str) -> str:
    """A tag without its namespace: '{urn:x}image' -> 'image'."""
    return tag.rsplit("}", 1)[-1]


def _has_fingerprint_elements(element: ElementTree.Element) -> bool:
    """Whether the element holds any fingerprint, of an algorithm we read or not."""
    return any(
        len(holder) for holder in element.iter() if _local(holder.tag) == "fingerprints"
    )


def _child_text(element: ElementTree.Element, name: str) -> str:
    for child in element:
        if _local(child.tag) == name:
            return (child.text or "").strip()
    return ""
