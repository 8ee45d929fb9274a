"""Between the SDK's values and the hashcheck.v1 messages, for both clients.

A reply names its hits by position in the batch and points each at one of
its distinct provenances. Decoding checks the reply against the batch it
answers (count, positions, provenance indexes) and builds one `Hit` per hit,
sharing the decoded provenance between hits that have the same one.

When the request asked for receipts, each hit also gets its receipt: the
reply must then carry one per hit, in the same order.

`StreamLedger` keeps the batches of a stream that are still unanswered, in
the order they were sent, since replies come back in that order, and knows
whether the whole input was sent.
"""

from __future__ import annotations

import collections
import threading
from typing import Generic, TypeVar

from hashcheck._algorithms import Algorithm
from hashcheck._exceptions import ProtocolError
from hashcheck._models import (
    AlgorithmInfo,
    Batch,
    BatchResult,
    CheckResult,
    Hit,
    Info,
    ListMatch,
)
from hashcheck._receipts import Receipt
from hashcheck.v1 import hashcheck_pb2

__all__ = ["StreamLedger", "check_request", "info_from_reply", "result_from_reply"]

ContextT = TypeVar("ContextT")


def check_request(
    algorithm: Algorithm,
    hashes: bytes,
    sequence: int = 0,
    want_receipts: bool = False,
    max_distance: int | None = None,
) -> hashcheck_pb2.CheckRequest:
    """The request for one packed batch; `max_distance` is for PDQ only."""
    return hashcheck_pb2.CheckRequest(
        algorithm=algorithm.proto,
        hashes=hashes,
        sequence=sequence,
        want_receipts=want_receipts,
        max_distance=max_distance or 0,
    )


def result_from_reply(
    reply: hashcheck_pb2.CheckReply,
    algorithm: Algorithm,
    hashes: bytes,
    want_receipts: bool = False,
) -> CheckResult:
    """The result for a batch, from the server's reply to it."""
    width = algorithm.width
    count = len(hashes) // width
    _check_reply_fits(reply, count)

    provenances = [_lists_of(provenance) for provenance in reply.provenances]
    receipts = _receipts_of(reply, want_receipts)
    distances: list[int | None] = list(reply.hit_distances) or [None] * len(receipts)
    hits = tuple(
        Hit(
            position=position,
            hash=hashes[position * width : (position + 1) * width],
            algorithm=algorithm,
            lists=provenances[provenance],
            generation=reply.generation,
            receipt=receipt,
            distance=distance,
        )
        for position, provenance, receipt, distance in zip(
            reply.hit_positions,
            reply.hit_provenances,
            receipts,
            distances,
            strict=True,
        )
    )
    return CheckResult(algorithm, reply.generation, reply.checked, hits)


def info_from_reply(reply: hashcheck_pb2.Info) -> Info:
    """The SDK's Info; algorithms this SDK does not know are left out."""
    algorithms = tuple(
        AlgorithmInfo(
            algorithm=Algorithm.from_proto(entry.algorithm),
            width=entry.width,
            hash_count=entry.hash_count if entry.HasField("hash_count") else None,
        )
        for entry in reply.algorithms
        if _is_known_algorithm(entry.algorithm)
    )
    return Info(
        service_version=reply.service_version,
        generation=reply.generation,
        generation_committed_at=reply.generation_committed_at,
        algorithms=algorithms,
        max_batch_hashes=reply.max_batch_hashes,
        default_max_distance=reply.default_max_distance,
        max_distance_cap=reply.max_distance_cap,
        tenant=reply.tenant,
        generation_digest=reply.generation_digest,
    )


class StreamLedger(Generic[ContextT]):
    """The unanswered batches of one stream, oldest first.

    `record` runs on the thread (or task) that sends, `settle` on the one that
    receives; a lock keeps the sequence numbers and the offset consistent
    between them.
    """

    def __init__(self, want_receipts: bool = False) -> None:
        self._want_receipts = want_receipts
        self._lock = threading.Lock()
        self._unanswered: collections.deque[tuple[int, int, Batch[ContextT]]] = (
            collections.deque()
        )
        self._next_sequence = 1
        self._next_offset = 0
        self._input_finished = False

    def record(self, batch: Batch[ContextT]) -> hashcheck_pb2.CheckRequest:
        """Remember a batch about to be sent, and return its request."""
        with self._lock:
            sequence = self._next_sequence
            self._unanswered.append((sequence, self._next_offset, batch))
            self._next_sequence += 1
            self._next_offset += batch.count
        return check_request(
            batch.algorithm, batch.hashes, sequence, self._want_receipts
        )

    def settle(self, reply: hashcheck_pb2.CheckReply) -> BatchResult[ContextT]:
        """The result for the oldest unanswered batch, which `reply` must answer."""
        with self._lock:
            if not self._unanswered:
                raise ProtocolError(
                    "The server sent more replies than batches were sent. "
                    "Report this to the server's operators."
                )
            sequence, offset, batch = self._unanswered.popleft()

        if reply.sequence != sequence:
            raise ProtocolError(
                f"The server answered batch {reply.sequence} where batch "
                f"{sequence} was due; replies must come in request order. "
                "Report this to the server's operators."
            )
        result = result_from_reply(
            reply, batch.algorithm, batch.hashes, self._want_receipts
        )
        return BatchResult(
            algorithm=result.algorithm,
            generation=result.generation,
            checked=result.checked,
            hits=result.hits,
            sequence=sequence,
            offset=offset,
            context=batch.context,
        )

    def finish_input(self) -> None:
        """Note that every batch of the input has been recorded."""
        with self._lock:
            self._input_finished = True

    def ensure_complete(self) -> None:
        """ProtocolError unless the whole input was sent and answered.

        Called when the server ended the stream without an error: a server
        that stops early must not pass for one that found nothing.
        """
        with self._lock:
            unanswered = len(self._unanswered)
            input_finished = self._input_finished
        if unanswered or not input_finished:
            raise ProtocolError(
                "The server ended the stream before it had answered every "
                "batch. Check those hashes again, and report this to the "
                "server's operators."
            )


def _check_reply_fits(reply: hashcheck_pb2.CheckReply, count: int) -> None:
    """ProtocolError unless the reply can answer a batch of `count` hashes."""
    positions = reply.hit_positions
    provenance_indexes = reply.hit_provenances
    problem = None
    if reply.checked != count:
        problem = f"says it checked {reply.checked} hashes of a batch of {count}"
    elif len(positions) != len(provenance_indexes):
        problem = "gives hit positions and provenances of different lengths"
    elif positions and max(positions) >= count:
        problem = f"names a hit beyond the end of a batch of {count}"
    elif provenance_indexes and max(provenance_indexes) >= len(reply.provenances):
        problem = "points a hit at a provenance it does not hold"
    elif reply.receipts and len(reply.receipts) != len(positions):
        problem = "gives hit positions and receipts of different lengths"
    elif reply.hit_distances and len(reply.hit_distances) != len(positions):
        problem = "gives hit positions and distances of different lengths"
    if problem is not None:
        raise ProtocolError(
            f"A reply of the server {problem}. Report this to the server's "
            "operators; the batch's result cannot be trusted."
        )


def _receipts_of(
    reply: hashcheck_pb2.CheckReply, want_receipts: bool
) -> list[Receipt | None]:
    """Each hit's receipt: None for all unless asked for, and then one for each."""
    if want_receipts and reply.hit_positions and not reply.receipts:
        raise ProtocolError(
            "The server sent no receipts for the hits although they were asked "
            "for; it may predate receipts. Check again without want_receipts, "
            "or ask its operators."
        )
    if not reply.receipts:
        return [None] * len(reply.hit_positions)
    return [Receipt.from_proto(receipt) for receipt in reply.receipts]


def _lists_of(provenance: hashcheck_pb2.Provenance) -> tuple[ListMatch, ...]:
    return tuple(ListMatch(match.list, match.category) for match in provenance.lists)


def _is_known_algorithm(value: int) -> bool:
    try:
        Algorithm.from_proto(value)
    except ValueError:
        return False
    return True
