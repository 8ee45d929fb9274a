"""Withdrawal notices: which of a tenant's hits have since been taken off its lists.

A company that removed a file because its hash hit should learn when that
hash is withdrawn, so that it can restore the file. Tenants fetch their
notices with the ListWithdrawals RPC (`hashcheck withdrawals --since`).

Recording, at change time, in the change's own write transaction
(`HitChanges`, called by hashcheck_server.store). A change writes one event
per list and algorithm whose hits it ended, never one per tenant:

- `remove`: the hashes it took off each live block list;
- an import that takes hashes off a live block list (`--replace`, NCMEC
  tombstones): those hashes, per list;
- an import into, or the promotion of, a live allow list: the hashes that
  were hitting on block lists and are now allow-listed, per block list;
- `retire` of a live block list: one event naming the list and no hashes,
  so retiring a 20-million-hash list writes one small record.

Events live in the ``withdrawals`` database (hashcheck_server.layout), keyed
by time. Putting a hash on hold in the quarantine is no withdrawal: it waits
for an operator, whose `remove` then is one.

Answering, at query time (`list_withdrawals`), for the calling tenant only:

1. the events after `since`, read in the served generation's own
   transaction. None: the answer is empty and nothing else is read;
2. the tenant's hits from the audit, up to the last event, on the lists the
   events name: per hash, when it was first reported on each list;
3. of those hashes, the ones that no longer hit for the tenant, in one
   batched lookup of the served generation with its lists and categories;
4. each is withdrawn if an event after its hit took it off a list it was
   reported on: an event naming the hash (PDQ: a listed hash within the
   server's distance, since a tenant's PDQ hash is near the listed one, not
   equal to it) or the retirement of such a list. It is reported with the
   latest such event's time and generation, and those lists: only lists the
   tenant was told about.

Costs: recording is a few bitmap operations per change plus the ended hashes
themselves (on a 20-million-hash table, a 10,000-hash delta or removal still
commits in well under a second). A query reads the events since `since` and,
only when there are some, scans the audit up to the last of them (every
tenant's hits, since the audit is kept in time order: about a second per
200,000 hits), then looks up the tenant's candidate hashes once. A process
runs one audit scan at a time (`audit_scan`, shared with disputes): another
caller meanwhile gets RESOURCE_EXHAUSTED with a retry delay, so that these
rare calls never take the threads and cores that checks need.

The audit is per server: with replicas, a tenant hears of the hits that the
server answering it reported.
"""

from __future__ import annotations

import collections
import itertools
import json
import math
import os
import struct
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from pyroaring import BitMap

from hashcheck._algorithms import Algorithm
from hashcheck.v1 import hashcheck_pb2
from hashcheck_server import layout, quarantine
from hashcheck_server.audit import AuditLog
from hashcheck_server.errors import BadRequest, OverLimit, Unsupported
from hashcheck_server.generation import Generation, ListMatch

__all__ = [
    "HitChanges",
    "Notice",
    "WithdrawalEvent",
    "audit_scan",
    "list_withdrawals",
    "read_events",
    "withdrawal_notices",
]

_KEY = struct.Struct(">QII")
_LAST_NANOSECOND = (1 << 64) - 1
_counter = itertools.count()
#: Hashes looked up at once when checking which hits still hit.
_LOOKUP_CHUNK = 50_000
_POPCOUNT = np.array([bin(value).count("1") for value in range(256)], np.uint8)
_AUDIT_SCAN = threading.Lock()
#: How long a caller refused by `audit_scan` is told to wait.
_SCAN_RETRY_SECONDS = 1.0

_Key = tuple[Algorithm, bytes]
_Memberships = Iterable[tuple[str, str, BitMap]]


@dataclass(frozen=True)
class WithdrawalEvent:
    """One list (and algorithm) a change took hashes off, or a retired list."""

    time: float
    generation: int
    change: str
    list: str
    #: None for a retired list, whose hashes are not written.
    algorithm: Algorithm | None
    #: The raw hashes end to end; empty for a retired list.
    hashes: bytes

    def to_json(self) -> bytes:
        fields = {
            "time": self.time,
            "generation": self.generation,
            "change": self.change,
            "list": self.list,
            "algorithm": None if self.algorithm is None else self.algorithm.value,
            "hashes": self.hashes.hex(),
        }
        return json.dumps(fields, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> WithdrawalEvent:
        fields = json.loads(raw)
        algorithm = fields["algorithm"]
        return cls(
            time=fields["time"],
            generation=fields["generation"],
            change=fields["change"],
            list=fields["list"],
            algorithm=None if algorithm is None else Algorithm(algorithm),
            hashes=bytes.fromhex(fields["hashes"]),
        )


@dataclass(frozen=True)
class Notice:
    """A hash reported to the tenant as a hit that no longer hits for it."""

    algorithm: Algorithm
    hash: bytes
    withdrawn_at: float
    lists: tuple[str, ...]
    generation: int


class HitChanges:
    """The hits a change to the lists ends, noted in its write transaction.

        changes = HitChanges(environment, transaction, "remove")
        changes.note_removal(Algorithm.MD5, rows, list_name=None)
        ...                              # the change itself
        generation = ...                 # its generation record
        changes.record(generation)

    Only live block lists produce hits, so only they are watched; rows that
    a live allow list holds never hit and are left out.
    """

    def __init__(
        self,
        environment: layout.Environment,
        transaction: Any,
        change: str,
        imported: layout.ListRecord | None = None,
    ) -> None:
        self._environment = environment
        self._transaction = transaction
        self._change = change
        records = layout.read_list_records(environment, transaction)
        if imported is not None:
            records = [r for r in records if r.name != imported.name] + [imported]
        self._block = {r.name for r in records if r.is_live_block}
        self._allow = {r.name for r in records if r.is_live_allow}
        self._pending: list[tuple[str, Algorithm | None, bytes]] = []

    def note_removal(
        self, algorithm: Algorithm, rows: BitMap, list_name: str | None
    ) -> None:
        """`rows` leave one list, or every list: before the change is made.

        Held hashes in the quarantine that end up on no list are marked
        removed: the operator has decided on them.
        """
        memberships = list(
            layout.read_memberships(self._environment, self._transaction, algorithm)
        )
        allowed = self._allowed(memberships)
        dropped: dict[str, BitMap] = {}
        still_listed = BitMap()
        for name, _, bitmap in memberships:
            if list_name is not None and name != list_name:
                still_listed |= bitmap & rows
            elif name in self._block:
                dropped[name] = dropped.get(name, BitMap()) | (bitmap & rows)
        self._note(algorithm, {n: b - allowed for n, b in dropped.items()})

        delisted = rows - still_listed
        if delisted and quarantine.has_held(self._environment, self._transaction):
            base, delta = self._table_rows(algorithm)
            digests = _hashes_at(base, delta, delisted)
            width = algorithm.width
            quarantine.mark_delisted(
                self._environment,
                self._transaction,
                algorithm,
                (digests[i : i + width] for i in range(0, len(digests), width)),
            )

    def note_retirement(self, list_name: str) -> None:
        """A whole list goes: one event without its hashes."""
        if list_name in self._block:
            self._pending.append((list_name, None, b""))

    def note_promotion(self, staged: layout.ListRecord) -> None:
        """A staged list goes live: an allow list ends the hits it holds."""
        if staged.kind != layout.ALLOW:
            return
        for algorithm in layout.stored_algorithms(self._environment, self._transaction):
            memberships = list(
                layout.read_memberships(self._environment, self._transaction, algorithm)
            )
            promoted = _union(b for n, _, b in memberships if n == staged.name)
            allowed = self._allowed(memberships)
            dropped = {
                name: (rows & promoted) - allowed
                for name, rows in _by_list(memberships, self._block).items()
            }
            self._note(algorithm, dropped)

    def compare(
        self,
        algorithm: Algorithm,
        before: _Memberships,
        after: _Memberships,
        table_rows: tuple[npt.NDArray[np.uint8], npt.NDArray[np.uint8]],
    ) -> None:
        """An import changed `before` into `after`, in the same row numbering.

        `table_rows` are the base and delta rows that numbering refers to.
        """
        before, after = list(before), list(after)
        allowed_before = self._allowed(before)
        allowed_after = self._allowed(after)
        hitting_after = _by_list(after, self._block)
        dropped = {
            name: (rows - allowed_before)
            - (hitting_after.get(name, BitMap()) - allowed_after)
            for name, rows in _by_list(before, self._block).items()
        }
        self._note(algorithm, dropped, table_rows)

    def record(self, generation: int) -> None:
        """Write the events noted, as part of the change's generation."""
        database = self._environment.withdrawals
        if database is None or not self._pending:
            return
        now = time.time()
        pid = os.getpid()
        for list_name, algorithm, hashes in self._pending:
            event = WithdrawalEvent(
                now, generation, self._change, list_name, algorithm, hashes
            )
            key = _KEY.pack(_nanoseconds(now), pid, next(_counter) & 0xFFFFFFFF)
            self._transaction.put(key, event.to_json(), db=database)
        self._pending = []

    def _note(
        self,
        algorithm: Algorithm,
        dropped: dict[str, BitMap],
        table_rows: tuple[npt.NDArray[np.uint8], npt.NDArray[np.uint8]] | None = None,
    ) -> None:
        dropped = {name: rows for name, rows in dropped.items() if rows}
        if not dropped:
            return
        base, delta = table_rows or self._table_rows(algorithm)
        for name, rows in sorted(dropped.items()):
            self._pending.append((name, algorithm, _hashes_at(base, delta, rows)))

    def _allowed(self, memberships: _Memberships) -> BitMap:
        return _union(b for n, _, b in memberships if n in self._allow)

    def _table_rows(
        self, algorithm: Algorithm
    ) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.uint8]]:
        """The base and delta rows as views; read only, before any write to them."""
        found = []
        for part in layout.TABLE_PARTS:
            mapped = layout.map_table_part(
                self._environment, self._transaction, algorithm, part
            )
            empty = np.empty((0, algorithm.width), dtype=np.uint8)
            found.append(empty if mapped is None else mapped[0])
        return found[0], found[1]


@contextmanager
def audit_scan() -> Iterator[None]:
    """One scan of the whole audit at a time in this process; else OverLimit.

    Refused rather than queued: a waiting call would hold a server thread.
    """
    if not _AUDIT_SCAN.acquire(blocking=False):
        raise OverLimit(
            "The server is busy looking through its audit for another caller; "
            "retry in a second.",
            retry_after_seconds=_SCAN_RETRY_SECONDS,
        )
    try:
        yield
    finally:
        _AUDIT_SCAN.release()


def read_events(
    environment: layout.Environment, transaction: Any, since: float
) -> list[WithdrawalEvent]:
    """The events after `since` (seconds since the epoch), oldest first."""
    database = environment.withdrawals
    if database is None:
        return []
    cursor = transaction.cursor(db=database)
    if not cursor.set_range(_KEY.pack(_nanoseconds(since), 0, 0)):
        return []
    events = (WithdrawalEvent.from_json(bytes(value)) for _, value in cursor)
    return [event for event in events if event.time > since]


def list_withdrawals(
    generation: Generation,
    audit: AuditLog | None,
    request: hashcheck_pb2.ListWithdrawalsRequest,
    *,
    tenant: str,
    visible: Callable[[ListMatch], bool] | None,
    pdq_distance: int,
) -> hashcheck_pb2.ListWithdrawalsReply:
    """The ListWithdrawals reply for `tenant` (see the module docstring)."""
    since = request.since
    if not math.isfinite(since) or since < 0:
        raise BadRequest(
            "`since` must be a time in seconds since the epoch, 0 or later."
        )
    if audit is None:
        raise Unsupported(
            "This server keeps no audit of hits, so it cannot tell which of "
            "them were withdrawn."
        )
    notices = withdrawal_notices(
        generation,
        audit,
        tenant=tenant,
        visible=visible,
        since=since,
        pdq_distance=pdq_distance,
    )
    reply = hashcheck_pb2.ListWithdrawalsReply()
    for notice in notices:
        reply.withdrawals.add(
            algorithm=notice.algorithm.proto,
            hash=notice.hash,
            withdrawn_at=notice.withdrawn_at,
            lists=notice.lists,
            generation=notice.generation,
        )
    return reply


def withdrawal_notices(
    generation: Generation,
    audit: AuditLog,
    *,
    tenant: str,
    visible: Callable[[ListMatch], bool] | None = None,
    since: float = 0.0,
    pdq_distance: int = 31,
) -> list[Notice]:
    """The tenant's hits withdrawn after `since`, in the order they were withdrawn."""
    if generation.environment is None:
        return []
    events = read_events(generation.environment, generation.transaction, since)
    if not events:
        return []

    with audit_scan():
        told = _told_hits(audit, tenant, events)
    gone = _no_longer_hitting(generation, list(told), visible, pdq_distance)
    naming = _events_naming(events, gone, pdq_distance)
    retired: dict[str, list[WithdrawalEvent]] = collections.defaultdict(list)
    for event in events:
        if event.algorithm is None:
            retired[event.list].append(event)

    notices = []
    for key in gone:
        reported = told[key]
        relevant = [e for e in naming.get(key, ()) if _ended(e, reported)]
        for name in reported:
            relevant += [e for e in retired.get(name, ()) if _ended(e, reported)]
        if relevant:
            notices.append(_notice(key, relevant))
    return sorted(notices, key=lambda n: (n.withdrawn_at, n.hash))


def _told_hits(
    audit: AuditLog, tenant: str, events: Sequence[WithdrawalEvent]
) -> dict[_Key, dict[str, float]]:
    """Per hash the tenant was told hit: when, first, on each list events name."""
    last = max(event.time for event in events)
    named = {event.list for event in events}
    told: dict[_Key, dict[str, float]] = {}
    for entry in audit.entries(tenant=tenant):
        if entry.time > last:
            break
        lists = [name for name, _ in entry.lists if name in named]
        if not lists:
            continue
        key = (Algorithm(entry.algorithm), bytes.fromhex(entry.hash))
        first = told.setdefault(key, {})
        for name in lists:
            first.setdefault(name, entry.time)
    return told


def _no_longer_hitting(
    generation: Generation,
    keys: list[_Key],
    visible: Callable[[ListMatch], bool] | None,
    pdq_distance: int,
) -> list[_Key]:
    """The hashes among `keys` that give the tenant no hit now."""
    by_algorithm: dict[Algorithm, list[bytes]] = collections.defaultdict(list)
    for algorithm, digest in keys:
        by_algorithm[algorithm].append(digest)
    gone = []
    for algorithm, digests in by_algorithm.items():
        for start in range(0, len(digests), _LOOKUP_CHUNK):
            chunk = digests[start : start + _LOOKUP_CHUNK]
            hits = generation.check(
                algorithm, b"".join(chunk), max_distance=pdq_distance, visible=visible
            )
            hitting = set(hits.positions.tolist())
            gone += [
                (algorithm, digest)
                for position, digest in enumerate(chunk)
                if position not in hitting
            ]
    return gone


def _events_naming(
    events: Sequence[WithdrawalEvent], gone: Sequence[_Key], pdq_distance: int
) -> dict[_Key, list[WithdrawalEvent]]:
    """For each hash of `gone`, the events that name it (PDQ: within distance)."""
    candidates: dict[Algorithm, list[bytes]] = collections.defaultdict(list)
    for algorithm, digest in gone:
        candidates[algorithm].append(digest)
    packed = {
        algorithm: _rows(b"".join(digests), algorithm)
        for algorithm, digests in candidates.items()
    }

    naming: dict[_Key, list[WithdrawalEvent]] = collections.defaultdict(list)
    for event in events:
        if event.algorithm is None or event.algorithm not in packed:
            continue
        listed = _rows(event.hashes, event.algorithm)
        mine = packed[event.algorithm]
        if event.algorithm is Algorithm.PDQ:
            named = _within(mine, listed, pdq_distance)
        else:
            named = np.isin(_as_void(mine), _as_void(listed))
        for index in np.flatnonzero(named).tolist():
            naming[(event.algorithm, candidates[event.algorithm][index])].append(event)
    return naming


def _ended(event: WithdrawalEvent, reported: dict[str, float]) -> bool:
    """Whether the event took the hash off a list after it was reported there."""
    first = reported.get(event.list)
    return first is not None and event.time > first


def _notice(key: _Key, relevant: list[WithdrawalEvent]) -> Notice:
    last = max(relevant, key=lambda event: (event.time, event.generation))
    return Notice(
        algorithm=key[0],
        hash=key[1],
        withdrawn_at=last.time,
        lists=tuple(sorted({event.list for event in relevant})),
        generation=last.generation,
    )


def _hashes_at(
    base: npt.NDArray[np.uint8], delta: npt.NDArray[np.uint8], rows: BitMap
) -> bytes:
    """The hashes at table rows (base rows first, then the delta's), as bytes."""
    numbers = np.frombuffer(rows.to_array(), dtype=np.uint32).astype(np.intp)
    count = base.shape[0]
    in_delta = numbers[numbers >= count] - count
    picked = [base[numbers[numbers < count]], delta[in_delta[in_delta < len(delta)]]]
    return np.concatenate(picked).tobytes()


def _by_list(memberships: _Memberships, names: set[str]) -> dict[str, BitMap]:
    """The rows of each list among `names`, over all its categories."""
    rows: dict[str, BitMap] = {}
    for name, _, bitmap in memberships:
        if name in names:
            rows[name] = rows.get(name, BitMap()) | bitmap
    return rows


def _union(bitmaps: Iterable[BitMap]) -> BitMap:
    return BitMap.union(BitMap(), *bitmaps)


def _rows(packed: bytes, algorithm: Algorithm) -> npt.NDArray[np.uint8]:
    return np.frombuffer(packed, dtype=np.uint8).reshape(-1, algorithm.width)


def _as_void(rows: npt.NDArray[np.uint8]) -> npt.NDArray[np.void]:
    """Each row as one opaque value, so that whole hashes compare at once."""
    contiguous = np.ascontiguousarray(rows)
    voids: npt.NDArray[np.void] = contiguous.view(
        np.dtype((np.void, rows.shape[1]))
    ).reshape(-1)
    return voids


def _within(
    mine: npt.NDArray[np.uint8], listed: npt.NDArray[np.uint8], distance: int
) -> npt.NDArray[np.bool_]:
    """Which of `mine` are within a Hamming distance of any `listed` hash."""
    near = np.zeros(mine.shape[0], dtype=bool)
    if listed.shape[0] == 0:
        return near
    for index, row in enumerate(mine):
        bits = _POPCOUNT[np.bitwise_xor(listed, row)].sum(axis=1, dtype=np.int32)
        near[index] = bool(bits.min() <= distance)
    return near


def _nanoseconds(seconds: float) -> int:
    return min(max(0, int(seconds * 1e9)), _LAST_NANOSECOND)
