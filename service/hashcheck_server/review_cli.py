"""`hashcheck-server quarantine ...` and `disputes ...`: what waits for an operator.

    hashcheck-server quarantine list --data DIR [--held]
    hashcheck-server quarantine release --data DIR [--algorithm ALG] HASH...
    hashcheck-server disputes list --data DIR [--open]
    hashcheck-server disputes resolve --data DIR ID --outcome upheld|rejected
        [--note TEXT] [--remove]

`quarantine list` prints one JSON object a line per hash ever held:
`algorithm`, `hash`, `status` (held, released, removed), `tenants`,
`window_seconds`, `held_at`, `changed_at`. `release` lets held hashes hit
again from the next generation and exempts them from the quarantine; to
de-list a held hash instead, use `remove` (its hold then shows "removed").

`disputes list` prints one JSON object a line per dispute, oldest first:
`id`, `tenant`, `algorithm`, `hash`, `reason`, `evidence` (receipt or
audit), `has_receipt`, `status` (open, upheld, rejected), `created_at`,
`resolved_at`, `note`. `resolve --remove` (upheld only) first takes the
hash off every list, then closes the dispute.

Times are ISO 8601 in UTC. Running servers see releases and removals within
their reload interval.
"""

from __future__ import annotations

import argparse
import datetime
import json
from pathlib import Path
from typing import Any, TypeAlias

import numpy as np

from hashcheck._algorithms import Algorithm
from hashcheck_server import layout
from hashcheck_server.disputes import (
    OUTCOMES,
    UPHELD,
    DisputeRecord,
    open_dispute,
    read_disputes,
    resolve_dispute,
)
from hashcheck_server.errors import HashCheckError
from hashcheck_server.quarantine import HELD, QuarantineRecord, read_records, release
from hashcheck_server.store import HashStore

__all__ = ["add_commands"]

EXIT_OK = 0

Commands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


def add_commands(commands: Commands) -> None:
    """Register `quarantine` and `disputes` with the `hashcheck-server` parser."""
    quarantine = commands.add_parser(
        "quarantine", help="hashes on hold because they hit for many tenants"
    )
    actions = quarantine.add_subparsers(
        dest="quarantine_command", required=True, metavar="ACTION"
    )
    listing = actions.add_parser("list", help="every held hash, as JSON lines")
    _data_argument(listing)
    listing.add_argument("--held", action="store_true", help="only those on hold")
    listing.set_defaults(run=_run_quarantine_list)
    releasing = actions.add_parser("release", help="let held hashes hit again")
    _data_argument(releasing)
    releasing.add_argument(
        "--algorithm", type=Algorithm.from_name, help="default: any with that hash"
    )
    releasing.add_argument("hashes", nargs="+", metavar="HASH", help="hex hashes")
    releasing.set_defaults(run=_run_quarantine_release)

    disputes = commands.add_parser("disputes", help="tenants contesting hits")
    actions = disputes.add_subparsers(
        dest="disputes_command", required=True, metavar="ACTION"
    )
    listing = actions.add_parser("list", help="disputes as JSON lines, oldest first")
    _data_argument(listing)
    listing.add_argument("--open", action="store_true", help="only open ones")
    listing.set_defaults(run=_run_disputes_list)
    resolving = actions.add_parser("resolve", help="close an open dispute")
    _data_argument(resolving)
    resolving.add_argument("id", help="the dispute's id")
    resolving.add_argument("--outcome", required=True, choices=OUTCOMES)
    resolving.add_argument("--note", default="", help="why, for the record")
    resolving.add_argument(
        "--remove",
        action="store_true",
        help="upheld: take the hash off every list first",
    )
    resolving.set_defaults(run=_run_disputes_resolve)


def _data_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, type=Path, help="the data directory")


def _run_quarantine_list(args: argparse.Namespace) -> int:
    environment = layout.Environment(args.data, readonly=True)
    try:
        with environment.read() as transaction:
            records = read_records(environment, transaction)
    finally:
        environment.close()
    for record in sorted(records, key=lambda r: (r.held_at, r.hash)):
        if record.status == HELD or not args.held:
            print(json.dumps(_quarantine_json(record)))
    return EXIT_OK


def _run_quarantine_release(args: argparse.Namespace) -> int:
    with HashStore.open(args.data) as store:
        released, generation = release(store.environment, args.hashes, args.algorithm)
    if generation is None:
        raise HashCheckError(
            "None of these hashes is on hold; see `hashcheck-server quarantine list`."
        )
    for record in released:
        print(f"released {record.algorithm} {record.hash}: generation {generation}")
    missing = {text.strip().lower() for text in args.hashes} - {
        r.hash for r in released
    }
    for text in sorted(missing):
        print(f"not on hold: {text}")
    return EXIT_OK


def _run_disputes_list(args: argparse.Namespace) -> int:
    environment = layout.Environment(args.data, readonly=True)
    try:
        disputes = read_disputes(environment, open_only=args.open)
    finally:
        environment.close()
    for dispute in disputes:
        print(json.dumps(_dispute_json(dispute)))
    return EXIT_OK


def _run_disputes_resolve(args: argparse.Namespace) -> int:
    if args.remove and args.outcome != UPHELD:
        raise HashCheckError("--remove goes with --outcome upheld only.")
    with HashStore.open(args.data) as store:
        dispute = open_dispute(store.environment, args.id)
        if args.remove:
            algorithm = Algorithm(dispute.algorithm)
            digest = np.frombuffer(bytes.fromhex(dispute.hash), dtype=np.uint8)
            removed, generation = store.remove_hashes(algorithm, digest.reshape(1, -1))
            print(
                f"removed {removed} {algorithm.value} hash from every list: "
                f"generation {generation}"
            )
        resolved = resolve_dispute(store.environment, args.id, args.outcome, args.note)
    print(f"dispute {resolved.id}: {resolved.status}")
    return EXIT_OK


def _quarantine_json(record: QuarantineRecord) -> dict[str, Any]:
    return {
        "algorithm": record.algorithm,
        "hash": record.hash,
        "status": record.status,
        "tenants": record.tenants,
        "window_seconds": record.window_seconds,
        "held_at": _iso(record.held_at),
        "changed_at": _iso(record.changed_at),
    }


def _dispute_json(dispute: DisputeRecord) -> dict[str, Any]:
    resolved_at = dispute.resolved_at
    return {
        "id": dispute.id,
        "tenant": dispute.tenant,
        "algorithm": dispute.algorithm,
        "hash": dispute.hash,
        "reason": dispute.reason,
        "evidence": dispute.evidence,
        "has_receipt": dispute.receipt is not None,
        "status": dispute.status,
        "created_at": _iso(dispute.created_at),
        "resolved_at": None if resolved_at is None else _iso(resolved_at),
        "note": dispute.note,
    }


def _iso(seconds: float) -> str:
    moment = datetime.datetime.fromtimestamp(seconds, datetime.UTC)
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")
