"""Disputes and withdrawals: what a company can do about a hit afterwards.

    with hashcheck.Client("hashcheck.example:50051", api_key="...") as client:
        dispute_id = client.dispute(hit.hash, "a stock photo of our CMS")
        for withdrawal in client.withdrawals(since=last_run):
            restore_files_with(withdrawal.hex)

- A dispute contests a hit: the hotline's operators review it and may
  de-list the hash. Only a hash the server reported to this caller as a hit
  can be disputed (or one whose receipt the caller sends); anything else is
  refused with `InvalidRequest`, in the same words whether or not the hash
  is listed. The id refers to the dispute in later correspondence.
- A withdrawal says that a hash the server once reported to this caller as
  a hit has since been taken off every list the caller matches against:
  when, from which lists, and the first generation without it.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass

from hashcheck._algorithms import Algorithm
from hashcheck._exceptions import ProtocolError
from hashcheck._packing import pack_sequence, resolve_algorithm
from hashcheck._receipts import Receipt
from hashcheck.v1 import hashcheck_pb2

__all__ = ["Withdrawal"]


@dataclass(frozen=True, slots=True)
class Withdrawal:
    """A hash once reported to the caller as a hit that no longer hits.

    `hash` is the caller's own hash; `withdrawn_at` when it was taken off
    the lists, in seconds since the epoch; `lists` the lists it was taken
    off (of those it was reported on); `generation` the first generation of
    the server's lists without it.
    """

    algorithm: Algorithm
    hash: bytes
    withdrawn_at: float
    lists: tuple[str, ...]
    generation: int

    @property
    def hex(self) -> str:
        """The hash as lowercase hex."""
        return self.hash.hex()


def dispute_request(
    hash: str | bytes,
    reason: str,
    algorithm: Algorithm | str | None,
    receipt: Receipt | None,
) -> hashcheck_pb2.DisputeRequest:
    """The request for one dispute; InvalidHash for a hash of the wrong form."""
    chosen = resolve_algorithm(algorithm, [hash])
    request = hashcheck_pb2.DisputeRequest(
        algorithm=chosen.proto, hash=pack_sequence([hash], chosen), reason=reason
    )
    if receipt is not None:
        request.receipt.CopyFrom(
            hashcheck_pb2.Receipt(
                body=receipt.body, signature=receipt.signature, key_id=receipt.key_id
            )
        )
    return request


def withdrawals_request(
    since: float | datetime.datetime,
) -> hashcheck_pb2.ListWithdrawalsRequest:
    """The request for withdrawals after `since` (a datetime, or epoch seconds).

    A datetime without a time zone is taken as UTC.
    """
    if isinstance(since, datetime.datetime):
        if since.tzinfo is None:
            since = since.replace(tzinfo=datetime.UTC)
        since = since.timestamp()
    return hashcheck_pb2.ListWithdrawalsRequest(since=float(since))


def withdrawals_from_reply(
    reply: hashcheck_pb2.ListWithdrawalsReply,
) -> list[Withdrawal]:
    found = []
    for entry in reply.withdrawals:
        try:
            algorithm = Algorithm.from_proto(entry.algorithm)
        except ValueError:
            raise ProtocolError(
                f"The server named a withdrawal's algorithm {entry.algorithm}, "
                "which this SDK does not know. Upgrade the SDK."
            ) from None
        if len(entry.hash) != algorithm.width:
            raise ProtocolError(
                f"The server sent a withdrawn {algorithm.value} hash of "
                f"{len(entry.hash)} bytes; it should have {algorithm.width}."
            )
        found.append(
            Withdrawal(
                algorithm=algorithm,
                hash=entry.hash,
                withdrawn_at=entry.withdrawn_at,
                lists=tuple(entry.lists),
                generation=entry.generation,
            )
        )
    return found
