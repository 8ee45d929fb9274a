"""The quarantine: listed hashes on hold because they flooded, waiting for an operator.

A hash that suddenly hits for many tenants at once is more likely a benign
file that reached a list by mistake (a web platform's default image, say)
than abuse material that every company received within the hour. Servers
detect such floods (hashcheck_server.floods) and put the hash on hold here;
an operator then decides.

Records: the ``quarantine`` database of the data directory
(hashcheck_server.layout), one per hash ever held:

- key: ``<algorithm> NUL <raw hash>``;
- value: JSON {"algorithm", "hash" (hex), "held_at", "tenants" (how many
  different tenants it hit for within the window), "window_seconds",
  "status", "changed_at"}.

Status:

- ``held``: the hash gives no hits, exactly as if it were allow-listed
  (hashcheck_server.generation leaves its rows out). It stays on its lists;
- ``released``: an operator let it hit again (`quarantine release`). A
  released hash is never held automatically again;
- ``removed``: an operator took it off every list (`remove`); if it is ever
  imported again it hits again.

Holding and releasing change answers, so each is one write transaction that
also commits a new generation (with a digest that covers the held hashes):
every server of the directory switches within its reload interval, and
replicas with the next snapshot. Marking a hash removed happens inside the
`remove` transaction itself.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from hashcheck._algorithms import Algorithm
from hashcheck_server import layout
from hashcheck_server.errors import HashCheckError
from hashcheck_server.writes import commit_generation, writing

__all__ = [
    "HELD",
    "RELEASED",
    "REMOVED",
    "Flood",
    "QuarantineRecord",
    "has_held",
    "hold",
    "held_hashes",
    "mark_delisted",
    "read_records",
    "release",
]

HELD = "held"
RELEASED = "released"
REMOVED = "removed"

_SEPARATOR = b"\x00"


@dataclass(frozen=True)
class Flood:
    """A hash that hit for `tenants` different tenants within the window."""

    algorithm: Algorithm
    hash: bytes
    tenants: int


@dataclass(frozen=True)
class QuarantineRecord:
    """One held (or formerly held) hash; see the module docstring."""

    algorithm: str
    hash: str
    held_at: float
    tenants: int
    window_seconds: float
    status: str
    changed_at: float

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> QuarantineRecord:
        return cls(**json.loads(raw))


def record_key(algorithm: Algorithm, digest: bytes) -> bytes:
    return algorithm.value.encode() + _SEPARATOR + digest


def read_records(
    environment: layout.Environment, transaction: Any
) -> list[QuarantineRecord]:
    """Every record, by algorithm and hash."""
    if environment.quarantine is None:
        return []
    cursor = transaction.cursor(db=environment.quarantine)
    return [QuarantineRecord.from_json(bytes(value)) for _, value in cursor]


def held_hashes(
    environment: layout.Environment, transaction: Any
) -> dict[Algorithm, bytes]:
    """The hashes on hold, per algorithm, packed end to end."""
    held: dict[Algorithm, list[bytes]] = {}
    for record in read_records(environment, transaction):
        if record.status == HELD:
            algorithm = Algorithm(record.algorithm)
            held.setdefault(algorithm, []).append(bytes.fromhex(record.hash))
    return {algorithm: b"".join(digests) for algorithm, digests in held.items()}


def hold(
    environment: layout.Environment, flood: Flood, window_seconds: float
) -> int | None:
    """Put a flooding hash on hold; the generation that holds it.

    None when the hash has a record already: held by another process
    meanwhile, or released or removed by an operator, whose decision stands.
    """
    key = record_key(flood.algorithm, flood.hash)
    with writing(environment) as transaction:
        if transaction.get(key, db=environment.quarantine) is not None:
            return None
        now = time.time()
        record = QuarantineRecord(
            algorithm=flood.algorithm.value,
            hash=flood.hash.hex(),
            held_at=now,
            tenants=flood.tenants,
            window_seconds=window_seconds,
            status=HELD,
            changed_at=now,
        )
        transaction.put(key, record.to_json(), db=environment.quarantine)
        return commit_generation(
            environment, transaction, f"quarantine 1 {flood.algorithm.value}"
        )


def release(
    environment: layout.Environment,
    hex_hashes: Sequence[str],
    algorithm: Algorithm | None = None,
) -> tuple[list[QuarantineRecord], int | None]:
    """Let held hashes hit again; the records released and the new generation.

    A hash given as hex matches a held record of any algorithm unless
    `algorithm` is named. Nothing is committed (generation None) when none
    of them is held.
    """
    wanted = {_parse_hex(text) for text in hex_hashes}
    released: list[QuarantineRecord] = []
    with writing(environment) as transaction:
        now = time.time()
        for record in read_records(environment, transaction):
            if record.status != HELD or record.hash not in wanted:
                continue
            if algorithm is not None and record.algorithm != algorithm.value:
                continue
            changed = QuarantineRecord(
                **{**asdict(record), "status": RELEASED, "changed_at": now}
            )
            key = record_key(Algorithm(record.algorithm), bytes.fromhex(record.hash))
            transaction.put(key, changed.to_json(), db=environment.quarantine)
            released.append(changed)
        if not released:
            return [], None
        generation = commit_generation(
            environment, transaction, f"release {len(released)} from quarantine"
        )
    return released, generation


def mark_delisted(
    environment: layout.Environment,
    transaction: Any,
    algorithm: Algorithm,
    digests: Iterable[bytes],
) -> int:
    """Mark held hashes that are now on no list "removed"; how many were held."""
    database = environment.quarantine
    if database is None:
        return 0
    marked = 0
    now = time.time()
    for digest in digests:
        key = record_key(algorithm, digest)
        raw = transaction.get(key, db=database)
        if raw is None:
            continue
        record = QuarantineRecord.from_json(bytes(raw))
        if record.status != HELD:
            continue
        changed = QuarantineRecord(
            **{**asdict(record), "status": REMOVED, "changed_at": now}
        )
        transaction.put(key, changed.to_json(), db=database)
        marked += 1
    return marked


def has_held(environment: layout.Environment, transaction: Any) -> bool:
    """Whether any hash is on hold: one cursor step when there is none."""
    return any(
        record.status == HELD for record in read_records(environment, transaction)
    )


def _parse_hex(text: str) -> str:
    try:
        return bytes.fromhex(text.strip()).hex()
    except ValueError:
        raise HashCheckError(f"{text!r} is not a hex hash.") from None
