"""The gRPC edge: hashcheck.v1.HashCheck, and the one place errors become status codes.

Mapping, for every method:

- BadRequest (wrong width, unknown algorithm, batch too large): INVALID_ARGUMENT
  with a message saying what was wrong;
- NotReady (no generation mapped yet): UNAVAILABLE, which clients retry;
- anything else: INTERNAL with a fixed message. The traceback goes to the log,
  never to the caller: grpcio would otherwise send the exception text, and
  internals or list contents must not leave the server.

Nothing here logs a checked hash: misses are a company's private data.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import grpc
import numpy as np

from hashcheck._algorithms import Algorithm
from hashcheck._version import __version__
from hashcheck.v1 import hashcheck_pb2, hashcheck_pb2_grpc
from hashcheck_server.errors import BadRequest, NotReady
from hashcheck_server.generation import Generation, ListMatch, TableHits
from hashcheck_server.metrics import ServerMetrics
from hashcheck_server.serving import GenerationKeeper

__all__ = ["CheckPolicy", "HashCheckServicer"]

logger = logging.getLogger(__name__)

#: Exact-match algorithms this server answers. PDQ is in the API already and
#: answered with INVALID_ARGUMENT until near-duplicate matching is served.
SERVED_ALGORITHMS = (Algorithm.MD5, Algorithm.SHA1, Algorithm.SHA256)

_INTERNAL_MESSAGE = "The server failed to answer; its operators have the details."


@dataclass(frozen=True)
class CheckPolicy:
    """Limits the servicer enforces on every request."""

    max_batch_hashes: int = 1_000_000
    reveal_counts: bool = False


class _Refusal(Exception):
    """A call ended with a status code; carried out of the handler to abort."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class HashCheckServicer(hashcheck_pb2_grpc.HashCheckServicer):
    """Answers checks from the keeper's current generation."""

    def __init__(
        self, keeper: GenerationKeeper, metrics: ServerMetrics, policy: CheckPolicy
    ) -> None:
        self._keeper = keeper
        self._metrics = metrics
        self._policy = policy

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
                for request in request_iterator:
                    yield self._answer(request, "CheckStream")
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
        context.abort(
            grpc.StatusCode.UNIMPLEMENTED, "This server takes no disputes yet."
        )
        raise AssertionError("unreachable: abort raises")

    def ListWithdrawals(
        self,
        request: hashcheck_pb2.ListWithdrawalsRequest,
        context: grpc.ServicerContext,
    ) -> hashcheck_pb2.ListWithdrawalsReply:
        context.abort(
            grpc.StatusCode.UNIMPLEMENTED, "This server keeps no withdrawals yet."
        )
        raise AssertionError("unreachable: abort raises")

    @contextmanager
    def _call(self, method: str, context: grpc.ServicerContext) -> Iterator[None]:
        """Count the call and turn any failure into its status code."""
        code = grpc.StatusCode.OK
        try:
            try:
                yield
            except BadRequest as error:
                raise _Refusal(grpc.StatusCode.INVALID_ARGUMENT, str(error)) from error
            except NotReady as error:
                raise _Refusal(grpc.StatusCode.UNAVAILABLE, str(error)) from error
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
                raise _Refusal(grpc.StatusCode.INTERNAL, _INTERNAL_MESSAGE) from error
        except _Refusal as refusal:
            code = refusal.code
            context.abort(refusal.code, refusal.message)
        finally:
            self._metrics.requests.labels(method, code.name).inc()

    def _answer(
        self, request: hashcheck_pb2.CheckRequest, method: str
    ) -> hashcheck_pb2.CheckReply:
        started = time.perf_counter()
        algorithm = self._validate(request)
        with self._keeper.lease() as generation:
            hits = generation.check(algorithm, request.hashes)
        reply = _reply(request, algorithm, hits)

        checked = reply.checked
        self._metrics.batch_hashes.observe(checked)
        self._metrics.hashes_checked.labels(algorithm.value).inc(checked)
        self._count_hits(algorithm, hits)
        self._metrics.request_seconds.labels(method).observe(
            time.perf_counter() - started
        )
        return reply

    def _validate(self, request: hashcheck_pb2.CheckRequest) -> Algorithm:
        try:
            algorithm = Algorithm.from_proto(request.algorithm)
        except ValueError:
            raise BadRequest(
                f"Unknown algorithm {request.algorithm}; send MD5, SHA1 or SHA256."
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
        if count > self._policy.max_batch_hashes:
            raise BadRequest(
                f"The batch holds {count} hashes; this server takes at most "
                f"{self._policy.max_batch_hashes} a request. Split it, or stream it."
            )
        return algorithm

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
        info = hashcheck_pb2.Info(
            service_version=__version__,
            generation=generation.number,
            generation_committed_at=generation.committed_at,
            max_batch_hashes=self._policy.max_batch_hashes,
        )
        for algorithm in SERVED_ALGORITHMS:
            entry = info.algorithms.add(
                algorithm=algorithm.proto, width=algorithm.width
            )
            if self._policy.reveal_counts:
                entry.hash_count = generation.hash_count(algorithm)
        return info


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
        for provenance in hits.provenances:
            reply.provenances.add().lists.extend(_list_matches(provenance))
    return reply


def _list_matches(provenance: tuple[ListMatch, ...]) -> list[hashcheck_pb2.ListMatch]:
    return [
        hashcheck_pb2.ListMatch(list=m.list, category=m.category) for m in provenance
    ]
