"""The values the SDK hands back: hits, results of batches, and server info.

The words are those of the hashcheck.v1 API:

- hash: the fixed-width digest of one file, raw bytes (hex only for people).
- batch: hashes of one algorithm packed end to end, N * width bytes.
- hit: a checked hash that is on at least one of the hotline's lists; a hit
  names every list it is on, with that list's category for it.
- generation: the state of the server's lists that answered a batch. A whole
  batch is always answered by one generation.

Only hits become Python objects; a batch with no hits costs one result.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Generic, TypeVar

from hashcheck._algorithms import Algorithm

if TYPE_CHECKING:
    from hashcheck._receipts import Receipt

__all__ = [
    "AlgorithmInfo",
    "Batch",
    "BatchResult",
    "CheckResult",
    "Hit",
    "Info",
    "ListMatch",
]

ContextT = TypeVar("ContextT")


@dataclass(frozen=True, slots=True)
class ListMatch:
    """One list a hit is on, and how that list grades the hash.

    `category` is empty when the list does not grade its entries.
    """

    list: str
    category: str


@dataclass(frozen=True, slots=True)
class Hit:
    """A checked hash that is on at least one list.

    `position` is the hash's index in the batch it was sent in (0 is the
    first), so `hashes[hit.position]` is the caller's own value. `receipt` is
    the hit's signed receipt when the check asked for one (`want_receipts`),
    else None; `hashcheck.verify_receipt` checks it.
    """

    position: int
    hash: bytes
    algorithm: Algorithm
    lists: tuple[ListMatch, ...]
    generation: int
    receipt: Receipt | None = None
    #: PDQ: the Hamming distance to the known hash matched (0-256); None for
    #: exact algorithms. A PDQ hash near several known hashes is several
    #: hits at the same position, nearest first.
    distance: int | None = None

    @property
    def hex(self) -> str:
        """The hash as lowercase hex."""
        return self.hash.hex()

    @property
    def list_names(self) -> tuple[str, ...]:
        """The names of the lists the hash is on, in the server's order."""
        return tuple(match.list for match in self.lists)


@dataclass(frozen=True, slots=True)
class CheckResult:
    """The server's answer for one batch: how many were checked, and the hits.

        result = client.check(["d41d8cd98f00b204e9800998ecf8427e"])
        for hit in result.hits:
            print(hit.hex, hit.list_names)

    `hits` are in ascending position; hashes that did not hit are not listed.
    """

    algorithm: Algorithm
    generation: int
    checked: int
    hits: tuple[Hit, ...]

    @property
    def has_hits(self) -> bool:
        """Whether any hash of the batch is on a list."""
        return bool(self.hits)


@dataclass(frozen=True, slots=True)
class Batch(Generic[ContextT]):
    """Hashes of one algorithm, packed end to end, for the streaming calls.

    `hashes` holds N * `algorithm.width` bytes. `context` is anything the
    caller wants back with the batch's result (file paths, line numbers); the
    SDK never looks at it.
    """

    algorithm: Algorithm
    hashes: bytes
    context: ContextT

    @property
    def count(self) -> int:
        """How many hashes the batch holds."""
        return len(self.hashes) // self.algorithm.width


@dataclass(frozen=True, slots=True)
class BatchResult(CheckResult, Generic[ContextT]):
    """The answer for one batch of a stream, with the batch's own context.

    `offset` is how many hashes the stream carried before this batch, so
    `offset + hit.position` is a hit's index in the whole stream.
    """

    sequence: int
    offset: int
    context: ContextT


@dataclass(frozen=True, slots=True)
class AlgorithmInfo:
    """An algorithm the server answers. `hash_count` is set only for operators."""

    algorithm: Algorithm
    width: int
    hash_count: int | None


@dataclass(frozen=True, slots=True)
class Info:
    """What the server says about itself."""

    service_version: str
    generation: int
    generation_committed_at: float
    algorithms: tuple[AlgorithmInfo, ...]
    max_batch_hashes: int
    #: PDQ: the distance the server applies when a check names none, and
    #: the largest it allows; 0 from servers without PDQ.
    default_max_distance: int = 0
    max_distance_cap: int = 0
    #: The tenant the server authenticated the caller as; "" without tenants.
    tenant: str = ""
    #: A digest of the served generation's content, equal on every replica
    #: that serves the same data; "" from servers that record none.
    generation_digest: str = ""
