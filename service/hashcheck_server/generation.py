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
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
from pyroaring import BitMap

from hashcheck._algorithms import Algorithm
from hashcheck_server import layout
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
    """

    generation: int
    positions: npt.NDArray[np.intp]
    provenance_of: npt.NDArray[np.intp]
    provenances: tuple[tuple[ListMatch, ...], ...]

    @property
    def count(self) -> int:
        return int(self.positions.size)


@dataclass
class _AlgorithmState:
    table: LayeredTable
    memberships: list[Membership] = field(default_factory=list)


class Generation:
    """The tables and lists of one generation, mapped zero-copy, read-only."""

    def __init__(
        self,
        number: int,
        committed_at: float,
        transaction: Any,
        states: dict[Algorithm, _AlgorithmState],
        digest: str = "",
    ) -> None:
        self.number = number
        self.committed_at = committed_at
        #: The content digest from the generation record (hashcheck_server.digest).
        self.digest = digest
        self._transaction = transaction
        self._states = states

    @classmethod
    def load(cls, environment: layout.Environment) -> Generation:
        """Map the generation now committed in `environment`."""
        transaction = environment.read()
        try:
            record = layout.read_generation_record(environment, transaction)
            states = {
                algorithm: _load_algorithm(environment, transaction, algorithm)
                for algorithm in layout.stored_algorithms(environment, transaction)
            }
        except BaseException:
            transaction.abort()
            raise
        return cls(
            record.number, record.committed_at, transaction, states, record.digest
        )

    @property
    def algorithms(self) -> Sequence[Algorithm]:
        return tuple(self._states)

    def hash_count(self, algorithm: Algorithm) -> int:
        """How many distinct live hashes the algorithm's table holds."""
        state = self._states.get(algorithm)
        if state is None:
            return 0
        live = (
            BitMap.union(*(m.rows for m in state.memberships))
            if state.memberships
            else BitMap()
        )
        return len(live)

    def table_rows(self, algorithm: Algorithm) -> int:
        """Rows of the algorithm's table, dead ones included (until a merge)."""
        state = self._states.get(algorithm)
        return 0 if state is None else state.table.count

    def check(self, algorithm: Algorithm, batch: bytes) -> TableHits:
        """The hits among a packed batch of hashes of one algorithm."""
        state = self._states.get(algorithm)
        if state is None:
            return self._no_hits()

        matches = state.table.find(batch)
        if matches.positions.size == 0:
            return self._no_hits()
        return self._attach_provenance(state, matches.positions, matches.rows)

    def _attach_provenance(
        self,
        state: _AlgorithmState,
        positions: npt.NDArray[np.intp],
        rows: npt.NDArray[np.intp],
    ) -> TableHits:
        """Name the lists of each found row; rows on no list are not hits."""
        found_rows = BitMap(rows.astype(np.uint32))
        # flags[i, k]: is rows[i] in membership k? One column per membership
        # that any found row is in, so the matrix stays as small as the hits.
        columns: list[ListMatch] = []
        flag_columns: list[npt.NDArray[np.bool_]] = []
        for membership in state.memberships:
            shared = found_rows & membership.rows
            if shared:
                members = np.frombuffer(shared.to_array(), dtype=np.uint32)
                columns.append(membership.match)
                flag_columns.append(np.isin(rows, members))
        if not columns:
            return self._no_hits()

        flags = np.stack(flag_columns, axis=1)
        is_hit = flags.any(axis=1)
        distinct, provenance_of = np.unique(flags[is_hit], axis=0, return_inverse=True)
        provenances = tuple(
            tuple(sorted(columns[k] for k in np.flatnonzero(row))) for row in distinct
        )
        return TableHits(
            self.number, positions[is_hit], provenance_of.reshape(-1), provenances
        )

    def _no_hits(self) -> TableHits:
        empty = np.empty(0, dtype=np.intp)
        return TableHits(self.number, empty, empty, ())

    def close(self) -> None:
        """End the read transaction. The arrays must not be used afterwards."""
        self._states = {}
        self._transaction.abort()


def _load_algorithm(
    environment: layout.Environment, transaction: Any, algorithm: Algorithm
) -> _AlgorithmState:
    parts = []
    for part in layout.TABLE_PARTS:
        mapped = layout.map_table_part(environment, transaction, algorithm, part)
        if mapped is not None:
            rows, index = mapped
            parts.append(SortedTable(rows, index, algorithm.width))
    memberships = [
        Membership(ListMatch(name, category), bitmap)
        for name, category, bitmap in layout.read_memberships(
            environment, transaction, algorithm
        )
    ]
    return _AlgorithmState(LayeredTable(parts), memberships)
