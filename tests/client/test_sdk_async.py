"""AsyncClient: the same behaviour as Client, on grpc.aio."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING

import grpc
import pytest

from hashcheck import (
    Algorithm,
    AsyncClient,
    AuthenticationError,
    Batch,
    InvalidHash,
    ListMatch,
    ServerUnavailable,
)

if TYPE_CHECKING:
    from conftest import FakeHashCheck

MakeHash = Callable[[Algorithm, int], bytes]


def test_async_check_reports_hits(
    target: str, fake: FakeHashCheck, make_hash: MakeHash
) -> None:
    known = make_hash(Algorithm.SHA256, 1)
    fake.add(known, ("police", "A1"))

    async def check() -> None:
        async with AsyncClient(target) as client:
            result = await client.check([make_hash(Algorithm.SHA256, 0), known.hex()])
            info = await client.info()

        assert [hit.position for hit in result.hits] == [1]
        assert result.hits[0].lists == (ListMatch("police", "A1"),)
        assert info.generation == 7

    asyncio.run(check())


@pytest.mark.parametrize("source", ["iterable", "async-iterable"])
def test_async_check_stream_yields_batches_in_order(
    target: str, fake: FakeHashCheck, make_hash: MakeHash, source: str
) -> None:
    hashes = [make_hash(Algorithm.MD5, number) for number in range(1_000)]
    fake.add(hashes[0])
    fake.add(hashes[999])

    async def each_hash() -> AsyncIterator[bytes]:
        for hash_bytes in hashes:
            yield hash_bytes

    async def check() -> None:
        given = hashes if source == "iterable" else each_hash()
        async with AsyncClient(target) as client:
            results = [
                result
                async for result in client.check_stream(
                    given, batch_size=64, max_in_flight=3
                )
            ]

        assert [result.offset for result in results] == list(range(0, 1_000, 64))
        hits = [
            result.offset + hit.position for result in results for hit in result.hits
        ]
        assert hits == [0, 999]

    asyncio.run(check())


def test_async_check_batches_reads_input_only_as_replies_arrive(
    target: str, make_hash: MakeHash
) -> None:
    max_in_flight, batches = 2, 40
    pulled = 0

    async def source() -> AsyncIterator[Batch[int]]:
        nonlocal pulled
        for number in range(batches):
            pulled += 1
            yield Batch(Algorithm.MD5, make_hash(Algorithm.MD5, number), number)

    async def check() -> None:
        async with AsyncClient(target) as client:
            stream = client.check_batches(source(), max_in_flight=max_in_flight)
            consumed = 0
            async for result in stream:
                consumed += 1
                assert result.context == consumed - 1
                await asyncio.sleep(0.002)
                assert pulled <= consumed + max_in_flight + 1

        assert pulled == batches

    asyncio.run(check())


def test_async_check_stream_bad_hash_raises_after_earlier_batches(
    target: str, fake: FakeHashCheck
) -> None:
    async def check() -> None:
        async with AsyncClient(target) as client:
            checked = 0
            with pytest.raises(InvalidHash, match="Hash 4"):
                stream = client.check_stream(["00" * 16] * 4 + ["0"], batch_size=2)
                async for result in stream:
                    checked += result.checked
            assert checked == 4

    asyncio.run(check())


def test_async_errors_are_mapped(target: str, fake: FakeHashCheck) -> None:
    fake.api_keys = {"right"}

    async def check() -> None:
        async with AsyncClient(target, api_key="wrong") as client:
            with pytest.raises(AuthenticationError) as raised:
                await client.check(["00" * 16])
            assert isinstance(raised.value.__cause__, grpc.RpcError)

            with pytest.raises(AuthenticationError):
                async for _ in client.check_stream(["00" * 16]):
                    pass

    asyncio.run(check())


def test_async_stream_failure_is_mapped(target: str, fake: FakeHashCheck) -> None:
    fake.fail_next(grpc.StatusCode.UNAVAILABLE, after=1)

    async def check() -> None:
        # One batch in flight, so that no write races the server's status (see
        # the note in _async_client about grpc/grpc#36066).
        async with AsyncClient(target) as client:
            stream = client.check_stream(["00" * 16] * 5, batch_size=1, max_in_flight=1)
            with pytest.raises(ServerUnavailable):
                async for _ in stream:
                    pass

    asyncio.run(check())


def test_async_retry_after_is_waited_then_retried_once(
    target: str, fake: FakeHashCheck
) -> None:
    fake.fail_next(
        grpc.StatusCode.RESOURCE_EXHAUSTED, trailing=(("retry-after-ms", "100"),)
    )

    async def check() -> float:
        async with AsyncClient(target) as client:
            started = time.monotonic()
            await client.info()
            return time.monotonic() - started

    assert asyncio.run(check()) >= 0.1
    assert fake.calls == ["GetInfo", "GetInfo"]


def test_async_check_stream_slow_iterator_sends_hits_without_a_full_batch(
    target: str, fake: FakeHashCheck, make_hash: MakeHash
) -> None:
    known = make_hash(Algorithm.SHA1, 1)
    fake.add(known)

    async def check() -> None:
        release = asyncio.Event()

        async def uploads() -> AsyncIterator[bytes]:
            yield make_hash(Algorithm.SHA1, 0)
            yield known
            await release.wait()
            yield make_hash(Algorithm.SHA1, 2)

        async with AsyncClient(target) as client:
            results = client.check_stream(uploads(), batch_size=10_000)
            started = time.monotonic()
            first = await anext(results)
            waited = time.monotonic() - started
            release.set()
            rest = [result async for result in results]

        assert waited < 1.0
        assert (first.checked, [hit.position for hit in first.hits]) == (2, [1])
        assert [result.checked for result in rest] == [1]

    asyncio.run(check())
