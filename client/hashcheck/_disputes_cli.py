"""The CLI's recourse against hits: `dispute` and `withdrawals`.

    hashcheck dispute --server HOST:PORT [--algorithm ALG] HASH --reason TEXT
        [--receipts FILE]
    hashcheck withdrawals --server HOST:PORT [--since ISO-TIME]

`dispute` contests a hit and prints one JSON object:
`{"dispute_id": "dsp-...", "hash": ..., "algorithm": ...}`. With `--receipts
FILE` (a file written by `check|scan --receipts`), the newest receipt of
that hash in it is sent along as evidence.

`withdrawals` prints one JSON object a line for each hash reported to this
caller as a hit and since withdrawn, oldest first: `hash`, `algorithm`,
`withdrawn_at` (ISO 8601, UTC), `lists` and `generation`. `--since` takes
an ISO time (`2026-05-01T00:00:00Z`, or a date); without it, every
withdrawal the server knows of.

Both exit 0 on success and 2 on error.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

from hashcheck._algorithms import Algorithm, infer_algorithm
from hashcheck._client import Client
from hashcheck._disputes import Withdrawal
from hashcheck._exceptions import HashCheckError, InvalidHash
from hashcheck._receipts import Receipt

if TYPE_CHECKING:
    _Subcommands = argparse._SubParsersAction[argparse.ArgumentParser]

__all__ = ["add_recourse_commands"]

EXIT_OK = 0

ClientFactory = Callable[[argparse.Namespace], Client]


def add_recourse_commands(
    commands: _Subcommands,
    connection: argparse.ArgumentParser,
    client_for: ClientFactory,
    algorithm_argument: Callable[[str], Algorithm],
) -> None:
    """Register `dispute` and `withdrawals` with the `hashcheck` parser."""
    dispute = commands.add_parser(
        "dispute",
        parents=[connection],
        help="contest a hit reported to you, saying why",
        description="Contest a hit; prints the dispute's id as JSON.",
    )
    dispute.add_argument(
        "--algorithm",
        metavar="ALG",
        type=algorithm_argument,
        help="default: from the hash's length (PDQ must be named)",
    )
    dispute.add_argument("--reason", required=True, help="why the hit is wrong")
    dispute.add_argument(
        "--receipts",
        metavar="FILE",
        help="send the hash's receipt from this file (written by --receipts)",
    )
    dispute.add_argument("hash", metavar="HASH", help="the hex hash that hit")
    dispute.set_defaults(run=lambda args: _run_dispute(args, client_for))

    withdrawals = commands.add_parser(
        "withdrawals",
        parents=[connection],
        help="hits reported to you that have since been withdrawn",
        description="One JSON line per withdrawn hit, oldest first.",
    )
    withdrawals.add_argument(
        "--since",
        metavar="ISO-TIME",
        type=_time_argument,
        default=0.0,
        help="only withdrawals after this time, e.g. 2026-05-01T00:00:00Z "
        "(default: all)",
    )
    withdrawals.set_defaults(run=lambda args: _run_withdrawals(args, client_for))


def _run_dispute(args: argparse.Namespace, client_for: ClientFactory) -> int:
    algorithm = args.algorithm or _algorithm_of(args.hash)
    receipt = None
    if args.receipts is not None:
        receipt = _saved_receipt(args.receipts, args.hash, algorithm)
    with client_for(args) as client:
        dispute_id = client.dispute(args.hash, args.reason, algorithm, receipt)
    record = {
        "dispute_id": dispute_id,
        "hash": args.hash.strip().lower(),
        "algorithm": algorithm.value,
    }
    print(json.dumps(record))
    return EXIT_OK


def _run_withdrawals(args: argparse.Namespace, client_for: ClientFactory) -> int:
    with client_for(args) as client:
        found = client.withdrawals(since=args.since)
    for withdrawal in found:
        sys.stdout.write(json.dumps(_withdrawal_record(withdrawal)) + "\n")
    sys.stdout.flush()
    return EXIT_OK


def _withdrawal_record(withdrawal: Withdrawal) -> dict[str, object]:
    return {
        "hash": withdrawal.hex,
        "algorithm": withdrawal.algorithm.value,
        "withdrawn_at": _iso(withdrawal.withdrawn_at),
        "lists": list(withdrawal.lists),
        "generation": withdrawal.generation,
    }


def _saved_receipt(path: str, hex_hash: str, algorithm: Algorithm) -> Receipt:
    """The last receipt saved for the hash in a receipts file."""
    wanted = hex_hash.strip().lower()
    found = None
    with open(path, encoding="utf-8") as lines:
        for line in lines:
            if not line.strip():
                continue
            record = json.loads(line)
            if (
                isinstance(record, dict)
                and record.get("hash") == wanted
                and record.get("algorithm") == algorithm.value
            ):
                found = Receipt.from_json(record)
    if found is None:
        raise HashCheckError(
            f"{path} holds no receipt of {algorithm.value} hash {wanted}; "
            "dispute without --receipts, or name the file that does."
        )
    return found


def _algorithm_of(text: str) -> Algorithm:
    try:
        return infer_algorithm(text)
    except ValueError as error:
        raise InvalidHash(str(error)) from None


def _time_argument(text: str) -> float:
    """Seconds since the epoch of an ISO date or time; UTC unless it says."""
    try:
        moment = datetime.datetime.fromisoformat(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an ISO time such as 2026-05-01T00:00:00Z."
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    return moment.timestamp()


def _iso(seconds: float) -> str:
    moment = datetime.datetime.fromtimestamp(seconds, datetime.UTC)
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")
