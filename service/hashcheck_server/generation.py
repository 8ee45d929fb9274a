"""A generation: one committed state of every table and list, as the server reads it.

A Generation holds an LMDB read transaction open for its whole life. LMDB never
reuses a page that an open read transaction can see, so the table arrays below
stay valid views of the memory map, however many imports commit meanwhile.
Closing the generation ends the transaction; after that its arrays must not be
touched, which is why the server hands generations out through leases (see
hashcheck_server.serving).

Membership: for each algorithm, every (list, category) pair has a roaring
bitmap of the table rows graded so by that list. A row on no list is dead: it
stays in the table until the next rebuild compacts it away, and never hits.

PDQ is matched within a Hamming distance instead of exactly: its rows are
found by the near-duplicate index (hashcheck_server.pdq_index), then named
by the same provenance step, so lists, allow lists and dead rows work alike.
A hit then carries its distance, and a checked hash may hit several rows.

Quarantine: rows of hashes on hold (hashcheck_server.quarantine) never hit,
exactly like allow-listed rows, until an operator releases or removes them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
from pyroaring import BitMap

from hashcheck._algorithms import Algorithm
from hashcheck_server import layout, pdq_index, quarantine
from hashcheck_server.lookup import LayeredTable, SortedTable

__all__ = ["Generation", "ListMatch", "Membership", "TableHits"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, order=True)
class ListMatch:
    """One list a hit is on, and how that list grades it."""

    list: str
    category: str


@dataclass(frozen=True)
class Membership:
    """The rows of one algorithm's table that one list grades with one category."""

    match: ListMatch
    rows: BitMap


@dataclass(frozen=True)
class TableHits:
    """The hits of one batch: positions, and which provenance each has.

    `provenance_of[i]` indexes `provenances` for the hit at `positions[i]`;
    hits with the same lists and categories share one provenance.

    PDQ: `distances[i]` is the Hamming distance of hit i. A position appears
    once per matching known hash, nearest first. Empty for exact algorithms.
    """

    generation: int
    positions: npt.NDArray[np.intp]
    provenance_of: npt.NDArray[np.intp]
    provenances: tuple[tuple[ListMatch, ...], ...]
    distances: npt.NDArray[np.intp] = field(
        default_factory=lambda: np.empty(0, dtype=np.intp)
    )

    @property
    def count(self) -> int:
        return int(self.positions.size)


@dataclass
class _AlgorithmState:
    table: LayeredTable
    #: Memberships of live block lists: the only ones that produce hits.
    memberships: list[Membership] = field(default_factory=list)
    #: Rows on a live allow list: known-benign hashes, which never hit.
    allowed: BitMap = field(default_factory=BitMap)
    #: Rows of hashes on hold in the quarantine, which never hit either.
    held: BitMap = field(default_factory=BitMap)
    #: PDQ: the near-duplicate index over the table's rows.
    near: pdq_index.LayeredNearIndex | None = None


class Generation:
    """The tables and lists of one generation, mapped zero-copy, read-only."""

    def __init__(
        self,
        number: int,
        committed_at: float,
        transaction: Any,
        states: dict[Algorithm, _AlgorithmState],
        digest: str = "",
        environment: layout.Environment | None = None,
        held_count: int = 0,
    ) -> None:
        self.number = number
        self.committed_at = committed_at
        #: The content digest from the generation record (hashcheck_server.digest).
        self.digest = digest
        #: How many hashes the quarantine holds in this generation.
        self.held_count = held_count
        self._transaction = transaction
        self._states = states
        self._environment = environment

    @classmethod
    def load(cls, environment: layout.Environment) -> Generation:
        """Map the generation now committed in `environment`."""
        transaction = environment.read()
        try:
            record = layout.read_generation_record(environment, transaction)
            lists = {
                list_record.name: list_record
                for list_record in layout.read_list_records(environment, transaction)
            }
            held = quarantine.held_hashes(environment, transaction)
            states = {
                algorithm: _load_algorithm(
                    environment, transaction, algorithm, lists, held.get(algorithm)
                )
                for algorithm in layout.stored_algorithms(environment, transaction)
            }
        except BaseException:
            transaction.abort()
            raise
        held_count = sum(len(packed) // a.width for a, packed in held.items())
        return cls(
            record.number,
            record.committed_at,
            transaction,
            states,
            record.digest,
            environment,
            held_count,
        )

    @property
    def environment(self) -> layout.Environment | None:
        """The environment this generation was mapped from; None if built by hand."""
        return self._environment

    @property
    def transaction(self) -> Any:
        """The generation's read transaction, for records kept beside its tables.

        What is read through it (withdrawal events, say) belongs to this
        generation. Valid only while the generation is leased.
        """
        return self._transaction

    @property
    def algorithms(self) -> Sequence[Algorithm]:
        return tuple(self._states)

    def hash_count(self, algorithm: Algorithm) -> int:
        """How many distinct live hashes the algorithm's table holds."""
        state = self._states.get(algorithm)
        if state is None:
            return 0
        live = BitMap.union(BitMap(), *(m.rows for m in state.memberships))
        return len(live - state.allowed)

    def table_rows(self, algorithm: Algorithm) -> int:
        """Rows of the algorithm's table, dead ones included (until a merge)."""
        state = self._states.get(algorithm)
        return 0 if state is None else state.table.count

    def check(
        self,
        algorithm: Algorithm,
        batch: bytes,
        *,
        max_distance: int | None = None,
        visible: Callable[[ListMatch], bool] | None = None,
    ) -> TableHits:
        """The hits among a packed batch of hashes of one algorithm.

        PDQ hashes hit known hashes within `max_distance` (default 31); each
        gets its nearest few (pdq_index.NEAREST_MATCHES) live matches.
        With `visible` (a tenant's lists and categories), memberships it
        rejects are skipped: a hash only on those is no hit, and a hit names
        only the memberships it accepts.
        """
        state = self._states.get(algorithm)
        if state is None:
            return self._no_hits()
        if state.near is not None:
            return self._check_near(state, batch, max_distance, visible)

        matches = state.table.find(batch)
        if matches.positions.size == 0:
            return self._no_hits()
        return self._attach_provenance(state, matches.positions, matches.rows, visible)

    def _attach_provenance(
        self,
        state: _AlgorithmState,
        positions: npt.NDArray[np.intp],
        rows: npt.NDArray[np.intp],
        visible: Callable[[ListMatch], bool] | None = None,
    ) -> TableHits:
        """Name the lists of each found row; rows on no list are not hits."""
        found_rows = BitMap(rows.astype(np.uint32))
        if state.allowed:
            found_rows -= state.allowed
        if state.held:
            found_rows -= state.held
        # flags[i, k]: is rows[i] in membership k? One column per membership
        # that any found row is in, so the matrix stays as small as the hits.
        columns: list[ListMatch] = []
        flag_columns: list[npt.NDArray[np.bool_]] = []
        for membership in state.memberships:
            if visible is not None and not visible(membership.match):
                continue
            shared = found_rows & membership.rows
            if shared:
                members = np.frombuffer(shared.to_array(), dtype=np.uint32)
                columns.append(membership.match)
                flag_columns.append(_is_member(rows, members))
        if not columns:
            return self._no_hits()

        flags = np.stack(flag_columns, axis=1)
        is_hit = flags.any(axis=1)
        distinct, provenance_of = _distinct_rows(flags[is_hit])
        provenances = tuple(
            tuple(sorted(columns[k] for k in np.flatnonzero(row))) for row in distinct
        )
        return TableHits(
            self.number, positions[is_hit], provenance_of.reshape(-1), provenances
        )

    def _check_near(
        self,
        state: _AlgorithmState,
        batch: bytes,
        max_distance: int | None,
        visible: Callable[[ListMatch], bool] | None,
    ) -> TableHits:
        """PDQ: every known hash within the distance, then the usual provenance.

        Provenance is attached to each (hash, known row) pair, found by its
        index; pairs on no live list drop out before the nearest are chosen.
        """
        assert state.near is not None
        if max_distance is None:
            max_distance = pdq_index.DEFAULT_MAX_DISTANCE
        near = state.near.search(batch, max_distance)
        if near.count == 0:
            return self._no_hits()

        pairs = np.arange(near.count, dtype=np.intp)
        hits = self._attach_provenance(state, pairs, near.rows, visible)
        chosen = np.flatnonzero(_nearest(near.positions[hits.positions]))
        kept = hits.positions[chosen]
        used, provenance_of = np.unique(hits.provenance_of[chosen], return_inverse=True)
        return TableHits(
            self.number,
            near.positions[kept],
            provenance_of.reshape(-1),
            tuple(hits.provenances[k] for k in used.tolist()),
            near.distances[kept],
        )

    def _no_hits(self) -> TableHits:
        empty = np.empty(0, dtype=np.intp)
        return TableHits(self.number, empty, empty, ())

    def close(self) -> None:
        """End the read transaction. The arrays must not be used afterwards."""
        self._states = {}
        self._transaction.abort()


def _nearest(positions: npt.NDArray[np.intp]) -> npt.NDArray[np.bool_]:
    """Which of ascending positions are among the first NEAREST_MATCHES of theirs."""
    if positions.size == 0:
        return np.zeros(0, dtype=bool)
    starts = np.flatnonzero(np.r_[True, positions[1:] != positions[:-1]])
    first_of_run = np.repeat(starts, np.diff(np.r_[starts, positions.size]))
    rank = np.arange(positions.size) - first_of_run
    kept: npt.NDArray[np.bool_] = rank < pdq_index.NEAREST_MATCHES
    return kept


def _load_algorithm(
    environment: layout.Environment,
    transaction: Any,
    algorithm: Algorithm,
    lists: dict[str, layout.ListRecord],
    held: bytes | None = None,
) -> _AlgorithmState:
    parts = []
    near_parts = []
    for part in layout.TABLE_PARTS:
        mapped = layout.map_table_part(environment, transaction, algorithm, part)
        if mapped is not None:
            rows, index = mapped
            parts.append(SortedTable(rows, index, algorithm.width))
            if algorithm in pdq_index.NEAR_ALGORITHMS:
                near_parts.append(
                    layout.map_near_part(
                        environment, transaction, algorithm, part, rows
                    )
                )
    state = _AlgorithmState(LayeredTable(parts))
    if algorithm in pdq_index.NEAR_ALGORITHMS:
        state.near = pdq_index.LayeredNearIndex(near_parts)
    for name, category, bitmap in layout.read_memberships(
        environment, transaction, algorithm
    ):
        list_record = lists.get(name)
        if list_record is None or list_record.is_live_block:
            state.memberships.append(Membership(ListMatch(name, category), bitmap))
        elif list_record.is_live_allow:
            state.allowed |= bitmap
    if held:
        state.held = BitMap(state.table.find(held).rows.astype(np.uint32))
    return state


def _is_member(
    rows: npt.NDArray[np.intp], members: npt.NDArray[np.uint32]
) -> npt.NDArray[np.bool_]:
    """Which rows are among `members` (sorted, as a bitmap lists them)."""
    at = np.searchsorted(members, rows)
    np.minimum(at, members.size - 1, out=at)
    found: npt.NDArray[np.bool_] = members[at] == rows
    return found


#: Memberships a uint64 key can tell apart, one bit each.
_KEY_BITS = 64


def _distinct_rows(
    flags: npt.NDArray[np.bool_],
) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.intp]]:
    """The distinct rows of a flag matrix, and which of them each row is.

    Rows of up to 64 flags are packed into one integer each first: unique
    over integers costs microseconds where unique over matrix rows (axis=0)
    cost some 30 for a single hit and 100 ms for 100,000.
    """
    if flags.shape[1] > _KEY_BITS:
        distinct, which = np.unique(flags, axis=0, return_inverse=True)
        return distinct, which
    weights = np.left_shift(np.uint64(1), np.arange(flags.shape[1], dtype=np.uint64))
    keys = (flags * weights).sum(axis=1, dtype=np.uint64)
    distinct_keys, which = np.unique(keys, return_inverse=True)
    distinct_flags = (distinct_keys[:, None] & weights) != 0
    return distinct_flags, which
