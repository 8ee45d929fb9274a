"""Client.check_stream and check_batches: order, backpressure, and failures."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import grpc
import pytest

from hashcheck import (
    Algorithm,
    Batch,
    Client,
    InvalidHash,
    ProtocolError,
    ServerUnavailable,
)

if TYPE_CHECKING:
    from conftest import FakeHashCheck

MakeHash = Callable[[Algorithm, int], bytes]


def test_check_stream_yields_batches_in_order(
    client: Client, fake: FakeHashCheck, make_hash: MakeHash
) -> None:
    hashes = [make_hash(Algorithm.SHA1, number).hex() for number in range(2_500)]
    known = {7, 1_000, 1_001, 2_499}
    for number in known:
        fake.add(bytes.fromhex(hashes[number]))

    results = list(client.check_stream(hashes, batch_size=100, max_in_flight=3))

    assert [result.sequence for result in results] == list(range(1, 26))
    assert [result.offset for result in results] == list(range(0, 2_500, 100))
    assert sum(result.checked for result in results) == 2_500
    found = {
        result.offset + hit.position: result.context[hit.position]
        for result in results
        for hit in result.hits
    }
    assert found == {number: hashes[number] for number in known}


def test_check_stream_reads_input_only_as_replies_arrive(
    client: Client, make_hash: MakeHash
) -> None:
    batch_size, max_in_flight, batches = 10, 2, 60
    pulled = 0

    def source() -> Iterator[bytes]:
        nonlocal pulled
        for number in range(batch_size * batches):
            pulled += 1
            yield make_hash(Algorithm.MD5, number)

    results = client.check_stream(
        source(), "md5", batch_size=batch_size, max_in_flight=max_in_flight
    )
    for consumed, _ in enumerate(results, start=1):
        if consumed % 20 == 1:
            # A slow consumer: the sending side must stop at the limit.
            time.sleep(0.05)
        # The batches answered, those allowed in flight, and the one being read.
        assert pulled <= (consumed + max_in_flight + 1) * batch_size

    assert pulled == batch_size * batches


def test_check_batches_mixes_algorithms_with_context(
    client: Client, fake: FakeHashCheck, make_hash: MakeHash
) -> None:
    md5 = [make_hash(Algorithm.MD5, number) for number in range(3)]
    sha256 = [make_hash(Algorithm.SHA256, number) for number in range(3)]
    fake.add(md5[2])
    fake.add(sha256[0])
    batches = [
        Batch(Algorithm.MD5, b"".join(md5), ("a", "b", "c")),
        Batch(Algorithm.SHA256, b"".join(sha256), ("d", "e", "f")),
    ]

    results = list(client.check_batches(batches))

    named = [
        (result.context[hit.position], hit.algorithm)
        for result in results
        for hit in result.hits
    ]
    assert named == [("c", Algorithm.MD5), ("d", Algorithm.SHA256)]


def test_check_stream_empty_input_yields_nothing(client: Client) -> None:
    assert list(client.check_stream([], "md5")) == []


def test_check_stream_bad_hash_raises_after_earlier_batches(
    client: Client, fake: FakeHashCheck, make_hash: MakeHash
) -> None:
    good = [make_hash(Algorithm.MD5, number).hex() for number in range(30)]
    fake.add(bytes.fromhex(good[3]))
    seen = []

    with pytest.raises(InvalidHash, match="Hash 31"):
        for result in client.check_stream([*good, good[0], "xyz"], batch_size=10):
            seen.extend(result.hits)

    assert [hit.hex for hit in seen] == [good[3]]


def _request_threads() -> list[threading.Thread]:
    """gRPC's threads that pull request iterators, one per running stream."""
    return [
        thread
        for thread in threading.enumerate()
        if "consume_request_iterator" in thread.name
    ]


def test_check_stream_stopped_early_releases_the_call(
    client: Client, make_hash: MakeHash
) -> None:
    endless = (make_hash(Algorithm.MD5, number) for number in range(10**9))

    results = client.check_stream(endless, batch_size=5, max_in_flight=2)
    first = next(results)
    results.close()

    assert first.checked == 5
    assert client.check(["00" * 16]).checked == 1
    deadline = time.monotonic() + 5
    while _request_threads() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert _request_threads() == []


def test_check_stream_stopped_early_does_not_wait_for_a_quiet_input(
    client: Client, make_hash: MakeHash
) -> None:
    release = threading.Event()

    def quiet_queue() -> Iterator[bytes]:
        yield make_hash(Algorithm.MD5, 0)
        release.wait(30)  # an upload queue with nothing more for now

    results = client.check_stream(quiet_queue(), batch_size=10_000)
    first = next(results)
    started = time.monotonic()
    results.close()
    closed_after = time.monotonic() - started
    release.set()

    assert first.checked == 1
    # It used to wait out the input for 2 s before giving up on it.
    assert closed_after < 1.5


def test_check_stream_server_failure_raises_mapped_error(
    client: Client, fake: FakeHashCheck, make_hash: MakeHash
) -> None:
    fake.fail_next(grpc.StatusCode.UNAVAILABLE, after=2)
    hashes = [make_hash(Algorithm.MD5, number) for number in range(100)]
    answered = []

    with pytest.raises(ServerUnavailable) as raised:
        for result in client.check_stream(hashes, batch_size=10):
            answered.append(result.sequence)

    assert answered == [1, 2]
    assert isinstance(raised.value.__cause__, grpc.RpcError)


def test_check_stream_misnumbered_reply_raises_protocol_error(
    client: Client, fake: FakeHashCheck
) -> None:
    fake.misnumber_replies = True

    with pytest.raises(ProtocolError, match="request order"):
        list(client.check_stream(["00" * 16] * 3, batch_size=1))


def test_check_stream_early_end_raises_protocol_error(
    client: Client, fake: FakeHashCheck
) -> None:
    fake.end_stream_after = 1

    with pytest.raises(ProtocolError, match="before it had answered"):
        list(client.check_stream(["00" * 16] * 3, batch_size=1, max_in_flight=1))


@pytest.mark.parametrize(
    ("batch_size", "max_in_flight"), [(0, 1), (1, 0)], ids=["batch", "in-flight"]
)
def test_check_stream_rejects_nonpositive_limits(
    client: Client, batch_size: int, max_in_flight: int
) -> None:
    with pytest.raises(ValueError, match="at least 1"):
        client.check_stream(
            ["00" * 16], batch_size=batch_size, max_in_flight=max_in_flight
        )


def test_check_stream_slow_iterator_sends_hits_without_a_full_batch(
    client: Client, fake: FakeHashCheck, make_hash: MakeHash
) -> None:
    known = make_hash(Algorithm.MD5, 1)
    fake.add(known)
    release = threading.Event()

    def uploads() -> Iterator[bytes]:
        yield make_hash(Algorithm.MD5, 0)
        yield known
        # An upload queue that goes quiet: the two hashes must not wait.
        release.wait(10)
        yield make_hash(Algorithm.MD5, 2)

    results = client.check_stream(uploads(), batch_size=10_000)
    started = time.monotonic()
    first = next(results)
    waited = time.monotonic() - started
    release.set()
    rest = list(results)

    assert waited < 1.0
    assert (first.checked, [hit.position for hit in first.hits]) == (2, [1])
    assert [result.checked for result in rest] == [1]


def test_check_stream_iterator_error_raised_after_its_hashes(
    client: Client, fake: FakeHashCheck, make_hash: MakeHash
) -> None:
    known = make_hash(Algorithm.MD5, 3)
    fake.add(known)

    def failing() -> Iterator[bytes]:
        yield make_hash(Algorithm.MD5, 0)
        yield known
        raise OSError("the upload queue went away")

    seen = []
    with pytest.raises(OSError, match="went away"):
        for result in client.check_stream(failing(), batch_size=100):
            seen.extend(hit.hash for hit in result.hits)

    assert seen == [known]
