"""The audit log: every hit reported to a tenant, recorded durably before the reply.

The hotline must be able to show who was told about which hash and when, so
that the 24-hour notice-and-takedown rule can be followed up. Only hits are
recorded; a hash that missed is never written here, nor anywhere else.

Where: its own LMDB environment, ``DATA/audit/`` unless `serve --audit DIR`
says otherwise. Not the data directory's environment, because LMDB has one
writer per environment: recording a hit would wait behind an import's long
write transaction (minutes for a large list), and an import would wait for
hits. A separate environment also gets its own map, its own backups and its
own retention, and a data directory may be replaced by a snapshot without
touching the audit.

Layout: one named database, ``hits``:

- key: 16 bytes, big-endian: nanoseconds since the epoch (8), the recording
  process id (4), a per-process counter (4). Keys sort by time, and the
  worker processes of one machine never collide;
- value: JSON {"time", "tenant", "algorithm", "hash", "lists",
  "request_id", "peer", "generation", "sequence"}, where "time" is seconds
  since the epoch, "hash" is hex and "lists" holds {"list", "category"}
  pairs: exactly the provenance the tenant was shown.

Durability: a call's hits are committed, with LMDB's fsync, before its reply
leaves the server. If that fails, the call fails (UNAVAILABLE) and the hits
are not reported. One writer thread per process commits: `submit` queues a
batch's entries and returns a ticket at once, and the writer commits all
that queued while it was syncing in one transaction, so concurrent hits
share an fsync. The ticket's `wait` returns once its entries are durable.
Handing the entries over instead of committing in the caller's thread lets
a stream look up its next batch while the last one's fsync runs (an fsync
costs milliseconds here, as long as the lookup of 100,000 hashes), and
keeps other processes the only ones to ever wait inside LMDB's writer mutex.
A unary call, which waits at once, commits in its own thread instead when
no commit is running (`submit(..., inline=True)`).

Recorded is not always delivered: a stream looks batches up ahead of their
replies, so when its client goes away mid-stream, the hits of up to a few
batches (servicer._STREAM_READ_AHEAD) may be recorded without their replies
having been sent. The audit errs on that side on purpose: a hit is never
reported unrecorded, and an entry says what the tenant asked about and
would have been told.

Retention: `prune(cutoff)` deletes entries older than a time, in small
transactions; servers prune on their own once an hour (`AuditPruner`), and
`hashcheck-server audit prune` does it by hand.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import struct
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lmdb
from prometheus_client import Gauge

from hashcheck._algorithms import Algorithm
from hashcheck_server import layout
from hashcheck_server.caller import Caller
from hashcheck_server.errors import AuditFailed, StoreError
from hashcheck_server.generation import TableHits

__all__ = [
    "AuditEntry",
    "AuditLog",
    "AuditPruner",
    "AuditRecord",
    "AuditTicket",
    "records_for_hits",
]

logger = logging.getLogger(__name__)

#: The audit's map: LMDB grows the file as it fills, so this bounds, not
#: reserves. 64 GiB is some 200 million hits.
AUDIT_MAP_SIZE = 64 << 30

_KEY = struct.Struct(">QII")
_LAST_NANOSECOND = (1 << 64) - 1
_PRUNE_CHUNK = 10_000


@dataclass(frozen=True)
class AuditEntry:
    """One hit as it was reported."""

    time: float
    tenant: str
    algorithm: str
    hash: str
    lists: tuple[tuple[str, str], ...]
    request_id: str
    peer: str
    generation: int
    sequence: int = 0
    #: PDQ only: the Hamming distance to the listed hash the caller was told
    #: of; a hit at 30 is weaker evidence than one at 0.
    distance: int | None = None

    def to_json(self) -> bytes:
        # Spelled out rather than dataclasses.asdict, which deep-copies every
        # field and cost six times as much: this runs once per hit, on the
        # path of the reply.
        fields: dict[str, object] = {
            "time": self.time,
            "tenant": self.tenant,
            "algorithm": self.algorithm,
            "hash": self.hash,
            "lists": [{"list": n, "category": c} for n, c in self.lists],
        }
        if self.distance is not None:
            fields["distance"] = self.distance
        fields |= {
            "request_id": self.request_id,
            "peer": self.peer,
            "generation": self.generation,
            "sequence": self.sequence,
        }
        return json.dumps(fields, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> AuditEntry:
        fields = json.loads(raw)
        fields["lists"] = tuple((m["list"], m["category"]) for m in fields["lists"])
        return cls(**fields)


#: An entry as the audit stores it: its time and its JSON value.
AuditRecord = tuple[float, bytes]


class AuditLog:
    """An open audit environment.

    audit = AuditLog.open(Path("data/audit"))
    audit.record([entry, ...])         # durable when this returns
    ticket = audit.submit(records_for_hits(caller, algorithm, batch, hits))
    ...                                # other work while the entries commit
    ticket.wait()                      # durable now, or AuditFailed
    for entry in audit.entries(since=time.time() - 86400, tenant="acme"):
        ...
    """

    def __init__(
        self, path: Path, environment: Any, hits: Any, backlog: Gauge | None = None
    ) -> None:
        self.path = path
        self._environment = environment
        self._hits = hits
        #: Records handed to `submit` and not yet committed.
        self._backlog = backlog
        #: Serialises this process's write transactions (commits and prunes).
        self._write_lock = threading.Lock()
        #: Tickets waiting for the writer; guarded by _queue_changed.
        self._queue: list[AuditTicket] = []
        self._queue_changed = threading.Condition()
        self._writer: threading.Thread | None = None
        self._is_closing = False
        self._counter = itertools.count()
        self._pid = os.getpid()

    @classmethod
    def open(
        cls, path: Path, *, readonly: bool = False, backlog: Gauge | None = None
    ) -> AuditLog:
        if readonly and not (path / "data.mdb").exists():
            raise StoreError(
                f"{path} holds no audit log yet: no server has recorded a hit there."
            )
        try:
            path.mkdir(parents=True, exist_ok=True)
            environment = lmdb.open(
                str(path),
                map_size=AUDIT_MAP_SIZE,
                max_dbs=2,
                readonly=readonly,
                max_readers=512,
            )
            hits = environment.open_db(b"hits", create=not readonly)
        except lmdb.Error as error:
            raise layout.translate_lmdb_error(error, path) from error
        return cls(path, environment, hits, backlog)

    def record(self, entries: Sequence[AuditEntry]) -> None:
        """Append entries durably, or raise AuditFailed; see Durability above."""
        self.submit([(entry.time, entry.to_json()) for entry in entries]).wait()

    def submit(
        self, records: Sequence[AuditRecord], *, inline: bool = False
    ) -> AuditTicket:
        """Hand records to the audit; the ticket tells when they are durable.

        They are queued for the writer thread, so that the caller can go on
        meanwhile (a stream looks up its next batches). With `inline`, for a
        caller that will wait at once anyway, they are committed in the
        caller's thread when no commit is running, which spares two thread
        hand-overs (a few tenths of a millisecond of a unary call); when one
        is running they queue as usual and share the next commit.
        """
        ticket = AuditTicket(records)
        if not records:
            ticket.settle(None)
            return ticket
        with self._queue_changed:
            if self._is_closing:
                ticket.settle(StoreError(f"The audit log {self.path} is closed."))
                return ticket
            self._count_backlog(len(records))
            if not (inline and self._write_lock.acquire(blocking=False)):
                self._queue.append(ticket)
                self._start_writer()
                self._queue_changed.notify()
                return ticket
        try:
            self._write([ticket])
        finally:
            self._write_lock.release()
        return ticket

    def _count_backlog(self, change: int) -> None:
        if self._backlog is not None:
            self._backlog.inc(change)

    def _start_writer(self) -> None:
        """Start the writer thread on the first submit (under _queue_changed)."""
        if self._writer is None:
            self._writer = threading.Thread(
                target=self._write_queued, name="audit-writer", daemon=True
            )
            self._writer.start()

    def _write_queued(self) -> None:
        """The writer thread: commit whatever queued, until closed and drained."""
        while True:
            with self._queue_changed:
                while not self._queue and not self._is_closing:
                    self._queue_changed.wait()
                if not self._queue:
                    return
                group, self._queue = self._queue, []
            self._commit(group)

    def _commit(self, group: list[AuditTicket]) -> None:
        """Write a group of tickets, once no other thread of ours writes."""
        with self._write_lock:
            self._write(group)

    def _write(self, group: list[AuditTicket]) -> None:
        """Every record of the group in one transaction; settle each ticket.

        The caller holds _write_lock.
        """
        error: Exception | None = None
        try:
            with self._environment.begin(write=True) as txn:
                for ticket in group:
                    for at, value in ticket.records:
                        txn.put(self._next_key(at), value, db=self._hits)
        except Exception as failure:
            # Whatever failed, every waiting call must learn it: none of them
            # may report a hit that is not recorded.
            count = sum(len(ticket.records) for ticket in group)
            logger.exception("cannot record %d hits in the audit", count)
            error = failure
        for ticket in group:
            ticket.settle(error)
            self._count_backlog(-len(ticket.records))

    def entries(
        self, *, since: float | None = None, tenant: str | None = None
    ) -> Iterator[AuditEntry]:
        """Entries in time order, from `since` on, of one tenant or all."""
        start = _KEY.pack(_nanoseconds(since or 0.0), 0, 0)
        with self._environment.begin(db=self._hits) as transaction:
            cursor = transaction.cursor()
            if not cursor.set_range(start):
                return
            for _, value in cursor:
                entry = AuditEntry.from_json(bytes(value))
                if tenant is None or entry.tenant == tenant:
                    yield entry

    def prune(self, cutoff: float) -> int:
        """Delete entries older than `cutoff` (seconds since the epoch)."""
        end = _KEY.pack(_nanoseconds(cutoff), 0, 0)
        removed = 0
        while True:
            with self._write_lock, self._environment.begin(write=True) as txn:
                cursor = txn.cursor(db=self._hits)
                chunk = 0
                if cursor.first():
                    while chunk < _PRUNE_CHUNK and cursor.key() < end:
                        if not cursor.delete():
                            break
                        chunk += 1
            removed += chunk
            if chunk < _PRUNE_CHUNK:
                return removed

    def close(self) -> None:
        """Commit what is queued, stop the writer, close the environment."""
        with self._queue_changed:
            self._is_closing = True
            self._queue_changed.notify()
            writer = self._writer
        if writer is not None:
            writer.join()
        # An inline commit may still be running in a caller's thread.
        with self._write_lock:
            self._environment.close()

    def _next_key(self, at: float) -> bytes:
        return _KEY.pack(_nanoseconds(at), self._pid, next(self._counter) & 0xFFFFFFFF)


class AuditTicket:
    """One batch's records on their way to disk."""

    def __init__(self, records: Sequence[AuditRecord]) -> None:
        self.records = records
        self._settled = threading.Event()
        self._error: Exception | None = None

    def settle(self, error: Exception | None) -> None:
        self._error = error
        self._settled.set()

    def wait(self) -> None:
        """Return once the records are durable; AuditFailed if they never will be."""
        self._settled.wait()
        if self._error is not None:
            raise AuditFailed(
                "The server cannot record hits right now, so it reports none; "
                "try again shortly."
            ) from self._error


class AuditPruner:
    """Prunes an audit log in a daemon thread: at start, then every interval."""

    def __init__(
        self,
        audit: AuditLog,
        retention_seconds: float,
        interval_seconds: float = 3600.0,
    ) -> None:
        self._audit = audit
        self._retention_seconds = retention_seconds
        self._interval_seconds = interval_seconds
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name="audit-pruner", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        while True:
            try:
                removed = self._audit.prune(time.time() - self._retention_seconds)
                if removed:
                    logger.info("pruned %d audit entries past retention", removed)
            except Exception:
                logger.exception("pruning the audit failed; trying again later")
            if self._stop.wait(self._interval_seconds):
                return


def records_for_hits(
    caller: Caller | None,
    algorithm: Algorithm,
    batch: bytes,
    hits: TableHits,
    sequence: int = 0,
) -> list[AuditRecord]:
    """One record per hit of a batch, as the caller was told about it.

    The values are what `AuditEntry.to_json` writes, but built from one
    template per batch: every field but the hash and its lists is the same
    for all hits of a batch, so each hit costs one join instead of a JSON
    encoding (a fifth of a worker's time at 0.1% hits otherwise).
    """
    now = time.time()
    width = algorithm.width
    head, tail = _record_template(caller, algorithm, hits.generation, sequence, now)
    lists_json = [
        _lists_json(tuple((match.list, match.category) for match in provenance))
        for provenance in hits.provenances
    ]
    distances_json = _distances_json(hits)
    return [
        (
            now,
            b"".join(
                (
                    head,
                    batch[position * width : (position + 1) * width].hex().encode(),
                    b'","lists":',
                    lists_json[provenance],
                    distance,
                    tail,
                )
            ),
        )
        for position, provenance, distance in zip(
            hits.positions.tolist(),
            hits.provenance_of.tolist(),
            distances_json,
            strict=True,
        )
    ]


def _distances_json(hits: TableHits) -> list[bytes]:
    """Each hit's `,"distance":N` as to_json writes it; empty for exact hashes."""
    if hits.distances.size == 0:
        return [b""] * hits.count
    return [b',"distance":%d' % distance for distance in hits.distances.tolist()]


def _record_template(
    caller: Caller | None,
    algorithm: Algorithm,
    generation: int,
    sequence: int,
    now: float,
) -> tuple[bytes, bytes]:
    """The JSON before a hit's hex hash, and after its lists."""
    shared = AuditEntry(
        time=now,
        tenant=caller.tenant_name if caller else "",
        algorithm=algorithm.value,
        hash="",
        lists=(),
        request_id=caller.request_id if caller else "",
        peer=caller.peer if caller else "",
        generation=generation,
        sequence=sequence,
    )
    # to_json writes the hash, then the lists, then the rest: cut it there.
    encoded = shared.to_json()
    head, rest = encoded.split(b'"hash":"', 1)
    tail = rest.split(b'"lists":[]', 1)[1]
    return head + b'"hash":"', tail


def _lists_json(lists: tuple[tuple[str, str], ...]) -> bytes:
    return json.dumps(
        [{"list": name, "category": category} for name, category in lists],
        separators=(",", ":"),
    ).encode()


def _nanoseconds(seconds: float) -> int:
    """Seconds as a key's nanoseconds, clamped to what 8 bytes hold (to 2554)."""
    return min(max(0, int(seconds * 1e9)), _LAST_NANOSECOND)
