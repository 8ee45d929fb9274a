"""Changes to the hash lists: import, remove, retire. Each is one generation.

Every operation here runs in a single LMDB write transaction that ends by
incrementing the generation record (hashcheck_server.layout). Either all of a
change is committed or none of it: an import that fails half-way, a full disk
or a killed process leaves the previous generation exactly as it was, and
servers keep answering from it.

How an import changes a table (one algorithm at a time):

1. The imported hashes are sorted and deduplicated; of repeated records the
   last one's category wins, and the report counts the hashes so regraded.
2. Hashes already in the table keep their rows; new ones are appended after
   the old rows, so the membership bitmaps stay valid in this combined space.
3. The list's bitmaps are updated: each imported row moves to its category.
4. Rows on no list any more are dropped, the rest re-sorted, and every bitmap
   of the algorithm renumbered to the final rows. The filter and directory are
   rebuilt from the final rows.

Removing hashes and retiring lists only clear bits: the table keeps the dead
rows (they never hit) until the next import of that algorithm compacts them.

A change that ends hits (a removal, a retirement, a tombstone, a hash put on
an allow list) also writes withdrawal events in its transaction, a few per
change (hashcheck_server.withdrawals), so tenants can learn of it.

Tombstones in an import into a staged list take effect twice: on the staged
list at once, and on the live list it is later promoted into. What they
withdrew is kept beside the staged list until then (layout ``tombstones``),
and its NCMEC record ids move into the live list with its hashes, so that
staging a page and promoting it ends where importing it live would have.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from dataclasses import replace as replace_record
from pathlib import Path
from typing import Any

import lmdb
import numpy as np
import numpy.typing as npt
from pyroaring import BitMap

from hashcheck._algorithms import Algorithm
from hashcheck_server import layout
from hashcheck_server.errors import ImportRejected, UnknownList
from hashcheck_server.lookup import LayeredTable, SortedTable
from hashcheck_server.table import (
    build_index,
    sort_unique_labelled_rows,
    sort_unique_rows,
)
from hashcheck_server.withdrawals import HitChanges
from hashcheck_server.writes import commit_generation

__all__ = [
    "Entries",
    "HashStore",
    "ImportReport",
    "ListSummary",
]

logger = logging.getLogger(__name__)

#: List names become LMDB keys (at most 511 bytes, with algorithm and category).
MAX_NAME_BYTES = 200


@dataclass(frozen=True)
class Entries:
    """Hashes of one algorithm to put on a list, each with its category.

    `hashes` is (n, width) uint8; `categories[i]` indexes `category_names` for
    hashes[i]. Repeats are allowed: the last record of a hash wins.
    """

    algorithm: Algorithm
    hashes: npt.NDArray[np.uint8]
    categories: npt.NDArray[np.int32]
    category_names: tuple[str, ...]

    @classmethod
    def graded_alike(
        cls, algorithm: Algorithm, hashes: npt.NDArray[np.uint8], category: str = ""
    ) -> Entries:
        """Entries that all share one category."""
        codes = np.zeros(hashes.shape[0], dtype=np.int32)
        return cls(algorithm, hashes, codes, (category,))


@dataclass
class AlgorithmReport:
    """What an import did to one algorithm's part of a list."""

    records: int = 0
    added: int = 0
    updated: int = 0
    unchanged: int = 0
    removed: int = 0
    held_back: int = 0
    #: Hashes whose records in this import gave them different categories;
    #: the last record's is kept.
    regraded: int = 0
    table_hashes: int = 0


@dataclass
class ImportReport:
    """What an import did, per algorithm, and the generation it produced."""

    list_name: str
    generation: int = 0
    seconds: float = 0.0
    algorithms: dict[Algorithm, AlgorithmReport] = field(default_factory=dict)

    def total(self, name: str) -> int:
        return sum(getattr(report, name) for report in self.algorithms.values())


@dataclass(frozen=True)
class Withdrawals:
    """What an import's source withdrew: hashes, and ids of earlier entries.

    NCMEC-style tombstones name an earlier entry by id and may repeat its
    hashes; the store takes both off the list.
    """

    hashes: dict[Algorithm, npt.NDArray[np.uint8]] = field(default_factory=dict)
    record_ids: tuple[str, ...] = ()

    @property
    def is_empty(self) -> bool:
        return not self.record_ids and not any(h.size for h in self.hashes.values())

    def merged(self, later: Withdrawals) -> Withdrawals:
        """Both sets of withdrawals, each id and hash once."""
        record_ids = tuple(dict.fromkeys(self.record_ids + later.record_ids))
        hashes = {}
        for algorithm in self.hashes.keys() | later.hashes.keys():
            parts = [
                w.hashes[algorithm] for w in (self, later) if algorithm in w.hashes
            ]
            hashes[algorithm] = np.unique(np.concatenate(parts), axis=0)
        return Withdrawals(hashes, record_ids)

    def to_json(self) -> bytes:
        hashes = [
            [algorithm.value, row.tobytes().hex()]
            for algorithm, rows in sorted(self.hashes.items(), key=lambda i: i[0].value)
            for row in rows
        ]
        return json.dumps(
            {"record_ids": list(self.record_ids), "hashes": hashes}
        ).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> Withdrawals:
        value = json.loads(raw)
        found: dict[Algorithm, list[bytes]] = {}
        for algorithm_name, hex_hash in value["hashes"]:
            found.setdefault(Algorithm(algorithm_name), []).append(
                bytes.fromhex(hex_hash)
            )
        return cls(_stacked(found), tuple(value["record_ids"]))


@dataclass(frozen=True)
class ListSummary:
    """A list's metadata and how many hashes it holds per algorithm and category."""

    record: layout.ListRecord
    counts: dict[Algorithm, dict[str, int]]

    @property
    def total(self) -> int:
        return sum(sum(by_category.values()) for by_category in self.counts.values())


class HashStore:
    """The write side of a data directory, for the operator's commands.

        store = HashStore.open("data", create=True)
        report = store.import_entries("police-2026-12", [entries], source="police")
        store.close()

    One process at a time writes (LMDB serializes write transactions); any
    number of servers read meanwhile.
    """

    def __init__(self, environment: layout.Environment) -> None:
        self.environment = environment

    @classmethod
    def open(
        cls,
        path: str | Path,
        *,
        create: bool = False,
        readonly: bool = False,
        map_size: int = layout.DEFAULT_MAP_SIZE,
    ) -> HashStore:
        return cls(
            layout.Environment(
                path, create=create, readonly=readonly, map_size=map_size
            )
        )

    def close(self) -> None:
        self.environment.close()

    def __enter__(self) -> HashStore:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def generation(self) -> layout.GenerationRecord:
        with self.environment.read() as transaction:
            return layout.read_generation_record(self.environment, transaction)

    def import_entries(
        self,
        list_name: str,
        entries: Iterable[Entries],
        *,
        source: str = "",
        description: str = "",
        replace: bool = False,
        rebuild: bool = False,
        kind: str = layout.BLOCK,
        staged: bool = False,
        withdrawals: Withdrawals | None = None,
        record_ids: Mapping[str, Sequence[tuple[Algorithm, bytes]]] | None = None,
    ) -> ImportReport:
        """Put hashes on a list, creating it if new, as one generation.

        With `replace`, the list afterwards holds exactly these entries;
        otherwise they are added to what it held, and a hash already on the
        list takes the category of the new record. `withdrawals` are then
        taken off the list, and `record_ids` remembered for later tombstones.

        A new list is a block list unless `kind` is "allow", and live unless
        `staged`. Hashes on a live allow list are held back from block lists
        and counted in the report.

        New hashes go to the algorithm's delta, so a daily import of some
        thousands rewrites only the delta and the bitmaps, not the base
        table. The base is rebuilt (merged with the delta and compacted)
        when `rebuild` is given, when there is no base yet, or when the
        delta would outgrow an eighth of the base.
        """
        _check_list_name(list_name)
        entries_by_algorithm = _group_by_algorithm(entries)
        started = time.perf_counter()
        report = ImportReport(list_name)

        with self._changing() as transaction:
            record = self._list_record_for_import(
                transaction, list_name, source, description, kind, staged
            )
            changes = HitChanges(self.environment, transaction, "import", record)
            withdrawn = self._withdrawn_hashes(
                transaction, list_name, withdrawals, record_ids or {}
            )
            if record.state == layout.STAGED and withdrawals is not None:
                kept = Withdrawals(withdrawn, withdrawals.record_ids)
                self._keep_for_promotion(transaction, list_name, kept)
            algorithms = set(entries_by_algorithm) | set(withdrawn)
            if replace:
                algorithms |= set(
                    layout.stored_algorithms(self.environment, transaction)
                )
            allow_lists = self._live_allow_lists(transaction, record)
            for algorithm in sorted(algorithms, key=lambda a: a.value):
                report.algorithms[algorithm] = self._import_algorithm(
                    transaction,
                    list_name,
                    entries_by_algorithm.get(algorithm),
                    algorithm,
                    replace=replace,
                    rebuild=rebuild,
                    withdrawn=withdrawn.get(algorithm),
                    allow_lists=allow_lists,
                    changes=changes,
                )
            self._remember_records(
                transaction, list_name, record_ids or {}, withdrawals
            )
            record = _with_held_back(record, report)
            layout.write_list_record(self.environment, transaction, record)
            change = f"import into {list_name}: +{report.total('added')}"
            report.generation = self._commit_generation(transaction, change)
            changes.record(report.generation)

        report.seconds = time.perf_counter() - started
        _log_import(report, record)
        return report

    def remove_hashes(
        self,
        algorithm: Algorithm,
        hashes: npt.NDArray[np.uint8],
        *,
        list_name: str | None = None,
    ) -> tuple[int, int]:
        """Take hashes off one list, or off every list; returns (removed, generation).

        `removed` counts hashes that were on at least one of the lists named.
        The hashes stop hitting once servers switch to the new generation.
        """
        with self._changing() as transaction:
            if list_name is not None:
                self._require_list(transaction, list_name)
            found_rows = self._find_rows(transaction, algorithm, hashes)
            changes = HitChanges(self.environment, transaction, "remove")
            changes.note_removal(algorithm, found_rows, list_name)
            removed = BitMap()
            for key, (name, _, bitmap) in self._membership_items(
                transaction, algorithm
            ):
                if list_name is not None and name != list_name:
                    continue
                dropped = bitmap & found_rows
                if dropped:
                    removed |= dropped
                    self._put_bitmap(transaction, key, bitmap - dropped)
            scope = list_name or "every list"
            generation = self._commit_generation(
                transaction, f"remove {len(removed)} {algorithm.value} from {scope}"
            )
            changes.record(generation)
        logger.info(
            "removed %d %s hashes from %s: generation %d",
            len(removed),
            algorithm.value,
            list_name or "every list",
            generation,
            extra={
                "event": "hashes_removed",
                "list": list_name or "",
                "algorithm": algorithm.value,
                "removed": len(removed),
                "generation": generation,
            },
        )
        return len(removed), generation

    def retire_list(self, list_name: str) -> tuple[int, int]:
        """Delete a list and its memberships; returns (hashes it held, generation)."""
        with self._changing() as transaction:
            self._require_list(transaction, list_name)
            changes = HitChanges(self.environment, transaction, "retire")
            changes.note_retirement(list_name)
            held = 0
            for algorithm in layout.stored_algorithms(self.environment, transaction):
                for key, (name, _, bitmap) in self._membership_items(
                    transaction, algorithm
                ):
                    if name == list_name:
                        held += len(bitmap)
                        transaction.delete(key, db=self.environment.members)
            transaction.delete(list_name.encode(), db=self.environment.lists)
            # A list of the same name later must not inherit its ids or tombstones.
            self._delete_records(transaction, list_name)
            self._forget_kept_withdrawals(transaction, list_name)
            generation = self._commit_generation(transaction, f"retire {list_name}")
            changes.record(generation)
        logger.info(
            "retired list %s (%d hashes): generation %d",
            list_name,
            held,
            generation,
            extra={
                "event": "list_retired",
                "list": list_name,
                "hashes": held,
                "generation": generation,
            },
        )
        return held, generation

    def promote(self, staged_name: str, *, into: str | None = None) -> int:
        """Make a staged list live, or fold it into a live list; returns the generation.

        With `into`, the tombstones of the staged list's imports first take
        what they withdrew off that live list; then the staged list's hashes
        join it with their categories (hashes on a live allow list held back,
        as in an import) and its record ids move to it, and the staged list
        is deleted. Without, the staged list itself goes live (its tombstones
        were applied to it at import).
        """
        with self._changing() as transaction:
            staged = self._require_list(transaction, staged_name)
            if staged.state != layout.STAGED:
                raise ImportRejected(
                    f"{staged_name} is not staged; nothing to promote."
                )
            changes = HitChanges(self.environment, transaction, "promote")
            changes.note_promotion(staged)
            withdrawn = 0
            if into is None:
                promoted = replace_record(
                    staged, state=layout.LIVE, updated_at=time.time(), held_back={}
                )
                layout.write_list_record(self.environment, transaction, promoted)
                self._forget_kept_withdrawals(transaction, staged_name)
            else:
                withdrawn = self._fold_into(transaction, staged, into, changes)
            change = f"promote {staged_name}" + (f" into {into}" if into else "")
            generation = self._commit_generation(transaction, change)
            changes.record(generation)
        logger.info(
            "promoted staged list %s%s: %d hashes withdrawn by its tombstones, "
            "generation %d",
            staged_name,
            f" into {into}" if into else "",
            withdrawn,
            generation,
            extra={
                "event": "list_promoted",
                "list": staged_name,
                "into": into or "",
                "withdrawn": withdrawn,
                "generation": generation,
            },
        )
        return generation

    def staged_withdrawals(self, staged_name: str) -> Withdrawals:
        """What the tombstones of a staged list's imports will withdraw on promotion.

        Record ids are looked up in the live list it is promoted into; the
        hashes are those the tombstones named or that their ids had brought.
        """
        with self.environment.read() as transaction:
            self._require_list(transaction, staged_name)
            return self._kept_withdrawals(transaction, staged_name)

    def staged_overlap(self, staged_name: str) -> dict[Algorithm, dict[str, int]]:
        """For a staged list, per algorithm: its size, how many of its hashes
        were held back at import as allow-listed, and how much of it each live
        list already holds (allow lists included), so that an operator sees
        before promoting whether it would flag known-benign hashes."""
        with self.environment.read() as transaction:
            record = self._require_list(transaction, staged_name)
            lists = {
                r.name: r
                for r in layout.read_list_records(self.environment, transaction)
            }
            overlap: dict[Algorithm, dict[str, int]] = {}
            for algorithm in layout.stored_algorithms(self.environment, transaction):
                items = self._membership_items(transaction, algorithm)
                mine = BitMap.union(
                    BitMap(), *(b for _, (n, _, b) in items if n == record.name)
                )
                # Held back at import, so in no bitmap: counted apart.
                held_back = record.held_back.get(algorithm.value, 0)
                if not mine and not held_back:
                    continue
                counts = {"staged": len(mine), "held_back": held_back}
                overlap[algorithm] = counts
                for _, (name, _, bitmap) in items:
                    other = lists.get(name)
                    if other is None or other.state != layout.LIVE:
                        continue
                    label = f"{other.kind}:{name}"
                    counts[label] = counts.get(label, 0) + len(mine & bitmap)
        return overlap

    def _fold_into(
        self,
        transaction: Any,
        staged: layout.ListRecord,
        into: str,
        changes: HitChanges,
    ) -> int:
        """Fold a staged list into `into`; returns how many hashes it withdrew."""
        target = self._require_list(transaction, into)
        if target.kind != staged.kind:
            raise ImportRejected(
                f"{staged.name} and {into} are lists of different kinds."
            )
        kept = self._kept_withdrawals(transaction, staged.name)
        # Resolved before the staged records move in: an id that a later
        # staged entry used again belongs to that entry, not to the tombstone.
        withdrawn = self._withdrawn_hashes(transaction, into, kept, {})
        allow_lists = self._live_allow_lists(transaction, target)
        removed = 0
        for algorithm in layout.stored_algorithms(self.environment, transaction):
            removed += self._fold_algorithm(
                transaction,
                algorithm,
                staged.name,
                target,
                allow_lists,
                withdrawn.get(algorithm),
                changes,
            )
        self._move_records(transaction, staged.name, into)
        self._forget_kept_withdrawals(transaction, staged.name)
        transaction.delete(staged.name.encode(), db=self.environment.lists)
        touched = replace_record(target, updated_at=time.time())
        layout.write_list_record(self.environment, transaction, touched)
        return removed

    def _fold_algorithm(
        self,
        transaction: Any,
        algorithm: Algorithm,
        staged_name: str,
        target: layout.ListRecord,
        allow_lists: set[str],
        withdrawn: npt.NDArray[np.uint8] | None,
        changes: HitChanges,
    ) -> int:
        """Take the withdrawn hashes off the target, then move the staged ones in.

        Withdrawals go first because each staged import already applied its
        tombstones to the staged list: whatever it still holds was listed
        after them, so it stays.
        """
        parts = self._read_parts(transaction, algorithm)
        memberships = dict(self._membership_items(transaction, algorithm))
        before = dict(memberships)
        removed = 0
        if withdrawn is not None and withdrawn.size:
            rows = _rows_in_table(parts, withdrawn)
            removed = _take_off_list(memberships, target.name, rows)

        allowed = BitMap.union(
            BitMap(), *(b for n, _, b in memberships.values() if n in allow_lists)
        )
        for key, (name, category, bitmap) in list(memberships.items()):
            if name != staged_name:
                continue
            moving = bitmap - allowed
            _take_off_list(memberships, target.name, moving)
            target_key = layout.membership_key(algorithm, target.name, category)
            current = memberships.get(target_key, (target.name, category, BitMap()))
            memberships[target_key] = (target.name, category, current[2] | moving)
            memberships[key] = (name, category, BitMap())

        # Only withdrawals end hits here; an allow list's new hashes are
        # noted by note_promotion.
        if removed and target.kind == layout.BLOCK:
            table_rows = (parts.base, parts.delta)
            changes.compare(
                algorithm, before.values(), memberships.values(), table_rows
            )
        self._write_memberships(transaction, memberships, None, 0)
        return removed

    def merge(self) -> int:
        """Rebuild every base table with its delta, dropping dead rows.

        Answers do not change; lookups get a little faster and the store
        smaller. Operators run it on a schedule (a nightly cron job, say) or
        on demand; imports also merge by themselves once a delta is large.
        Returns the new generation.
        """
        with self._changing() as transaction:
            for algorithm in layout.stored_algorithms(self.environment, transaction):
                self._import_algorithm(
                    transaction, "", None, algorithm, replace=False, rebuild=True
                )
            generation = self._commit_generation(transaction, "merge deltas")
        logger.info(
            "merged deltas into base tables: generation %d",
            generation,
            extra={"event": "deltas_merged", "generation": generation},
        )
        return generation

    def lists(self) -> list[ListSummary]:
        """Every list with its counts, by name."""
        with self.environment.read() as transaction:
            records = layout.read_list_records(self.environment, transaction)
            counts = self._count_memberships(transaction)
        return [
            ListSummary(record, counts.get(record.name, {}))
            for record in sorted(records, key=lambda r: r.name)
        ]

    def list_summary(self, list_name: str) -> ListSummary:
        for summary in self.lists():
            if summary.record.name == list_name:
                return summary
        raise UnknownList(
            f"There is no list named {list_name!r}; see `hashcheck-server lists`."
        )

    def _changing(self) -> Any:
        """A write transaction whose LMDB failures become store errors."""
        return _TranslatedWrite(self.environment)

    def _commit_generation(self, transaction: Any, change: str) -> int:
        return commit_generation(self.environment, transaction, change)

    def _require_list(self, transaction: Any, list_name: str) -> layout.ListRecord:
        record = layout.read_list_record(self.environment, transaction, list_name)
        if record is None:
            raise UnknownList(
                f"There is no list named {list_name!r}; see `hashcheck-server lists`."
            )
        return record

    def _list_record_for_import(
        self,
        transaction: Any,
        list_name: str,
        source: str,
        description: str,
        kind: str,
        staged: bool,
    ) -> layout.ListRecord:
        """The list's record after this import; refuses a change of kind."""
        now = time.time()
        existing = layout.read_list_record(self.environment, transaction, list_name)
        if existing is None:
            state = layout.STAGED if staged else layout.LIVE
            return layout.ListRecord(
                list_name, source, description, now, now, kind, state
            )

        if existing.kind != kind:
            raise ImportRejected(
                f"{list_name} is an {existing.kind} list; import {kind} hashes into "
                "another list."
            )
        if staged and existing.state == layout.LIVE:
            raise ImportRejected(
                f"{list_name} is live. Stage the change as a new list and promote "
                f"it into this one: import --staged --list NEW ..., then "
                f"promote NEW --into {list_name}."
            )
        return replace_record(
            existing,
            source=source or existing.source,
            description=description or existing.description,
            updated_at=now,
        )

    def _live_allow_lists(
        self, transaction: Any, record: layout.ListRecord
    ) -> set[str]:
        """The allow lists whose hashes this import must hold back."""
        if record.kind != layout.BLOCK:
            return set()
        return {
            other.name
            for other in layout.read_list_records(self.environment, transaction)
            if other.is_live_allow
        }

    def _withdrawn_hashes(
        self,
        transaction: Any,
        list_name: str,
        withdrawals: Withdrawals | None,
        record_ids: Mapping[str, Sequence[tuple[Algorithm, bytes]]],
    ) -> dict[Algorithm, npt.NDArray[np.uint8]]:
        """Hashes to take off the list: those named, and those of withdrawn ids.

        An id may have been added earlier or by this very import (a page that
        holds an entry and, later, its tombstone).
        """
        if withdrawals is None:
            return {}
        found: dict[Algorithm, list[bytes]] = {
            algorithm: [hashes.tobytes()]
            for algorithm, hashes in withdrawals.hashes.items()
        }
        for record_id in withdrawals.record_ids:
            for algorithm, digest in record_ids.get(record_id, ()):
                found.setdefault(algorithm, []).append(digest)
        records = self.environment.records
        for record_id in withdrawals.record_ids:
            key = _record_key(list_name, record_id)
            raw = transaction.get(key, db=records)
            if raw is None:
                continue
            for algorithm_name, hex_hash in json.loads(bytes(raw)):
                algorithm = Algorithm(algorithm_name)
                found.setdefault(algorithm, []).append(bytes.fromhex(hex_hash))
            transaction.delete(key, db=records)
        return _stacked(found)

    def _remember_records(
        self,
        transaction: Any,
        list_name: str,
        record_ids: Mapping[str, Sequence[tuple[Algorithm, bytes]]],
        withdrawals: Withdrawals | None,
    ) -> None:
        withdrawn = set(withdrawals.record_ids) if withdrawals else set()
        for record_id, hashes in record_ids.items():
            if record_id in withdrawn:
                continue
            value = [[algorithm.value, digest.hex()] for algorithm, digest in hashes]
            transaction.put(
                _record_key(list_name, record_id),
                json.dumps(value).encode(),
                db=self.environment.records,
            )

    def _keep_for_promotion(
        self, transaction: Any, list_name: str, withdrawals: Withdrawals
    ) -> None:
        """Add a staged import's withdrawals to those kept for its promotion."""
        if withdrawals.is_empty:
            return
        kept = self._kept_withdrawals(transaction, list_name).merged(withdrawals)
        transaction.put(
            list_name.encode(), kept.to_json(), db=self.environment.tombstones
        )

    def _kept_withdrawals(self, transaction: Any, list_name: str) -> Withdrawals:
        database = self.environment.tombstones
        # None: a read-only open of a store written before staged tombstones.
        if database is None:
            return Withdrawals()
        raw = transaction.get(list_name.encode(), db=database)
        return Withdrawals() if raw is None else Withdrawals.from_json(bytes(raw))

    def _forget_kept_withdrawals(self, transaction: Any, list_name: str) -> None:
        transaction.delete(list_name.encode(), db=self.environment.tombstones)

    def _list_records(
        self, transaction: Any, list_name: str
    ) -> list[tuple[bytes, bytes]]:
        """(record id, value) of every record id kept for a list."""
        prefix = _record_key(list_name, "")
        cursor = transaction.cursor(db=self.environment.records)
        if not cursor.set_range(prefix):
            return []
        found = []
        for key, value in cursor:
            key = bytes(key)
            if not key.startswith(prefix):
                break
            found.append((key[len(prefix) :], bytes(value)))
        return found

    def _move_records(self, transaction: Any, source: str, target: str) -> None:
        """Give the target list the source's record ids (theirs win a clash)."""
        records = self.environment.records
        target_prefix = _record_key(target, "")
        for record_id, value in self._list_records(transaction, source):
            transaction.put((target_prefix + record_id)[:500], value, db=records)
        self._delete_records(transaction, source)

    def _delete_records(self, transaction: Any, list_name: str) -> None:
        prefix = _record_key(list_name, "")
        for record_id, _ in self._list_records(transaction, list_name):
            transaction.delete(prefix + record_id, db=self.environment.records)

    def _import_algorithm(
        self,
        transaction: Any,
        list_name: str,
        entries: Entries | None,
        algorithm: Algorithm,
        *,
        replace: bool,
        rebuild: bool,
        withdrawn: npt.NDArray[np.uint8] | None = None,
        allow_lists: set[str] | None = None,
        changes: HitChanges | None = None,
    ) -> AlgorithmReport:
        report = AlgorithmReport()
        parts = self._read_parts(transaction, algorithm)
        memberships = dict(self._membership_items(transaction, algorithm))
        # The steps below replace bitmaps rather than change them in place.
        before = dict(memberships)

        unique, categories, report.regraded = _unique_entries(entries, algorithm)
        report.records = 0 if entries is None else entries.hashes.shape[0]
        fresh, located_ids = _locate(parts, unique)
        combined_ids = located_ids
        if allow_lists:
            combined_ids, categories, report.held_back = _hold_back(
                memberships, allow_lists, located_ids, categories
            )
        if list_name:
            _apply_list_change(
                memberships,
                algorithm,
                list_name,
                combined_ids,
                categories,
                replace,
                report,
            )
        if withdrawn is not None and withdrawn.size:
            rows = _withdrawn_rows(parts, unique, located_ids, withdrawn)
            report.removed += _take_off_list(memberships, list_name, rows)
        if changes is not None:
            changes.compare(
                algorithm,
                before.values(),
                memberships.values(),
                (parts.base, parts.delta),
            )

        if rebuild or _delta_outgrows_base(parts, fresh):
            report.table_hashes = self._rebuild_base(
                transaction, algorithm, parts, fresh, memberships
            )
        else:
            report.table_hashes = self._rewrite_delta(
                transaction, algorithm, parts, fresh, memberships
            )
        return report

    def _rebuild_base(
        self,
        transaction: Any,
        algorithm: Algorithm,
        parts: _Parts,
        fresh: npt.NDArray[np.uint8],
        memberships: dict[bytes, tuple[str, str, BitMap]],
    ) -> int:
        """Merge base, delta and fresh rows into a new compact base."""
        combined = np.concatenate([parts.base, parts.delta, fresh])
        moved = parts.delta.shape[0] + fresh.shape[0] > 0
        rows, renumber = _compact(combined, memberships, 0, moved)
        if renumber is not None or parts.base.shape[0] == 0:
            layout.write_table_part(
                self.environment, transaction, algorithm, layout.BASE, rows
            )
            layout.delete_table_part(
                self.environment, transaction, algorithm, layout.DELTA
            )
        self._write_memberships(transaction, memberships, renumber, 0)
        return int(rows.shape[0])

    def _rewrite_delta(
        self,
        transaction: Any,
        algorithm: Algorithm,
        parts: _Parts,
        fresh: npt.NDArray[np.uint8],
        memberships: dict[bytes, tuple[str, str, BitMap]],
    ) -> int:
        """Leave the base as it is; the delta becomes its live rows plus fresh."""
        base_count = parts.base.shape[0]
        tail = np.concatenate([parts.delta, fresh])
        moved = fresh.shape[0] > 0
        rows, renumber = _compact(tail, memberships, base_count, moved)
        if renumber is not None:
            if rows.shape[0]:
                layout.write_table_part(
                    self.environment, transaction, algorithm, layout.DELTA, rows
                )
            else:
                layout.delete_table_part(
                    self.environment, transaction, algorithm, layout.DELTA
                )
        self._write_memberships(transaction, memberships, renumber, base_count)
        return int(base_count + rows.shape[0])

    def _read_parts(self, transaction: Any, algorithm: Algorithm) -> _Parts:
        """The current base and delta rows (views, valid until the first write)."""
        empty = np.empty((0, algorithm.width), dtype=np.uint8)
        rows = {layout.BASE: empty, layout.DELTA: empty}
        tables = []
        for part in layout.TABLE_PARTS:
            mapped = layout.map_table_part(
                self.environment, transaction, algorithm, part
            )
            if mapped is not None:
                rows[part] = mapped[0]
                tables.append(SortedTable(mapped[0], mapped[1], algorithm.width))
        return _Parts(rows[layout.BASE], rows[layout.DELTA], LayeredTable(tables))

    def _find_rows(
        self, transaction: Any, algorithm: Algorithm, hashes: npt.NDArray[np.uint8]
    ) -> BitMap:
        table = self._read_parts(transaction, algorithm).table
        if hashes.size == 0:
            return BitMap()
        matches = table.find(np.ascontiguousarray(hashes).tobytes())
        return BitMap(matches.rows.astype(np.uint32))

    def _membership_items(
        self, transaction: Any, algorithm: Algorithm
    ) -> list[tuple[bytes, tuple[str, str, BitMap]]]:
        return [
            (layout.membership_key(algorithm, name, category), (name, category, bitmap))
            for name, category, bitmap in layout.read_memberships(
                self.environment, transaction, algorithm
            )
        ]

    def _count_memberships(
        self, transaction: Any
    ) -> dict[str, dict[Algorithm, dict[str, int]]]:
        counts: dict[str, dict[Algorithm, dict[str, int]]] = {}
        for algorithm in layout.stored_algorithms(self.environment, transaction):
            for name, category, bitmap in layout.read_memberships(
                self.environment, transaction, algorithm
            ):
                by_category = counts.setdefault(name, {}).setdefault(algorithm, {})
                by_category[category] = len(bitmap)
        return counts

    def _write_memberships(
        self,
        transaction: Any,
        memberships: dict[bytes, tuple[str, str, BitMap]],
        renumber: npt.NDArray[np.intp] | None,
        offset: int,
    ) -> None:
        """Store every bitmap, moving rows from `offset` on through `renumber`."""
        for key, (_, _, bitmap) in memberships.items():
            if renumber is not None and bitmap:
                bitmap = _renumbered(bitmap, renumber, offset)
            self._put_bitmap(transaction, key, bitmap)

    def _put_bitmap(self, transaction: Any, key: bytes, bitmap: BitMap) -> None:
        if bitmap:
            bitmap.run_optimize()
            transaction.put(key, bitmap.serialize(), db=self.environment.members)
        else:
            transaction.delete(key, db=self.environment.members)


class _TranslatedWrite:
    """A write transaction that commits on success and maps LMDB errors."""

    def __init__(self, environment: layout.Environment) -> None:
        self._environment = environment
        self._transaction: Any = None

    def __enter__(self) -> Any:
        try:
            self._transaction = self._environment.write()
        except lmdb.Error as error:
            raise layout.translate_lmdb_error(error, self._environment.path) from error
        return self._transaction

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, *_: object
    ) -> None:
        if error is not None:
            self._transaction.abort()
            if isinstance(error, lmdb.Error):
                path = self._environment.path
                raise layout.translate_lmdb_error(error, path) from error
            return
        try:
            self._transaction.commit()
        except lmdb.Error as failure:
            path = self._environment.path
            raise layout.translate_lmdb_error(failure, path) from failure


def _check_list_name(list_name: str) -> None:
    encoded = list_name.encode()
    if not list_name or len(encoded) > MAX_NAME_BYTES or "\x00" in list_name:
        raise ImportRejected(
            f"{list_name!r} cannot name a list: use 1 to {MAX_NAME_BYTES} bytes "
            "without NUL characters."
        )


def _group_by_algorithm(entries: Iterable[Entries]) -> dict[Algorithm, Entries]:
    grouped: dict[Algorithm, list[Entries]] = {}
    for item in entries:
        if item.hashes.ndim != 2 or item.hashes.shape[1] != item.algorithm.width:
            raise ImportRejected(
                f"{item.algorithm.value} entries must be "
                f"{item.algorithm.width} bytes wide."
            )
        grouped.setdefault(item.algorithm, []).append(item)
    return {algorithm: _concatenate(parts) for algorithm, parts in grouped.items()}


def _concatenate(parts: list[Entries]) -> Entries:
    if len(parts) == 1:
        return parts[0]
    names: list[str] = []
    codes = []
    for part in parts:
        mapping = np.array(
            [_intern(names, name) for name in part.category_names], np.int32
        )
        codes.append(mapping[part.categories] if mapping.size else part.categories)
    return Entries(
        parts[0].algorithm,
        np.concatenate([part.hashes for part in parts]),
        np.concatenate(codes),
        tuple(names),
    )


def _intern(names: list[str], name: str) -> int:
    if name not in names:
        names.append(name)
    return names.index(name)


@dataclass(frozen=True)
class _Parts:
    """An algorithm's table as the store reads it before a change."""

    base: npt.NDArray[np.uint8]
    delta: npt.NDArray[np.uint8]
    table: LayeredTable


#: A delta below this many rows never forces a rebuild, however small the base.
_MIN_DELTA_ROWS = 100_000


def _delta_outgrows_base(parts: _Parts, fresh: npt.NDArray[np.uint8]) -> bool:
    """Whether the delta would be large enough to slow lookups noticeably."""
    base_count = int(parts.base.shape[0])
    delta_count = int(parts.delta.shape[0] + fresh.shape[0])
    if base_count == 0:
        return True
    return delta_count > max(_MIN_DELTA_ROWS, base_count // 8)


def _unique_entries(
    entries: Entries | None, algorithm: Algorithm
) -> tuple[npt.NDArray[np.uint8], list[tuple[str, npt.NDArray[np.intp]]], int]:
    """Sorted unique hashes, per category name the indices graded so, and how
    many hashes the records graded differently (the last record wins)."""
    if entries is None:
        return np.empty((0, algorithm.width), dtype=np.uint8), [], 0
    unique, last_record, regraded = sort_unique_labelled_rows(
        entries.hashes, entries.categories
    )
    codes = entries.categories[last_record]
    by_category = [
        (name, np.flatnonzero(codes == code))
        for code, name in enumerate(entries.category_names)
    ]
    graded = [(name, indices) for name, indices in by_category if indices.size]
    return unique, graded, regraded


def _locate(
    parts: _Parts, unique: npt.NDArray[np.uint8]
) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.intp]]:
    """The imported hashes in no part yet, and every imported hash's row.

    Rows are numbered base, then delta, then the fresh hashes in order, so
    the membership bitmaps stay valid while the change is applied.
    """
    known = parts.base.shape[0] + parts.delta.shape[0]
    ids = np.full(unique.shape[0], -1, dtype=np.intp)
    if unique.shape[0]:
        matches = parts.table.find(unique.tobytes())
        ids[matches.positions] = matches.rows
    fresh = np.flatnonzero(ids < 0)
    ids[fresh] = known + np.arange(fresh.size)
    return unique[fresh], ids


def _record_key(list_name: str, record_id: str) -> bytes:
    return f"{list_name}\x00{record_id}".encode()[:500]


def _stacked(
    found: Mapping[Algorithm, Sequence[bytes]],
) -> dict[Algorithm, npt.NDArray[np.uint8]]:
    """Raw hashes by algorithm as (n, width) arrays."""
    return {
        algorithm: np.frombuffer(b"".join(parts), np.uint8).reshape(-1, algorithm.width)
        for algorithm, parts in found.items()
    }


def _log_import(report: ImportReport, record: layout.ListRecord) -> None:
    """The one log line, and event, of a finished import."""
    counts = {
        name: report.total(name)
        for name in (
            "added",
            "updated",
            "removed",
            "unchanged",
            "held_back",
            "regraded",
        )
    }
    logger.info(
        "imported list %s (%s): generation %d, %d added, %d updated, %d removed, "
        "%d unchanged, %d held back as allow-listed in %.1f s",
        report.list_name,
        record.state,
        report.generation,
        counts["added"],
        counts["updated"],
        counts["removed"],
        counts["unchanged"],
        counts["held_back"],
        report.seconds,
        extra={
            "event": "import_finished",
            "list": report.list_name,
            "state": record.state,
            "generation": report.generation,
            **counts,
            "seconds": round(report.seconds, 3),
        },
    )
    if counts["regraded"]:
        # A list that grades one hash two ways is a defect of its source: the
        # hotline should ask which grade holds.
        logger.warning(
            "list %s: %d hashes graded differently by their own records; "
            "the last record's category was kept",
            report.list_name,
            counts["regraded"],
            extra={
                "event": "import_regraded",
                "list": report.list_name,
                "regraded": counts["regraded"],
            },
        )


def _with_held_back(
    record: layout.ListRecord, report: ImportReport
) -> layout.ListRecord:
    """A staged list's record, adding what this import held back as allowed.

    Only staged lists keep the count: it is what `staged` shows an operator
    before promotion, and a live list's imports report it at once.
    """
    if record.state != layout.STAGED:
        return record
    held_back = dict(record.held_back)
    for algorithm, part in report.algorithms.items():
        if part.held_back:
            held_back[algorithm.value] = (
                held_back.get(algorithm.value, 0) + part.held_back
            )
    return replace_record(record, held_back=held_back)


def _hold_back(
    memberships: dict[bytes, tuple[str, str, BitMap]],
    allow_lists: set[str],
    combined_ids: npt.NDArray[np.intp],
    categories: list[tuple[str, npt.NDArray[np.intp]]],
) -> tuple[npt.NDArray[np.intp], list[tuple[str, npt.NDArray[np.intp]]], int]:
    """Drop imported hashes that a live allow list holds; count them.

    Returns the remaining row ids and the categories re-indexed to them.
    """
    allowed = BitMap.union(
        BitMap(),
        *(bitmap for name, _, bitmap in memberships.values() if name in allow_lists),
    )
    if not allowed:
        return combined_ids, categories, 0

    allowed_rows = np.frombuffer(allowed.to_array(), dtype=np.uint32)
    keep = ~np.isin(combined_ids, allowed_rows)
    new_index = np.cumsum(keep) - 1
    kept_categories = [
        (name, new_index[indices[keep[indices]]]) for name, indices in categories
    ]
    held_back = int(keep.size - np.count_nonzero(keep))
    return combined_ids[keep], kept_categories, held_back


def _withdrawn_rows(
    parts: _Parts,
    unique: npt.NDArray[np.uint8],
    combined_ids: npt.NDArray[np.intp],
    withdrawn: npt.NDArray[np.uint8],
) -> BitMap:
    """Rows of the withdrawn hashes, among old rows and this import's own."""
    batch = np.ascontiguousarray(withdrawn).tobytes()
    rows = _rows_in_table(parts, withdrawn)
    if unique.shape[0]:
        imported = LayeredTable(
            [SortedTable(unique, build_index(unique), unique.shape[1])]
        )
        positions = imported.find(batch).rows
        rows |= BitMap(combined_ids[positions].astype(np.uint32))
    return rows


def _rows_in_table(parts: _Parts, hashes: npt.NDArray[np.uint8]) -> BitMap:
    """Rows of the hashes that the table holds."""
    batch = np.ascontiguousarray(hashes).tobytes()
    return BitMap(parts.table.find(batch).rows.astype(np.uint32))


def _take_off_list(
    memberships: dict[bytes, tuple[str, str, BitMap]], list_name: str, rows: BitMap
) -> int:
    """Remove rows from every category of a list; returns how many it held."""
    removed = BitMap()
    for key, (name, category, bitmap) in memberships.items():
        if name == list_name and bitmap.intersect(rows):
            removed |= bitmap & rows
            memberships[key] = (name, category, bitmap - rows)
    return len(removed)


def _apply_list_change(
    memberships: dict[bytes, tuple[str, str, BitMap]],
    algorithm: Algorithm,
    list_name: str,
    combined_ids: npt.NDArray[np.intp],
    categories: list[tuple[str, npt.NDArray[np.intp]]],
    replace: bool,
    report: AlgorithmReport,
) -> None:
    """Move each imported row into its category of the list (in place)."""
    imported = BitMap(combined_ids.astype(np.uint32))
    own = {key: item for key, item in memberships.items() if item[0] == list_name}
    held_before = (
        BitMap.union(*(bitmap for _, _, bitmap in own.values())) if own else BitMap()
    )

    for key, (name, category, bitmap) in own.items():
        kept = bitmap & imported if replace else bitmap
        memberships[key] = (name, category, kept - imported)

    for category, indices in categories:
        key = layout.membership_key(algorithm, list_name, category)
        rows = BitMap(combined_ids[indices].astype(np.uint32))
        before = own.get(key, (list_name, category, BitMap()))[2]
        report.unchanged += len(rows & before)
        current = memberships.get(key, (list_name, category, BitMap()))[2]
        memberships[key] = (list_name, category, current | rows)

    report.added = len(imported - held_before)
    report.updated = len(imported & held_before) - report.unchanged
    if replace:
        report.removed = len(held_before - imported)


def _compact(
    rows: npt.NDArray[np.uint8],
    memberships: dict[bytes, tuple[str, str, BitMap]],
    offset: int,
    moved: bool,
) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.intp] | None]:
    """Drop the rows on no list and sort the rest.

    `rows` are the rows numbered from `offset` on. Returns the final rows and
    the map from old to final row number, both relative to `offset`; the map
    is None when nothing moved (nothing `moved` in and nothing dropped), so
    the bitmaps need no renumbering.
    """
    live = BitMap.union(BitMap(), *(bitmap for _, _, bitmap in memberships.values()))
    if offset:
        live.remove_range(0, offset)
    kept = np.frombuffer(live.to_array(), dtype=np.uint32).astype(np.intp) - offset
    count = rows.shape[0]
    if kept.size == count and not moved:
        return rows, None

    final, order = sort_unique_rows(rows[kept])
    renumber = np.full(count, -1, dtype=np.intp)
    renumber[kept[order]] = np.arange(final.shape[0])
    return final, renumber


def _renumbered(bitmap: BitMap, renumber: npt.NDArray[np.intp], offset: int) -> BitMap:
    """The bitmap with its rows from `offset` on moved through `renumber`."""
    moving = bitmap.copy()
    moving.remove_range(0, offset)
    staying = bitmap - moving
    old = np.frombuffer(moving.to_array(), dtype=np.uint32).astype(np.intp) - offset
    staying.update((renumber[old] + offset).astype(np.uint32))
    return staying
