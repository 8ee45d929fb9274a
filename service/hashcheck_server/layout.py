"""The on-disk layout of a HashCheck data directory: one LMDB environment.

Named databases and their records:

- ``meta``
    ``format``       b"hashcheck-store/1"; a directory without it is refused.
    ``generation``   JSON {"number", "committed_at", "change", "digest"}: the
                     generation that the rest of this snapshot is. Every write
                     transaction that changes lists or tables increments it;
                     "digest" is the content digest (hashcheck_server.digest).
- ``tables``, per algorithm (``md5``, ``sha1``, ``sha256``), a base part:
    ``<alg>/header``     JSON {"count", "width", "filter_bits", "directory_bits",
                         "filter_probes", "sha256"} (sha256: of the rows)
    ``<alg>/rows``       count * width bytes: the sorted unique hashes
    ``<alg>/filter``     2**filter_bits / 8 bytes (see hashcheck_server.table)
    ``<alg>/directory``  (2**directory_bits + 1) little-endian uint32
  and optionally a delta part with the same four values under
  ``<alg>/delta/...``: hashes added since the base was rebuilt. Delta rows
  are numbered after the base's (row = base count + delta row), and no hash
  is in both parts.
  PDQ parts also hold their near-duplicate index (hashcheck_server.pdq_index):
    ``pdq/near/header``   JSON {"scheme", "count"}
    ``pdq/near/buckets``  (16, 65537) little-endian uint32: per 16-bit slot,
                          where each slot value's rows start in its list
    ``pdq/near/slotNN``   count uint32 rows, ordered by slot NN's value
  (``pdq/delta/near/...`` for the delta), written and deleted with the part.
- ``members``: ``<alg> NUL <list> NUL <category>`` -> a serialized roaring
  bitmap of the rows of <alg>'s table that <list> grades <category>.
- ``lists``: ``<list>`` -> JSON {"name", "source", "description",
  "created_at", "updated_at", "kind", "state"}: kind "block" (its hashes hit)
  or "allow" (known-benign hashes that never hit), state "live" or "staged"
  (stored, shown to operators, not served until promoted).
- ``records``: ``<list> NUL <record id>`` -> JSON [[algorithm, hex], ...]: the
  hashes an entry with an id brought (NCMEC entries), so that a later
  tombstone naming only the id can withdraw them. Promoting a staged list
  into a live one moves its records to the live list's name.
- ``tombstones``: ``<staged list>`` -> JSON {"record_ids": [id, ...],
  "hashes": [[algorithm, hex], ...]}: what the tombstones of a staged list's
  imports withdrew. They were applied to the staged list at import; they are
  kept here to be applied to the live list it is promoted into, and go with
  the promotion or the retirement of the staged list.
- ``tenants`` (hashcheck_server.tenants, opened there on first use):
  ``tenant/<name>`` -> JSON of the admitted company: lists, categories,
  limits, flags and its API keys as {"key_id", "digest"} (an HMAC, never the
  key); ``secret`` -> the 32-byte HMAC key; ``version`` -> JSON {"number",
  "changed_at"}, bumped by every tenant change. A tenant change also writes a
  new generation record (same digest), so snapshots carry it to replicas.
- ``quarantine`` (hashcheck_server.quarantine): ``<alg> NUL <raw hash>`` ->
  JSON {"algorithm", "hash", "held_at", "tenants", "window_seconds",
  "status", "changed_at"}: a hash that flooded, with status "held" (it gives
  no hits, as if allow-listed), "released" (hits again, and is never held
  automatically again) or "removed" (taken off every list). Holding and
  releasing commit a new generation; held hashes are part of the digest.
- ``disputes`` (hashcheck_server.disputes): ``<dispute id>`` -> JSON
  {"id", "tenant", "algorithm", "hash", "reason", "receipt", "evidence",
  "created_at", "status", "resolved_at", "note"}: a tenant contesting a hit,
  "open" until an operator makes it "upheld" or "rejected". Disputes change
  no answer, so they commit no generation.
- ``manifests`` (hashcheck_server.manifest): 8 bytes, the big-endian
  generation number -> the canonical JSON of that generation's manifest,
  kept when it was committed so that the hotline can sign the manifest of a
  past generation (`manifest --generation N`).
- ``withdrawals`` (hashcheck_server.withdrawals): 16 bytes, big-endian
  nanoseconds since the epoch (8), process id (4), counter (4) -> JSON
  {"time", "generation", "change", "list", "algorithm", "hashes"}: one event
  per list and algorithm of a change that stopped hashes hitting on a live
  block list ("hashes": the hex of the raw hashes end to end), or one per
  retired list ("algorithm" null, "hashes" empty). Written in the change's
  own transaction; tenants' withdrawal notices join them with the audit.

The audit log of hits is not here but in its own environment, ``audit/``
below the data directory by default (hashcheck_server.audit), so that
recording a hit never waits for an import's write transaction.

Large values are stored whole, so LMDB keeps each in contiguous overflow pages
and a read transaction can hand out a view of it without copying. Everything a
generation consists of lives in the one environment, so one write transaction
changes it atomically and a crash leaves the previous generation in place.
"""

from __future__ import annotations

import errno
import hashlib
import json
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import lmdb
import numpy as np
import numpy.typing as npt
from pyroaring import BitMap

from hashcheck._algorithms import Algorithm
from hashcheck_server import pdq_index
from hashcheck_server.errors import StoreCorrupt, StoreError, StoreFull
from hashcheck_server.integrity import disk_is_full, require_complete_data_file
from hashcheck_server.table import TableIndex, build_index

__all__ = [
    "Environment",
    "GenerationRecord",
    "ListRecord",
    "TableHeader",
]

FORMAT = b"hashcheck-store/1"

#: Address space reserved for the map. LMDB only grows the file as it fills,
#: so this bounds the store, not its disk use (1 TiB).
DEFAULT_MAP_SIZE = 1 << 40

_SEPARATOR = b"\x00"


@dataclass(frozen=True)
class GenerationRecord:
    number: int
    committed_at: float
    change: str
    #: hashcheck_server.digest.content_digest of this generation; "" in
    #: stores written before digests were recorded.
    digest: str = ""


@dataclass(frozen=True)
class TableHeader:
    count: int
    width: int
    filter_bits: int
    directory_bits: int
    #: hashcheck_server.table's filter kind; absent (1) in older stores.
    filter_probes: int = 1
    #: SHA-256 of the rows as stored, for manifests; "" in older stores.
    sha256: str = ""


#: What a list is for. Block lists produce hits; an allow list holds hashes
#: known to be benign, which never hit and are held back from block imports.
BLOCK = "block"
ALLOW = "allow"

#: Whether a list is served. A staged list is stored but produces no hits
#: until an operator promotes it.
LIVE = "live"
STAGED = "staged"


@dataclass(frozen=True)
class ListRecord:
    name: str
    source: str
    description: str
    created_at: float
    updated_at: float
    kind: str = BLOCK
    state: str = LIVE
    #: A staged list's hashes held back at import because a live allow list
    #: holds them, by algorithm name: `staged` shows them before promotion.
    held_back: dict[str, int] = field(default_factory=dict)

    @property
    def is_live_block(self) -> bool:
        return self.kind == BLOCK and self.state == LIVE

    @property
    def is_live_allow(self) -> bool:
        return self.kind == ALLOW and self.state == LIVE


class Environment:
    """An open data directory: the LMDB environment and its named databases."""

    def __init__(
        self,
        path: str | Path,
        *,
        readonly: bool = False,
        create: bool = False,
        map_size: int = DEFAULT_MAP_SIZE,
    ) -> None:
        self.path = Path(path)
        self._check_directory(create)
        try:
            self.lmdb = lmdb.open(
                str(self.path),
                map_size=map_size,
                max_dbs=16,
                readonly=readonly,
                create=create,
                # Lookups jump around the tables; read-ahead would only fill
                # the page cache with neighbours nobody asked for.
                readahead=False,
                max_readers=512,
            )
            # Before any page is read: a truncated file would SIGBUS here.
            require_complete_data_file(self.lmdb, self.path)
            self.meta = self._open_db(b"meta", readonly)
            self.tables = self._open_db(b"tables", readonly)
            self.members = self._open_db(b"members", readonly)
            self.lists = self._open_db(b"lists", readonly)
            self.records = self._open_db(b"records", readonly)
            self.tombstones = self._open_db(b"tombstones", readonly)
            self.quarantine = self._open_db(b"quarantine", readonly)
            self.disputes = self._open_db(b"disputes", readonly)
            self.withdrawals = self._open_db(b"withdrawals", readonly)
            self.manifests = self._open_db(b"manifests", readonly)
            self._check_format(create and not readonly)
        except lmdb.Error as error:
            raise translate_lmdb_error(error, self.path) from error

    def _check_directory(self, create: bool) -> None:
        if create:
            self.path.mkdir(parents=True, exist_ok=True)
        if not self.path.is_dir():
            raise StoreError(
                f"{self.path} is not a HashCheck data directory. Create one with "
                "`hashcheck-server import --data DIR ...` or point --data at an "
                "existing one."
            )
        if not create and not (self.path / "data.mdb").exists():
            raise StoreError(
                f"{self.path} holds no HashCheck store yet (no data.mdb). Import a "
                "list into it first: "
                "hashcheck-server import --data DIR --list NAME FILE"
            )

    def _open_db(self, name: bytes, readonly: bool) -> Any:
        try:
            return self.lmdb.open_db(name, create=not readonly)
        except lmdb.NotFoundError:
            # A read-only open of a store written before this database existed:
            # an empty database in memory stands in for it.
            return None

    def _check_format(self, initialize: bool) -> None:
        with self.lmdb.begin(write=initialize) as transaction:
            found = transaction.get(b"format", db=self.meta)
            if found is None and initialize:
                transaction.put(b"format", FORMAT, db=self.meta)
                write_generation_record(self, transaction, 0, "created")
                return
        if found != FORMAT:
            raise StoreCorrupt(
                f"{self.path} is an LMDB environment but not a HashCheck store "
                f"(format {found!r}, expected {FORMAT!r}). Point --data at a "
                "HashCheck data directory."
            )

    def read(self) -> Any:
        """A read transaction whose values are views of the map (zero-copy)."""
        return self.lmdb.begin(buffers=True)

    def write(self) -> Any:
        """The write transaction; LMDB lets one exist at a time, across processes."""
        return self.lmdb.begin(write=True, buffers=True)

    def close(self) -> None:
        self.lmdb.close()


def translate_lmdb_error(error: Exception, path: Path) -> StoreError:
    """The most specific store error for an LMDB failure."""
    if isinstance(error, lmdb.MapFullError):
        return StoreFull(
            f"The store at {path} reached its map size; nothing was changed. "
            "Start with a larger --map-size."
        )
    if (
        isinstance(error, lmdb.DiskError)
        or getattr(error, "errno", None) == errno.ENOSPC
        or disk_is_full(path)
    ):
        return StoreFull(
            f"The disk holding {path} is full; nothing was changed and the "
            "previous generation is still served. Free space and try again."
        )
    if isinstance(
        error, lmdb.InvalidError | lmdb.VersionMismatchError | lmdb.CorruptedError
    ):
        return StoreCorrupt(
            f"{path} does not hold a readable HashCheck store ({error}). Restore "
            "it from a snapshot or point --data at another directory."
        )
    return StoreError(f"The store at {path} failed: {error}")


#: The parts of an algorithm's table. The base is the big sorted table; the
#: delta holds hashes added since the base was last rebuilt, numbered after
#: the base's rows, so that a daily import rewrites only the delta.
BASE = "base"
DELTA = "delta"
TABLE_PARTS = (BASE, DELTA)


def _part_key(algorithm: Algorithm, part: str, name: str) -> bytes:
    if part == BASE:
        return f"{algorithm.value}/{name}".encode()
    return f"{algorithm.value}/{part}/{name}".encode()


def rows_key(algorithm: Algorithm, part: str = BASE) -> bytes:
    return _part_key(algorithm, part, "rows")


def filter_key(algorithm: Algorithm, part: str = BASE) -> bytes:
    return _part_key(algorithm, part, "filter")


def directory_key(algorithm: Algorithm, part: str = BASE) -> bytes:
    return _part_key(algorithm, part, "directory")


def header_key(algorithm: Algorithm, part: str = BASE) -> bytes:
    return _part_key(algorithm, part, "header")


def near_key(algorithm: Algorithm, part: str, name: str) -> bytes:
    """A value of a part's near-duplicate index; `name` is from pdq_index."""
    return _part_key(algorithm, part, name)


def membership_key(algorithm: Algorithm, list_name: str, category: str) -> bytes:
    return _SEPARATOR.join(
        (algorithm.value.encode(), list_name.encode(), category.encode())
    )


def read_generation_record(
    environment: Environment, transaction: Any
) -> GenerationRecord:
    raw = transaction.get(b"generation", db=environment.meta)
    if raw is None:
        raise StoreCorrupt(f"{environment.path} has no generation record.")
    return GenerationRecord(**json.loads(bytes(raw)))


def write_generation_record(
    environment: Environment,
    transaction: Any,
    number: int,
    change: str,
    digest: str = "",
) -> GenerationRecord:
    record = GenerationRecord(number, time.time(), change, digest)
    transaction.put(
        b"generation", json.dumps(asdict(record)).encode(), db=environment.meta
    )
    return record


def write_manifest(
    environment: Environment, transaction: Any, number: int, content: bytes
) -> None:
    """Keep the canonical JSON of generation `number`'s manifest."""
    transaction.put(_generation_key(number), content, db=environment.manifests)


def read_manifest(
    environment: Environment, transaction: Any, number: int
) -> bytes | None:
    """The kept manifest of generation `number`, None if none was kept."""
    if environment.manifests is None:
        return None
    raw = transaction.get(_generation_key(number), db=environment.manifests)
    return None if raw is None else bytes(raw)


def _generation_key(number: int) -> bytes:
    # Big-endian, so that the database lists generations in order.
    return number.to_bytes(8, "big")


def stored_algorithms(environment: Environment, transaction: Any) -> list[Algorithm]:
    return [
        algorithm
        for algorithm in Algorithm
        if transaction.get(header_key(algorithm), db=environment.tables) is not None
    ]


def read_table_header(
    environment: Environment,
    transaction: Any,
    algorithm: Algorithm,
    part: str = BASE,
) -> TableHeader:
    raw = transaction.get(header_key(algorithm, part), db=environment.tables)
    if raw is None:
        raise StoreCorrupt(
            f"{environment.path} has no {algorithm.value} {part} table header."
        )
    return TableHeader(**json.loads(bytes(raw)))


def map_table_part(
    environment: Environment, transaction: Any, algorithm: Algorithm, part: str
) -> tuple[npt.NDArray[np.uint8], TableIndex] | None:
    """A part's rows and index as views of the map, or None if it is absent.

    The views stay valid while `transaction` is open and has not written.
    """
    tables = environment.tables
    if transaction.get(header_key(algorithm, part), db=tables) is None:
        return None

    header = read_table_header(environment, transaction, algorithm, part)

    def view(key: bytes, dtype: type[np.generic]) -> npt.NDArray[Any]:
        buffer = transaction.get(key, db=tables)
        if buffer is None:
            raise StoreCorrupt(f"{environment.path} lacks the value {key.decode()}.")
        return np.frombuffer(buffer, dtype=dtype)

    rows = view(rows_key(algorithm, part), np.uint8).reshape(-1, algorithm.width)
    index = TableIndex(
        filter_bits=header.filter_bits,
        directory_bits=header.directory_bits,
        filter=view(filter_key(algorithm, part), np.uint8),
        directory=view(directory_key(algorithm, part), np.uint32),
        filter_probes=header.filter_probes,
    )
    return rows, index


def write_table_part(
    environment: Environment,
    transaction: Any,
    algorithm: Algorithm,
    part: str,
    rows: npt.NDArray[np.uint8],
) -> None:
    """Store sorted unique rows as a part, with a freshly built index."""
    index = build_index(rows)
    tables = environment.tables
    transaction.put(rows_key(algorithm, part), rows.reshape(-1).data, db=tables)
    transaction.put(
        filter_key(algorithm, part), index.filter.reshape(-1).data, db=tables
    )
    transaction.put(
        directory_key(algorithm, part), index.directory.reshape(-1).data, db=tables
    )
    header = TableHeader(
        count=rows.shape[0],
        width=algorithm.width,
        filter_bits=index.filter_bits,
        directory_bits=index.directory_bits,
        filter_probes=index.filter_probes,
        # Hashed here, where only the part written is: a manifest of every
        # generation then costs no pass over the tables that did not change.
        sha256=hashlib.sha256(rows.reshape(-1).data).hexdigest(),
    )
    transaction.put(
        header_key(algorithm, part),
        json.dumps(asdict(header)).encode(),
        db=tables,
    )
    if algorithm in pdq_index.NEAR_ALGORITHMS:
        for name, value in pdq_index.near_index_values(rows):
            transaction.put(near_key(algorithm, part, name), value, db=tables)


def delete_table_part(
    environment: Environment, transaction: Any, algorithm: Algorithm, part: str
) -> None:
    for key in (
        rows_key(algorithm, part),
        filter_key(algorithm, part),
        directory_key(algorithm, part),
        header_key(algorithm, part),
        *(near_key(algorithm, part, name) for name in pdq_index.VALUE_NAMES),
    ):
        transaction.delete(key, db=environment.tables)


def map_near_part(
    environment: Environment,
    transaction: Any,
    algorithm: Algorithm,
    part: str,
    rows: npt.NDArray[np.uint8],
) -> pdq_index.NearIndex:
    """A part's near-duplicate index over its mapped rows, zero-copy."""

    def read(name: str) -> Any:
        return transaction.get(near_key(algorithm, part, name), db=environment.tables)

    where = f"{environment.path}: the {algorithm.value} {part} table"
    return pdq_index.map_near_index(rows, read, where)


def read_memberships(
    environment: Environment, transaction: Any, algorithm: Algorithm
) -> Iterator[tuple[str, str, BitMap]]:
    """(list, category, rows) for every membership bitmap of the algorithm."""
    prefix = algorithm.value.encode() + _SEPARATOR
    cursor = transaction.cursor(db=environment.members)
    if not cursor.set_range(prefix):
        return
    for key, value in cursor:
        key = bytes(key)
        if not key.startswith(prefix):
            break
        _, list_name, category = key.split(_SEPARATOR, 2)
        yield list_name.decode(), category.decode(), BitMap.deserialize(bytes(value))


def read_list_records(environment: Environment, transaction: Any) -> list[ListRecord]:
    cursor = transaction.cursor(db=environment.lists)
    return [ListRecord(**json.loads(bytes(value))) for _, value in cursor]


def read_list_record(
    environment: Environment, transaction: Any, name: str
) -> ListRecord | None:
    raw = transaction.get(name.encode(), db=environment.lists)
    return None if raw is None else ListRecord(**json.loads(bytes(raw)))


def write_list_record(
    environment: Environment, transaction: Any, record: ListRecord
) -> None:
    transaction.put(
        record.name.encode(), json.dumps(asdict(record)).encode(), db=environment.lists
    )
