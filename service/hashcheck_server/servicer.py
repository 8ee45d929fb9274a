"""The gRPC edge: hashcheck.v1.HashCheck, and the one place errors become status codes.

Mapping, for every method:

- BadRequest (wrong width, unknown algorithm, batch too large): INVALID_ARGUMENT
  with a message saying what was wrong;
- NotReady (no generation mapped yet): UNAVAILABLE, which clients retry;
- Unauthenticated (no key, or an unknown or expired one): UNAUTHENTICATED;
- Forbidden (a disabled tenant): PERMISSION_DENIED;
- OverLimit (the tenant's rate or streams): RESOURCE_EXHAUSTED, with the
  delay in a `retry-after-ms` trailer when one is known (the SDK waits it);
  a stream over the rate is slowed to it instead (`_prepare_paced`);
- AuditFailed (a hit could not be recorded): UNAVAILABLE, and no hit is
  reported unrecorded;
- ReceiptsUnavailable (receipts asked of a server without a signing key):
  FAILED_PRECONDITION, before any lookup;
- Unsupported (a dispute sent to a replica, say): FAILED_PRECONDITION;
- anything else: INTERNAL with a fixed message. The traceback goes to the log,
  never to the caller: grpcio would otherwise send the exception text, and
  internals or list contents must not leave the server.

Nothing here logs a checked hash: misses are a company's private data.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import NoReturn

import grpc
import numpy as np

from hashcheck._algorithms import Algorithm
from hashcheck._version import __version__
from hashcheck.v1 import hashcheck_pb2, hashcheck_pb2_grpc
from hashcheck_server import pdq_index
from hashcheck_server.audit import AuditLog, AuditTicket, records_for_hits
from hashcheck_server.caller import Caller, current_caller
from hashcheck_server.disputes import DisputeDesk
from hashcheck_server.errors import (
    AccessRefused,
    AuditFailed,
    BadRequest,
    Forbidden,
    HashCheckError,
    NotReady,
    OverLimit,
    ReceiptsUnavailable,
    Unauthenticated,
    Unsupported,
)
from hashcheck_server.floods import QuarantineGuard
from hashcheck_server.generation import Generation, ListMatch, TableHits
from hashcheck_server.metrics import ServerMetrics
from hashcheck_server.readahead import ReadAhead
from hashcheck_server.receipts import sign_receipts
from hashcheck_server.refusals import RefusalRecorder
from hashcheck_server.serving import GenerationKeeper
from hashcheck_server.signing import SigningKey
from hashcheck_server.withdrawals import list_withdrawals

__all__ = ["CheckPolicy", "HashCheckServicer", "Status", "abort_with", "status_for"]

logger = logging.getLogger(__name__)

#: The algorithms this server answers: three exactly, PDQ within a distance.
SERVED_ALGORITHMS = (Algorithm.MD5, Algorithm.SHA1, Algorithm.SHA256, Algorithm.PDQ)

_INTERNAL_MESSAGE = "The server failed to answer; its operators have the details."


@dataclass(frozen=True)
class CheckPolicy:
    """Limits the servicer enforces on every request."""

    max_batch_hashes: int = 1_000_000
    reveal_counts: bool = False
    #: PDQ: the distance applied when a request names none (max_distance 0),
    #: and the largest a request may ask for; larger ones are capped.
    pdq_default_distance: int = pdq_index.DEFAULT_MAX_DISTANCE
    pdq_distance_cap: int = pdq_index.DEFAULT_MAX_DISTANCE
    #: PDQ: the largest batch. A near-duplicate search costs thousands of
    #: times an exact lookup (some 400 hashes/s at 20 million known), so a
    #: batch sized for exact hashes would hold a worker for minutes.
    pdq_max_batch_hashes: int = 10_000

    def pdq_distance(self, requested: int) -> int:
        """The distance a PDQ request is answered with."""
        return min(requested or self.pdq_default_distance, self.pdq_distance_cap)


#: The trailer that tells a rate-limited caller when to come back.
RETRY_AFTER_KEY = "retry-after-ms"


@dataclass(frozen=True)
class Status:
    """The status code, message and trailers a call ends with."""

    code: grpc.StatusCode
    message: str
    trailers: tuple[tuple[str, str], ...] = ()


def status_for(error: HashCheckError) -> Status:
    """The status of an error raised on purpose (see the module docstring)."""
    if isinstance(error, BadRequest):
        return Status(grpc.StatusCode.INVALID_ARGUMENT, str(error))
    if isinstance(error, Unauthenticated):
        return Status(grpc.StatusCode.UNAUTHENTICATED, str(error))
    if isinstance(error, Forbidden):
        return Status(grpc.StatusCode.PERMISSION_DENIED, str(error))
    if isinstance(error, OverLimit):
        trailers: tuple[tuple[str, str], ...] = ()
        if error.retry_after_seconds is not None:
            milliseconds = max(1, round(error.retry_after_seconds * 1000))
            trailers = ((RETRY_AFTER_KEY, str(milliseconds)),)
        return Status(grpc.StatusCode.RESOURCE_EXHAUSTED, str(error), trailers)
    if isinstance(error, NotReady | AuditFailed):
        return Status(grpc.StatusCode.UNAVAILABLE, str(error))
    if isinstance(error, ReceiptsUnavailable | Unsupported):
        return Status(grpc.StatusCode.FAILED_PRECONDITION, str(error))
    return Status(grpc.StatusCode.INTERNAL, _INTERNAL_MESSAGE)


def abort_with(context: grpc.ServicerContext, status: Status) -> NoReturn:
    """End the call with `status`; raises, as grpcio's abort does."""
    if status.trailers:
        context.set_trailing_metadata(status.trailers)
    context.abort(status.code, status.message)


#: Batches of a stream looked up ahead of their replies (hashcheck_server.readahead).
_STREAM_READ_AHEAD = 4
#: Batches of a stream received ahead of their lookups.
_STREAM_RECEIVE_AHEAD = 2


def _as_received(request: hashcheck_pb2.CheckRequest) -> hashcheck_pb2.CheckRequest:
    return request


@dataclass(frozen=True)
class _Answer:
    """A request looked up, its reply built, its hits on their way to the audit."""

    request: hashcheck_pb2.CheckRequest
    algorithm: Algorithm
    caller: Caller | None
    hits: TableHits
    reply: hashcheck_pb2.CheckReply
    #: The hits' audit entries; None when nothing is recorded.
    recorded: AuditTicket | None
    #: perf_counter() when the request was taken up, for the latency metric.
    started: float


class _Refusal(Exception):
    """A call ended with a status code; carried out of the handler to abort."""

    def __init__(self, status: Status) -> None:
        super().__init__(status.message)
        self.status = status


class HashCheckServicer(hashcheck_pb2_grpc.HashCheckServicer):
    """Answers checks from the keeper's current generation."""

    def __init__(
        self,
        keeper: GenerationKeeper,
        metrics: ServerMetrics,
        policy: CheckPolicy,
        audit: AuditLog | None = None,
        signing_key: SigningKey | None = None,
        quarantine: QuarantineGuard | None = None,
        disputes: DisputeDesk | None = None,
    ) -> None:
        self._keeper = keeper
        self._metrics = metrics
        self._policy = policy
        #: Where hits are recorded before they are reported; None records none.
        self._audit = audit
        self._refusals = RefusalRecorder(metrics)
        #: Signs receipts (hashcheck_server.receipts); None refuses them.
        self._signing_key = signing_key
        #: Counts hits for floods (hashcheck_server.floods); None counts none.
        self._quarantine = quarantine
        #: Takes disputes (hashcheck_server.disputes); None refuses them.
        self._disputes = disputes

    def Check(
        self, request: hashcheck_pb2.CheckRequest, context: grpc.ServicerContext
    ) -> hashcheck_pb2.CheckReply:
        with self._call("Check", context):
            return self._answer(request, "Check")
        raise AssertionError("unreachable: _call aborts or the block returns")

    def CheckStream(
        self,
        request_iterator: Iterable[hashcheck_pb2.CheckRequest],
        context: grpc.ServicerContext,
    ) -> Iterator[hashcheck_pb2.CheckReply]:
        self._metrics.active_streams.inc()
        try:
            with self._call("CheckStream", context):
                yield from self._answer_stream(iter(request_iterator), context)
        finally:
            self._metrics.active_streams.dec()

    def GetInfo(
        self, request: hashcheck_pb2.GetInfoRequest, context: grpc.ServicerContext
    ) -> hashcheck_pb2.Info:
        with self._call("GetInfo", context):
            with self._keeper.lease() as generation:
                return self._describe(generation)
        raise AssertionError("unreachable: _call aborts or the block returns")

    def Dispute(
        self, request: hashcheck_pb2.DisputeRequest, context: grpc.ServicerContext
    ) -> hashcheck_pb2.DisputeReply:
        with self._call("Dispute", context):
            if self._disputes is None:
                raise Unsupported("This server takes no disputes.")
            dispute_id = self._disputes.take(request, current_caller())
            return hashcheck_pb2.DisputeReply(dispute_id=dispute_id)
        raise AssertionError("unreachable: _call aborts or the block returns")

    def ListWithdrawals(
        self,
        request: hashcheck_pb2.ListWithdrawalsRequest,
        context: grpc.ServicerContext,
    ) -> hashcheck_pb2.ListWithdrawalsReply:
        with self._call("ListWithdrawals", context):
            caller = current_caller()
            with self._keeper.lease() as generation:
                return list_withdrawals(
                    generation,
                    self._audit,
                    request,
                    tenant=caller.tenant_name if caller is not None else "",
                    visible=_filter_of(caller),
                    pdq_distance=self._policy.pdq_distance(0),
                )
        raise AssertionError("unreachable: _call aborts or the block returns")

    @contextmanager
    def _call(self, method: str, context: grpc.ServicerContext) -> Iterator[None]:
        """Count the call and turn any failure into its status code."""
        code = grpc.StatusCode.OK
        try:
            try:
                yield
            except (
                BadRequest,
                NotReady,
                AccessRefused,
                AuditFailed,
                ReceiptsUnavailable,
                Unsupported,
            ) as error:
                raise _Refusal(status_for(error)) from error
            except GeneratorExit:
                # The client went away mid-stream: an expected ending.
                code = grpc.StatusCode.CANCELLED
                raise
            except Exception as error:
                if not context.is_active():
                    # The client cancelled or disconnected while we read its
                    # stream; nobody is left to answer, and nothing failed.
                    code = grpc.StatusCode.CANCELLED
                    return
                logger.exception("%s failed", method)
                internal = Status(grpc.StatusCode.INTERNAL, _INTERNAL_MESSAGE)
                raise _Refusal(internal) from error
        except _Refusal as refusal:
            code = refusal.status.code
            self._refusals.record(method, code, refusal.status.message)
            abort_with(context, refusal.status)
        finally:
            self._metrics.requests.labels(method, code.name).inc()

    def _answer(
        self, request: hashcheck_pb2.CheckRequest, method: str
    ) -> hashcheck_pb2.CheckReply:
        # The reply waits for the audit at once: commit it in this thread.
        return self._deliver(self._prepare(request, audit_inline=True), method)

    def _answer_stream(
        self,
        requests: Iterator[hashcheck_pb2.CheckRequest],
        context: grpc.ServicerContext,
    ) -> Iterator[hashcheck_pb2.CheckReply]:
        """Replies in request order; lookups run ahead while audits commit."""

        def prepare(request: hashcheck_pb2.CheckRequest) -> _Answer:
            return self._prepare_paced(request, context)

        # Receiving gets a thread of its own: gRPC asks for the next message
        # only when the iterator is advanced, so a thread that received and
        # then looked up would leave the next batch waiting in the transport
        # for the whole of each lookup.
        receiving = ReadAhead(
            requests, _as_received, depth=_STREAM_RECEIVE_AHEAD, name="check-receive"
        )
        with receiving as received:
            read_ahead = ReadAhead(
                iter(received), prepare, depth=_STREAM_READ_AHEAD, name="check-stream"
            )
            with read_ahead as answers:
                for answer in answers:
                    yield self._deliver(answer, "CheckStream")

    def _prepare_paced(
        self, request: hashcheck_pb2.CheckRequest, context: grpc.ServicerContext
    ) -> _Answer:
        """A stream's request; over the tenant's rate, it waits for its tokens.

        A unary call over the rate is refused with the delay, and the SDK
        sends it again then. A stream cannot be resent from where it was, so
        instead of ending it the server waits out the delay: the stream
        slows to the tenant's rate, and the client's window of unanswered
        batches holds its sender back meanwhile.
        """
        while True:
            try:
                return self._prepare(request)
            except OverLimit as over:
                delay = over.retry_after_seconds
                if delay is None or not _waited_while_active(context, delay):
                    raise

    def _prepare(
        self, request: hashcheck_pb2.CheckRequest, *, audit_inline: bool = False
    ) -> _Answer:
        """Validate, look up, hand the hits to the audit and build the reply."""
        started = time.perf_counter()
        caller = current_caller()
        algorithm = self._validate(request, caller)
        receipt_key = self._receipt_key(request)
        if caller is not None and caller.bucket is not None:
            caller.bucket.charge(algorithm, len(request.hashes) // algorithm.width)

        with self._keeper.lease() as generation:
            hits = generation.check(
                algorithm,
                request.hashes,
                max_distance=self._policy.pdq_distance(request.max_distance),
                visible=_filter_of(caller),
            )
        recorded = None
        if hits.count and self._audit is not None:
            recorded = self._audit.submit(
                records_for_hits(
                    caller, algorithm, request.hashes, hits, request.sequence
                ),
                inline=audit_inline,
            )

        reply = _reply(request, algorithm, hits)
        if receipt_key is not None:
            sign_receipts(
                reply,
                request.hashes,
                algorithm,
                receipt_key,
                tenant=caller.tenant_name if caller is not None else "",
                issued_at=time.time(),
            )
        return _Answer(request, algorithm, caller, hits, reply, recorded, started)

    def _deliver(self, answer: _Answer, method: str) -> hashcheck_pb2.CheckReply:
        """The reply, once its hits are durable in the audit; counted."""
        if answer.recorded is not None:
            # No hit leaves the server unaudited (AuditFailed otherwise).
            answer.recorded.wait()
        if self._quarantine is not None:
            self._quarantine.observe(
                answer.caller, answer.algorithm, answer.request.hashes, answer.hits
            )

        caller, algorithm, hits = answer.caller, answer.algorithm, answer.hits
        checked = answer.reply.checked
        self._metrics.batch_hashes.observe(checked)
        self._metrics.hashes_checked.labels(algorithm.value).inc(checked)
        self._count_hits(algorithm, hits)
        if caller is not None and caller.tenant is not None:
            self._metrics.tenant_hashes_checked.labels(caller.tenant.name).inc(checked)
            self._metrics.tenant_hits.labels(caller.tenant.name).inc(hits.count)
        self._metrics.request_seconds.labels(method).observe(
            time.perf_counter() - answer.started
        )
        return answer.reply

    def _validate(
        self, request: hashcheck_pb2.CheckRequest, caller: Caller | None
    ) -> Algorithm:
        try:
            algorithm = Algorithm.from_proto(request.algorithm)
        except ValueError:
            raise BadRequest(
                f"Unknown algorithm {request.algorithm}; send MD5, SHA1, SHA256 or PDQ."
            ) from None
        if algorithm not in SERVED_ALGORITHMS:
            raise BadRequest(
                f"This server does not answer {algorithm.value} hashes yet."
            )

        size = len(request.hashes)
        if size % algorithm.width:
            raise BadRequest(
                f"The batch is {size} bytes, not a multiple of the "
                f"{algorithm.width}-byte "
                f"{algorithm.value} width; send whole raw hashes, not hex."
            )
        count = size // algorithm.width
        largest = self._max_batch_hashes(caller)
        if algorithm is Algorithm.PDQ:
            largest = min(largest, self._policy.pdq_max_batch_hashes)
        if count > largest:
            raise BadRequest(
                f"The batch holds {count} hashes; this server takes at most "
                f"{largest} a request. Split it, or stream it."
            )
        return algorithm

    def _receipt_key(self, request: hashcheck_pb2.CheckRequest) -> SigningKey | None:
        """The key to sign the request's receipts with; None when it asks for none."""
        if not request.want_receipts:
            return None
        if self._signing_key is None:
            raise ReceiptsUnavailable(
                "This server has no signing key, so it cannot issue receipts. "
                "Check without receipts, or ask the hotline to configure its key."
            )
        return self._signing_key

    def _max_batch_hashes(self, caller: Caller | None) -> int:
        """The server's largest batch, or the tenant's if that is smaller."""
        largest = self._policy.max_batch_hashes
        tenant = caller.tenant if caller is not None else None
        if tenant is not None and tenant.limits.max_batch_hashes:
            largest = min(largest, tenant.limits.max_batch_hashes)
        return largest

    def _count_hits(self, algorithm: Algorithm, hits: TableHits) -> None:
        if not hits.count:
            return
        per_provenance = np.bincount(
            hits.provenance_of, minlength=len(hits.provenances)
        )
        for provenance, count in zip(
            hits.provenances, per_provenance.tolist(), strict=True
        ):
            for match in provenance:
                self._metrics.hits.labels(algorithm.value, match.list).inc(count)

    def _describe(self, generation: Generation) -> hashcheck_pb2.Info:
        caller = current_caller()
        tenant = caller.tenant if caller is not None else None
        info = hashcheck_pb2.Info(
            service_version=__version__,
            generation=generation.number,
            generation_committed_at=generation.committed_at,
            generation_digest=generation.digest,
            max_batch_hashes=self._max_batch_hashes(caller),
            tenant=tenant.name if tenant is not None else "",
            default_max_distance=self._policy.pdq_distance(0),
            max_distance_cap=self._policy.pdq_distance_cap,
        )
        # With tenants, only the hotline's operators see table sizes; a
        # server without tenants shows them when its operator said so.
        reveal_counts = (
            tenant.operator if tenant is not None else self._policy.reveal_counts
        )
        for algorithm in SERVED_ALGORITHMS:
            entry = info.algorithms.add(
                algorithm=algorithm.proto, width=algorithm.width
            )
            if reveal_counts:
                entry.hash_count = generation.hash_count(algorithm)
        return info


def _filter_of(caller: Caller | None) -> Callable[[ListMatch], bool] | None:
    """The memberships a caller may see hits from; None: all of them."""
    if caller is None or caller.tenant is None or caller.tenant.sees_everything:
        return None
    return caller.tenant.allows


#: Longest sleep of a paced stream between looks at whether its call ended.
_PACE_POLL_SECONDS = 0.1


def _waited_while_active(context: grpc.ServicerContext, seconds: float) -> bool:
    """Sleep `seconds`; False as soon as the call is over (cancelled, timed out)."""
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        if not context.is_active():
            return False
        time.sleep(min(left, _PACE_POLL_SECONDS))
    return context.is_active()


def _reply(
    request: hashcheck_pb2.CheckRequest, algorithm: Algorithm, hits: TableHits
) -> hashcheck_pb2.CheckReply:
    reply = hashcheck_pb2.CheckReply(
        sequence=request.sequence,
        generation=hits.generation,
        checked=len(request.hashes) // algorithm.width,
    )
    if hits.count:
        reply.hit_positions.extend(hits.positions.tolist())
        reply.hit_provenances.extend(hits.provenance_of.tolist())
        reply.hit_distances.extend(hits.distances.tolist())
        for provenance in hits.provenances:
            reply.provenances.add().lists.extend(_list_matches(provenance))
    return reply


def _list_matches(provenance: tuple[ListMatch, ...]) -> list[hashcheck_pb2.ListMatch]:
    return [
        hashcheck_pb2.ListMatch(list=m.list, category=m.category) for m in provenance
    ]
