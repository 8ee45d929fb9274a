"""The asyncio HashCheck client, on grpc.aio."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
from collections.abc import (
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
)
from types import TracebackType
from typing import TypeVar

import grpc
import grpc.aio

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
    CallError,
    ServerError,
    automatic_wait_seconds,
    rpc_errors_translated,
)
from hashcheck._models import Batch, BatchResult, CheckResult, Info
from hashcheck._packing import (
    aiter_batches,
    as_hash_sequence,
    coerce_algorithm,
    iter_batches_inline,
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

__all__ = ["AsyncClient"]

logger = logging.getLogger(__name__)

ContextT = TypeVar("ContextT")
ReplyT = TypeVar("ReplyT")

_CheckStreamCall = grpc.aio.StreamStreamCall[
    hashcheck_pb2.CheckRequest, hashcheck_pb2.CheckReply
]


class AsyncClient:
    """A connection to a HashCheck server for asyncio code.

        async with AsyncClient("hashcheck.example:50051", api_key="...") as client:
            result = await client.check(["d41d8cd98f00b204e9800998ecf8427e"])

    Takes the same arguments and behaves as `Client`; create it inside the
    event loop that will use it.
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
        # HashCheckAsyncStub exists only for type checkers; at run time the one
        # stub class serves both kinds of channel.
        self._stub: hashcheck_pb2_grpc.HashCheckAsyncStub = (
            hashcheck_pb2_grpc.HashCheckStub(self._channel)
        )

    @property
    def target(self) -> str:
        """The gRPC target this client connects to."""
        return self._target

    async def check(
        self,
        hashes: Iterable[str | bytes],
        algorithm: Algorithm | str | None = None,
        *,
        want_receipts: bool = False,
        max_distance: int | None = None,
    ) -> CheckResult:
        """Check one batch of hashes, as `Client.check`."""
        items = as_hash_sequence(hashes)
        chosen = resolve_algorithm(algorithm, items)
        packed = pack_sequence(items, chosen)
        return await self.check_packed(
            packed, chosen, want_receipts=want_receipts, max_distance=max_distance
        )

    async def check_packed(
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

        reply = await self._call_unary(
            lambda: self._stub.Check(
                request, timeout=self._timeout_seconds, metadata=self._metadata
            )
        )
        return result_from_reply(reply, chosen, hashes, want_receipts)

    def check_stream(
        self,
        hashes: Iterable[str | bytes] | AsyncIterable[str | bytes],
        algorithm: Algorithm | str | None = None,
        *,
        batch_size: int = DEFAULT_BATCH_SIZE,
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
        want_receipts: bool = False,
    ) -> AsyncIterator[BatchResult[tuple[str | bytes, ...]]]:
        """Check any number of hashes over one stream, as `Client.check_stream`.

            async for result in client.check_stream(hashes, "md5"):
                ...

        `hashes` may be an async iterable; a slow one's hashes go out in a
        shorter batch once they have waited a moment. A plain iterable is
        read on the event loop, so it should not block.
        """
        batches: (
            Iterable[Batch[tuple[str | bytes, ...]]]
            | AsyncIterable[Batch[tuple[str | bytes, ...]]]
        )
        if isinstance(hashes, AsyncIterable):
            batches = aiter_batches(hashes, algorithm, batch_size)
        else:
            batches = iter_batches_inline(hashes, algorithm, batch_size)
        return self.check_batches(
            batches, max_in_flight=max_in_flight, want_receipts=want_receipts
        )

    def check_batches(
        self,
        batches: Iterable[Batch[ContextT]] | AsyncIterable[Batch[ContextT]],
        *,
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
        want_receipts: bool = False,
    ) -> AsyncIterator[BatchResult[ContextT]]:
        """Check packed batches over one stream, as `Client.check_batches`."""
        require_max_in_flight(max_in_flight)
        ledger = StreamLedger[ContextT](want_receipts)
        return self._run_stream(batches, max_in_flight, ledger)

    async def info(self) -> Info:
        """What the server says about itself: version, generation, algorithms."""
        reply = await self._call_unary(
            lambda: self._stub.GetInfo(
                hashcheck_pb2.GetInfoRequest(),
                timeout=self._timeout_seconds,
                metadata=self._metadata,
            )
        )
        return info_from_reply(reply)

    async def dispute(
        self,
        hash: str | bytes,
        reason: str,
        algorithm: Algorithm | str | None = None,
        receipt: Receipt | None = None,
    ) -> str:
        """Contest a hit, saying why; returns the dispute's id, as `Client.dispute`."""
        request = dispute_request(hash, reason, algorithm, receipt)
        reply = await self._call_unary(
            lambda: self._stub.Dispute(
                request, timeout=self._timeout_seconds, metadata=self._metadata
            )
        )
        return reply.dispute_id

    async def withdrawals(
        self, since: float | datetime.datetime = 0.0
    ) -> list[Withdrawal]:
        """Hits reported to this caller since withdrawn, as `Client.withdrawals`."""
        request = withdrawals_request(since)
        reply = await self._call_unary(
            lambda: self._stub.ListWithdrawals(
                request, timeout=self._timeout_seconds, metadata=self._metadata
            )
        )
        return withdrawals_from_reply(reply)

    async def close(self) -> None:
        """Close the channel; calls still running are cancelled."""
        await self._channel.close(None)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"AsyncClient({self._target!r})"

    async def _call_unary(self, invoke: Callable[[], Awaitable[ReplyT]]) -> ReplyT:
        """Make a unary call, retrying once after a rate limit with a short delay."""
        with rpc_errors_translated(self._target):
            try:
                return await invoke()
            except grpc.RpcError as error:
                wait_seconds = automatic_wait_seconds(error)
                if wait_seconds is None:
                    raise

            logger.debug("Rate limited; retrying once in %.3f s", wait_seconds)
            await asyncio.sleep(wait_seconds)
            return await invoke()

    async def _run_stream(
        self,
        batches: Iterable[Batch[ContextT]] | AsyncIterable[Batch[ContextT]],
        max_in_flight: int,
        ledger: StreamLedger[ContextT],
    ) -> AsyncIterator[BatchResult[ContextT]]:
        slots = asyncio.Semaphore(max_in_flight)
        call: _CheckStreamCall = self._stub.CheckStream(None, metadata=self._metadata)
        sender = asyncio.create_task(_send_batches(call, batches, ledger, slots))
        try:
            try:
                with rpc_errors_translated(self._target):
                    async for reply in call:
                        slots.release()
                        yield ledger.settle(reply)
            except ServerError as error:
                if _is_status_lost_to_write(error):
                    await self._raise_refusal(error)
                raise

            ledger.ensure_complete()
            # Raises what the input raised, now that its sent batches are answered.
            await sender
        finally:
            call.cancel()
            await _finish(sender)

    async def _raise_refusal(self, lost: ServerError) -> None:
        """Raise the error a plain call gets now, if any, for a stream's lost status.

        Mostly the lost status is a refusal at the stream's start (a key not
        accepted, the server going away); a unary call names it. If that call
        succeeds, the stream's own error stands.
        """
        try:
            await self.info()
        except CallError as refusal:
            raise refusal from lost.__cause__


async def _send_batches(
    call: _CheckStreamCall,
    batches: Iterable[Batch[ContextT]] | AsyncIterable[Batch[ContextT]],
    ledger: StreamLedger[ContextT],
    slots: asyncio.Semaphore,
) -> None:
    """Write each batch once a slot is free, then half-close the stream.

    The stream is half-closed even when the input raises, so that the batches
    already sent are still answered before the input's error surfaces.

    A write that fails because the server is ending the stream can replace the
    server's status with INTERNAL "Internal error from Core" before the reader
    sees it (grpc/grpc#36066); `AsyncClient._raise_refusal` recovers the
    common causes.
    """
    try:
        async for batch in _each_with_slot(batches, slots):
            await call.write(ledger.record(batch))
    finally:
        ledger.finish_input()
        if not call.done():
            await call.done_writing()


async def _each_with_slot(
    batches: Iterable[Batch[ContextT]] | AsyncIterable[Batch[ContextT]],
    slots: asyncio.Semaphore,
) -> AsyncIterator[Batch[ContextT]]:
    """The batches, each read only after a slot is free for it."""
    if not isinstance(batches, AsyncIterable):
        for batch in batches:
            await slots.acquire()
            yield batch
        return

    iterator = aiter(batches)
    while True:
        await slots.acquire()
        try:
            batch = await anext(iterator)
        except StopAsyncIteration:
            return
        yield batch


def _is_status_lost_to_write(error: ServerError) -> bool:
    """Whether grpc.aio replaced the server's status after a failed write.

    See https://github.com/grpc/grpc/issues/36066
    """
    cause = error.__cause__
    return (
        isinstance(cause, grpc.aio.AioRpcError)
        and error.code is grpc.StatusCode.INTERNAL
        and "execute_batch" in (cause.debug_error_string() or "")
    )


async def _finish(sender: asyncio.Task[None]) -> None:
    """Stop the sending task and collect its outcome, so none is left unseen."""
    sender.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await sender


def _open_channel(target: str, tls: TLSOptions | None) -> grpc.aio.Channel:
    options = channel_options(tls)
    if tls is None:
        return grpc.aio.insecure_channel(target, options=options)
    return grpc.aio.secure_channel(target, tls.credentials(), options=options)
