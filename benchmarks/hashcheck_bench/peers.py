"""The servers a user would reach for instead: Redis and PostgreSQL.

Both run on 127.0.0.1 (started by benchmarks/run) and get their best shot:
the queries are sliced into bytes objects before the clock starts, Redis is
read with hiredis and pipelined, PostgreSQL gets binary parameters, an
index-only scan on a primary key and room to cache it.

- Redis: one set; loaded with SADD in pipelines; queried with SMISMEMBER,
  10,000 hashes a command and several commands a round trip.
- PostgreSQL: an unlogged table with a bytea primary key, loaded with COPY;
  queried with `SELECT hash FROM t WHERE hash = ANY(%s)`, 10,000 a query.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import psycopg
import redis

from hashcheck_bench.data import WIDTH, Rows, Workload
from hashcheck_bench.measure import Pass, Throughput, measure_throughput

__all__ = ["PeerResult", "measure_postgres", "measure_redis"]

_KEY = "hashcheck-bench"
_TABLE = "bench_hashes"
_LOAD_MEMBERS_PER_COMMAND = 10_000
_LOAD_COMMANDS_PER_ROUND_TRIP = 10
_QUERY_MEMBERS_PER_COMMAND = 10_000
_QUERY_COMMANDS_PER_ROUND_TRIP = 10
_POSTGRES_BATCH = 10_000
_COPY_ROWS_PER_WRITE = 1 << 18
_HEX_DIGITS = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)


@dataclass(frozen=True)
class PeerResult:
    throughput: Throughput
    load_seconds: float
    memory_bytes: int
    version: str


def _items(packed: bytes) -> list[bytes]:
    return [packed[i : i + WIDTH] for i in range(0, len(packed), WIDTH)]


def _row_items(rows: Rows) -> list[bytes]:
    return _items(rows.tobytes())


def measure_redis(address: str, workload: Workload, passes: int) -> PeerResult:
    host, port = address.rsplit(":", 1)
    client = redis.Redis(host=host, port=int(port), socket_timeout=600)
    try:
        client.flushall()
        load_seconds = _load_redis(client, workload.table)
        memory = int(client.info("memory")["used_memory"])
        version = str(client.info("server")["redis_version"])
        items = _items(workload.packed_queries)

        def run_pass() -> Pass:
            started = time.perf_counter()
            hits = _query_redis(client, items)
            return Pass(time.perf_counter() - started, len(items), hits)

        throughput = measure_throughput(run_pass, passes, workload.expected_hits)
        return PeerResult(throughput, load_seconds, memory, version)
    finally:
        # Frees Redis's memory before the next, larger table.
        client.flushall()
        client.close()


def _load_redis(client: redis.Redis, table: Rows) -> float:
    started = time.perf_counter()
    step = _LOAD_MEMBERS_PER_COMMAND * _LOAD_COMMANDS_PER_ROUND_TRIP
    for start in range(0, table.shape[0], step):
        members = _row_items(table[start : start + step])
        pipe = client.pipeline(transaction=False)
        for offset in range(0, len(members), _LOAD_MEMBERS_PER_COMMAND):
            pipe.sadd(_KEY, *members[offset : offset + _LOAD_MEMBERS_PER_COMMAND])
        pipe.execute()
    return time.perf_counter() - started


def _query_redis(client: redis.Redis, items: list[bytes]) -> int:
    hits = 0
    step = _QUERY_MEMBERS_PER_COMMAND * _QUERY_COMMANDS_PER_ROUND_TRIP
    for start in range(0, len(items), step):
        pipe = client.pipeline(transaction=False)
        for offset in range(
            start, min(start + step, len(items)), _QUERY_MEMBERS_PER_COMMAND
        ):
            pipe.smismember(_KEY, items[offset : offset + _QUERY_MEMBERS_PER_COMMAND])
        for answers in pipe.execute():
            hits += sum(answers)
    return hits


def measure_postgres(conninfo: str, workload: Workload, passes: int) -> PeerResult:
    with psycopg.connect(conninfo, autocommit=True) as connection:
        try:
            load_seconds = _load_postgres(connection, workload.table)
            memory = _relation_bytes(connection)
            version = str(connection.execute("SHOW server_version").fetchone()[0])  # type: ignore[index]
            items = _items(workload.packed_queries)

            def run_pass() -> Pass:
                started = time.perf_counter()
                hits = _query_postgres(connection, items)
                return Pass(time.perf_counter() - started, len(items), hits)

            throughput = measure_throughput(run_pass, passes, workload.expected_hits)
            return PeerResult(throughput, load_seconds, memory, version)
        finally:
            connection.execute(f"DROP TABLE IF EXISTS {_TABLE}")


def _load_postgres(
    connection: psycopg.Connection[tuple[object, ...]], table: Rows
) -> float:
    started = time.perf_counter()
    connection.execute(f"DROP TABLE IF EXISTS {_TABLE}")
    # Unlogged: the load skips the write-ahead log; lookups are unaffected.
    connection.execute(f"CREATE UNLOGGED TABLE {_TABLE} (hash bytea NOT NULL)")
    with connection.cursor() as cursor:
        with cursor.copy(f"COPY {_TABLE} (hash) FROM STDIN") as copy:
            for start in range(0, table.shape[0], _COPY_ROWS_PER_WRITE):
                copy.write(_copy_lines(table[start : start + _COPY_ROWS_PER_WRITE]))
    # Building the key after the load sorts once instead of inserting N times.
    connection.execute(f"ALTER TABLE {_TABLE} ADD PRIMARY KEY (hash)")
    connection.execute(f"VACUUM ANALYZE {_TABLE}")
    return time.perf_counter() - started


def _copy_lines(rows: Rows) -> bytes:
    r"""COPY text lines of bytea hex literals: `\\x` then the digits (escaped `\`)."""
    width = rows.shape[1]
    lines = np.empty((rows.shape[0], 3 + 2 * width + 1), dtype=np.uint8)
    lines[:, 0] = lines[:, 1] = ord("\\")
    lines[:, 2] = ord("x")
    lines[:, 3 : 3 + 2 * width : 2] = _HEX_DIGITS[rows >> 4]
    lines[:, 4 : 4 + 2 * width : 2] = _HEX_DIGITS[rows & 15]
    lines[:, -1] = ord("\n")
    return lines.tobytes()


def _relation_bytes(connection: psycopg.Connection[tuple[object, ...]]) -> int:
    row = connection.execute(f"SELECT pg_total_relation_size('{_TABLE}')").fetchone()
    return int(row[0]) if row else 0  # type: ignore[call-overload]


def _query_postgres(
    connection: psycopg.Connection[tuple[object, ...]], items: list[bytes]
) -> int:
    hits = 0
    query = f"SELECT hash FROM {_TABLE} WHERE hash = ANY(%s)"
    with connection.cursor(binary=True) as cursor:
        for start in range(0, len(items), _POSTGRES_BATCH):
            cursor.execute(query, (items[start : start + _POSTGRES_BATCH],))
            hits += len(cursor.fetchall())
    return hits
