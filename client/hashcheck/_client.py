"""The synchronous HashCheck client."""

from __future__ import annotations

import datetime
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from types import TracebackType
from typing import Generic, TypeVar

import grpc

from hashcheck._algorithms import Algorithm
from hashcheck._config import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_MAX_IN_FLIGHT,
    DEFAULT_TIMEOUT_SECONDS,
    TLSOptions,
    call_metadata,
    channel_options,
    require_max_in_flight,
    resolve_api_key,
    resolve_target,
)
from hashcheck._disputes import (
    Withdrawal,
    dispute_request,
    withdrawals_from_reply,
    withdrawals_request,
)
from hashcheck._exceptions import (
    automatic_wait_seconds,
    rpc_errors_translated,
)
from hashcheck._flushing import ReadElsewhere
from hashcheck._models import Batch, BatchResult, CheckResult, Info
from hashcheck._packing import (
    as_hash_sequence,
    coerce_algorithm,
    iter_batches,
    pack_sequence,
    require_whole_hashes,
    resolve_algorithm,
)
from hashcheck._receipts import Receipt
from hashcheck._wire import (
    StreamLedger,
    check_request,
    info_from_reply,
    result_from_reply,
)
from hashcheck.v1 import hashcheck_pb2, hashcheck_pb2_grpc

__all__ = ["Client"]

logger = logging.getLogger(__name__)

ContextT = TypeVar("ContextT")
ReplyT = TypeVar("ReplyT")

# How long a stream that is closed waits for a read of its input to finish.
_LONGEST_STOP_WAIT_SECONDS = 2.0


class Client:
    """A connection to a HashCheck server.

        with Client("hashcheck.example:50051", api_key="...") as client:
            result = client.check(["d41d8cd98f00b204e9800998ecf8427e"])
            for hit in result.hits:
                print(hit.hex, hit.list_names)

    **Parameters**

    * **target** - `host:port` or any gRPC target such as `dns:///host:port`;
      defaults to `$HASHCHECK_SERVER`, then `127.0.0.1:50051`.
    * **api_key** - sent as `authorization: Bearer <key>` on every call;
      defaults to `$HASHCHECK_API_KEY`.
    * **tls** - TLS (and mTLS) settings; None for a plaintext channel.
    * **timeout_seconds** - deadline of each Check and GetInfo call.

    Calls that fail raise a `HashCheckError`. Transient UNAVAILABLE failures of
    Check and GetInfo are retried by gRPC itself. When the server limits the
    rate and names a delay (`retry-after-ms`) of at most 30 seconds, Check and
    GetInfo wait that long and retry once; otherwise `RateLimited` carries the
    delay. A client is safe to share between threads.
    """

    def __init__(
        self,
        target: str | None = None,
        *,
        api_key: str | None = None,
        tls: TLSOptions | None = None,
        timeout_seconds: float | None = DEFAULT_TIMEOUT_SECONDS,
    ) -> None:
        self._target = resolve_target(target)
        self._metadata = call_metadata(resolve_api_key(api_key))
        self._timeout_seconds = timeout_seconds
        self._channel = _open_channel(self._target, tls)
        self._stub = hashcheck_pb2_grpc.HashCheckStub(self._channel)

    @property
    def target(self) -> str:
        """The gRPC target this client connects to."""
        return self._target

    def check(
        self,
        hashes: Iterable[str | bytes],
        algorithm: Algorithm | str | None = None,
        *,
        want_receipts: bool = False,
        max_distance: int | None = None,
    ) -> CheckResult:
        """Check one batch of hashes, given as hex strings or raw bytes.

        Without `algorithm`, the first hash's width decides it. Raises
        InvalidHash, before any call, for a hash that is not of the algorithm.
        With `want_receipts`, every hit carries the server's signed receipt
        (`hit.receipt`; see `hashcheck.verify_receipt`).
        """
        items = as_hash_sequence(hashes)
        chosen = resolve_algorithm(algorithm, items)
        packed = pack_sequence(items, chosen)
        return self.check_packed(
            packed, chosen, want_receipts=want_receipts, max_distance=max_distance
        )

    def check_packed(
        self,
        hashes: bytes,
        algorithm: Algorithm | str,
        *,
        want_receipts: bool = False,
        max_distance: int | None = None,
    ) -> CheckResult:
        """Check one batch already packed as N * width bytes.

        PDQ hashes match known hashes within `max_distance` bits (None or 0:
        the server's default, usually 31; the server caps it); each hit says
        its `distance`.
        """
        chosen = coerce_algorithm(algorithm)
        require_whole_hashes(hashes, chosen)
        request = check_request(
            chosen, hashes, want_receipts=want_receipts, max_distance=max_distance
        )

        reply = self._call_unary(
            lambda: self._stub.Check(
                request, timeout=self._timeout_seconds, metadata=self._metadata
            )
        )
        return result_from_reply(reply, chosen, hashes, want_receipts)

    def check_stream(
        self,
        hashes: Iterable[str | bytes],
        algorithm: Algorithm | str | None = None,
        *,
        batch_size: int = DEFAULT_BATCH_SIZE,
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
        want_receipts: bool = False,
    ) -> Iterator[BatchResult[tuple[str | bytes, ...]]]:
        """Check any number of hashes over one stream, a batch at a time.

            for result in client.check_stream(read_hashes(), "sha1"):
                for hit in result.hits:
                    print(result.context[hit.position], hit.list_names)

        Yields one result per batch of `batch_size` hashes, in order; each
        result's `context` holds the batch's hashes as given. The input is
        read only as fast as results come back: at most `max_in_flight`
        batches are unanswered at any time. An iterator is read on a thread
        of its own, and a slow one is not held back until a batch is full:
        its hashes go out in a shorter batch once none has arrived for 0.2
        seconds or the oldest has waited 0.5 seconds.
        """
        batches = iter_batches(hashes, algorithm, batch_size)
        return self.check_batches(
            batches, max_in_flight=max_in_flight, want_receipts=want_receipts
        )

    def check_batches(
        self,
        batches: Iterable[Batch[ContextT]],
        *,
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
        want_receipts: bool = False,
    ) -> Iterator[BatchResult[ContextT]]:
        """Check packed batches over one stream; the fast path for bulk input.

        Batches may mix algorithms. Yields one result per batch, in order, with
        the batch's `context`. The iterable is read on gRPC's sending thread,
        and only while fewer than `max_in_flight` batches are unanswered. If it
        raises, the results of the batches already sent are yielded first and
        its exception is raised after them.

        A HashCheck server slows a stream that goes over the tenant's rate
        down to it rather than ending it. A failed stream is not retried,
        since part of it was answered: a `RateLimited` error (from a server
        that ends such streams) carries `retry_after_seconds`, when to start
        again.
        """
        require_max_in_flight(max_in_flight)
        ledger = StreamLedger[ContextT](want_receipts)
        flow = _RequestFlow(batches, ledger, max_in_flight)
        return self._run_stream(flow, ledger)

    def info(self) -> Info:
        """What the server says about itself: version, generation, algorithms."""
        reply = self._call_unary(
            lambda: self._stub.GetInfo(
                hashcheck_pb2.GetInfoRequest(),
                timeout=self._timeout_seconds,
                metadata=self._metadata,
            )
        )
        return info_from_reply(reply)

    def dispute(
        self,
        hash: str | bytes,
        reason: str,
        algorithm: Algorithm | str | None = None,
        receipt: Receipt | None = None,
    ) -> str:
        """Contest a hit, saying why; returns the dispute's id.

            dispute_id = client.dispute(hit.hash, "a stock photo of our CMS")

        Only a hash the server reported to this caller as a hit can be
        disputed, or one whose `receipt` (`hit.receipt`) is sent along;
        otherwise InvalidRequest, whether or not the hash is listed. Disputing
        a hash again while its dispute is open returns the same id.
        """
        request = dispute_request(hash, reason, algorithm, receipt)
        reply = self._call_unary(
            lambda: self._stub.Dispute(
                request, timeout=self._timeout_seconds, metadata=self._metadata
            )
        )
        return reply.dispute_id

    def withdrawals(self, since: float | datetime.datetime = 0.0) -> list[Withdrawal]:
        """Hashes reported to this caller as hits that have since been withdrawn.

            for withdrawal in client.withdrawals(since=last_run):
                print(withdrawal.hex, withdrawal.lists, withdrawal.withdrawn_at)

        Only withdrawals after `since` (a datetime, UTC if naive, or seconds
        since the epoch), oldest first: a hash is withdrawn once it gives
        this caller no hit any more, because it was taken off the lists it
        was reported on.
        """
        request = withdrawals_request(since)
        reply = self._call_unary(
            lambda: self._stub.ListWithdrawals(
                request, timeout=self._timeout_seconds, metadata=self._metadata
            )
        )
        return withdrawals_from_reply(reply)

    def close(self) -> None:
        """Close the channel; calls still running are cancelled."""
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Client({self._target!r})"

    def _call_unary(self, invoke: Callable[[], ReplyT]) -> ReplyT:
        """Make a unary call, retrying once after a rate limit with a short delay."""
        with rpc_errors_translated(self._target):
            try:
                return invoke()
            except grpc.RpcError as error:
                wait_seconds = automatic_wait_seconds(error)
                if wait_seconds is None:
                    raise

            logger.debug("Rate limited; retrying once in %.3f s", wait_seconds)
            time.sleep(wait_seconds)
            return invoke()

    def _run_stream(
        self, flow: _RequestFlow[ContextT], ledger: StreamLedger[ContextT]
    ) -> Iterator[BatchResult[ContextT]]:
        replies = self._stub.CheckStream(iter(flow), metadata=self._metadata)
        try:
            with rpc_errors_translated(self._target):
                for reply in replies:
                    flow.release_slot()
                    yield ledger.settle(reply)

            ledger.ensure_complete()
            flow.raise_input_failure()
        finally:
            # Unblocks the sending thread and ends the call when the caller
            # stops early, so neither outlives this generator.
            flow.stop()
            replies.cancel()  # type: ignore[no-untyped-call]  # unannotated in grpc-stubs


class _RequestFlow(Generic[ContextT]):
    """The request iterator of one stream, pulled by gRPC's sending thread.

    Each request takes a slot before its batch is read and the receiving side
    gives the slot back when the batch's reply arrives; so reading the input
    waits while `max_in_flight` batches are unanswered.

    An exception from the input is kept and the request stream ends cleanly,
    because gRPC would otherwise log it and cancel the call as UNKNOWN; the
    receiving side raises it once the batches already sent are answered.

    The input is read under a lock, so that `stop` can wait for a read in
    progress: gRPC's sending thread is a daemon, and one still inside the
    input (reading stdin, say) while the interpreter exits can abort it.
    An input that reads on a thread of its own (`ReadElsewhere`) is not
    waited for, so that Ctrl-C or an early stop does not wait out a
    terminal or an upload queue that has gone quiet.
    """

    def __init__(
        self,
        batches: Iterable[Batch[ContextT]],
        ledger: StreamLedger[ContextT],
        max_in_flight: int,
    ) -> None:
        self._batches = iter(batches)
        self._reads_elsewhere = isinstance(self._batches, ReadElsewhere)
        self._ledger = ledger
        self._slots = threading.Semaphore(max_in_flight)
        self._reading = threading.Lock()
        self._stopped = threading.Event()
        self._input_failure: Exception | None = None

    def __iter__(self) -> Iterator[hashcheck_pb2.CheckRequest]:
        while True:
            self._slots.acquire()
            with self._reading:
                if self._stopped.is_set():
                    return
                batch = self._next_batch()
            if batch is None:
                return
            yield self._ledger.record(batch)

    def release_slot(self) -> None:
        self._slots.release()

    def stop(self) -> None:
        """Let the sending thread end, after any read of the input it is in."""
        self._stopped.set()
        self._slots.release()
        if self._reads_elsewhere:
            return
        if self._reading.acquire(timeout=_LONGEST_STOP_WAIT_SECONDS):
            self._reading.release()

    def raise_input_failure(self) -> None:
        if self._input_failure is not None:
            raise self._input_failure

    def _next_batch(self) -> Batch[ContextT] | None:
        """The next batch, or None once the input is done or has failed."""
        try:
            return next(self._batches)
        except StopIteration:
            pass
        except Exception as error:
            self._input_failure = error
        self._ledger.finish_input()
        return None


def _open_channel(target: str, tls: TLSOptions | None) -> grpc.Channel:
    options = channel_options(tls)
    if tls is None:
        return grpc.insecure_channel(target, options=options)
    return grpc.secure_channel(target, tls.credentials(), options=options)
