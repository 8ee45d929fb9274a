"""In-process figures: the lookup core, the memory-probe ceiling, a Python set.

The lookup core is `SortedTable.find` over the table exactly as the server
maps it: numpy views of the LMDB values of the store that the real importer
wrote, under one read transaction. `Generation.check` adds what the server
does next (naming the lists of each hit). Batches arrive as bytes objects, as
they come off the wire.

The ceiling is a numpy gather of random indices into an array as large as
the table's 8-byte prefixes: the cost of one random memory read per hash,
which no lookup can beat by much.

The Python set holds each hash as a 16-byte bytes object. It is measured on
hashes sliced beforehand (its best case) and on packed batches it must slice
first (what a server receiving batches would do).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from hashcheck._algorithms import Algorithm
from hashcheck_bench.data import WIDTH, Workload, split_batches
from hashcheck_bench.measure import Pass, Throughput, measure_throughput
from hashcheck_server import layout
from hashcheck_server.generation import Generation
from hashcheck_server.lookup import SortedTable
from hashcheck_server.table import TableIndex

__all__ = [
    "SetPeer",
    "measure_core",
    "measure_probe",
    "resident_bytes",
]

_SET_BATCH = 10_000


@contextmanager
def mapped_store(data: Path) -> Iterator[tuple[SortedTable, Generation]]:
    """The MD5 table of a store, mapped zero-copy, and its generation."""
    environment = layout.Environment(data, readonly=True)
    transaction = environment.read()
    generation = None
    try:
        table = _map_table(environment, transaction)
        generation = Generation.load(environment)
        yield table, generation
    finally:
        if generation is not None:
            generation.close()
        transaction.abort()
        environment.close()


def _map_table(environment: layout.Environment, transaction: Any) -> SortedTable:
    """The MD5 table as one SortedTable over the map.

    A fresh import writes the whole table as the base part. Stores from before
    base and delta parts existed keep it under the same keys without a part.
    """
    md5 = Algorithm.MD5
    map_part = getattr(layout, "map_table_part", None)
    if map_part is not None:
        mapped = map_part(environment, transaction, md5, layout.BASE)
        if mapped is None:
            raise RuntimeError(f"{environment.path} has no MD5 table.")
        rows, index = mapped
        return SortedTable(rows, index, WIDTH)

    header = layout.read_table_header(environment, transaction, md5)

    def view(key: bytes, dtype: type[np.generic]) -> Any:
        return np.frombuffer(transaction.get(key, db=environment.tables), dtype=dtype)

    index = TableIndex(
        header.filter_bits,
        header.directory_bits,
        view(layout.filter_key(md5), np.uint8),
        view(layout.directory_key(md5), np.uint32),
    )
    rows = view(layout.rows_key(md5), np.uint8).reshape(-1, WIDTH)
    return SortedTable(rows, index, WIDTH)


def measure_core(
    data: Path,
    workload: Workload,
    batch_sizes: list[int],
    passes: int,
    min_pass_seconds: float,
) -> dict[str, Throughput]:
    """`find` and `check` at each batch size, one core, this process."""
    found = {}
    packed = workload.packed_queries
    with mapped_store(data) as (table, generation):
        for batch in batch_sizes:
            batches = split_batches(packed, batch)

            def find(batches: list[bytes] = batches) -> int:
                return sum(int(table.find(b).positions.size) for b in batches)

            def check(batches: list[bytes] = batches) -> int:
                return sum(generation.check(Algorithm.MD5, b).count for b in batches)

            for name, lookup in (("find", find), ("check", check)):
                found[f"core.{name}.b{batch}"] = _measure_calls(
                    lookup,
                    len(packed) // WIDTH,
                    workload.expected_hits,
                    passes,
                    min_pass_seconds,
                )
    return found


def _measure_calls(
    count_hits: Callable[[], int],
    hashes: int,
    expected_hits: int,
    passes: int,
    min_pass_seconds: float,
) -> Throughput:
    def run_pass() -> Pass:
        started = time.perf_counter()
        hits = count_hits()
        return Pass(time.perf_counter() - started, hashes, hits)

    return measure_throughput(run_pass, passes, expected_hits, "", min_pass_seconds)


def measure_probe(
    workload: Workload, passes: int, seed: int, min_pass_seconds: float
) -> Throughput:
    """The memory-probe ceiling: one random 8-byte read per query, one core."""
    rng = np.random.default_rng([seed, workload.size, 8])
    prefixes = rng.integers(0, 2**63, size=workload.size, dtype=np.uint64)
    count = workload.queries.shape[0]
    indices = rng.integers(0, workload.size, size=count)

    def gather() -> int:
        np.take(prefixes, indices)
        return 0

    return _measure_calls(gather, count, 0, passes, min_pass_seconds)


class SetPeer:
    """A Python set of the table's hashes, the simplest thing a user could do."""

    def __init__(self, workload: Workload) -> None:
        before = resident_bytes()
        started = time.perf_counter()
        packed = workload.table.tobytes()
        self.hashes = {packed[i : i + WIDTH] for i in range(0, len(packed), WIDTH)}
        del packed
        self.build_seconds = time.perf_counter() - started
        self.memory_bytes = resident_bytes() - before

    def measure(
        self, workload: Workload, passes: int, min_pass_seconds: float
    ) -> dict[str, Throughput]:
        packed = workload.packed_queries
        items = [packed[i : i + WIDTH] for i in range(0, len(packed), WIDTH)]
        batches = split_batches(packed, _SET_BATCH)
        contains = self.hashes.__contains__

        def prebuilt() -> int:
            return sum(map(contains, items))

        def sliced() -> int:
            hits = 0
            for batch in batches:
                hashes = [batch[i : i + WIDTH] for i in range(0, len(batch), WIDTH)]
                hits += sum(map(contains, hashes))
            return hits

        count, expected = len(items), workload.expected_hits
        return {
            name: _measure_calls(lookup, count, expected, passes, min_pass_seconds)
            for name, lookup in (("set.prebuilt", prebuilt), ("set.sliced", sliced))
        }


def resident_bytes() -> int:
    """This process's resident memory (VmRSS)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0
