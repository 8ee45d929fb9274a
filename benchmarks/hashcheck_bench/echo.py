"""The transport ceiling: a HashCheck servicer that answers without looking.

`python -m hashcheck_bench.echo --listen 127.0.0.1:PORT` serves the HashCheck
service with grpcio's default threading model and SO_REUSEPORT, as the real
server does, but each request is answered by an empty reply carrying only its
sequence number. Driven by the same clients as the real server, it shows how
many hashes a second gRPC itself can carry on this machine.
"""

from __future__ import annotations

import argparse
import signal
import threading
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor

import grpc

from hashcheck.v1 import hashcheck_pb2, hashcheck_pb2_grpc

#: Large enough for a batch of a million MD5 hashes.
_MAX_MESSAGE_BYTES = 64 * 1024 * 1024


# The generated servicer base is untyped (Any) to mypy.
class EchoServicer(hashcheck_pb2_grpc.HashCheckServicer):  # type: ignore[misc]
    def Check(
        self, request: hashcheck_pb2.CheckRequest, context: grpc.ServicerContext
    ) -> hashcheck_pb2.CheckReply:
        return hashcheck_pb2.CheckReply(sequence=request.sequence)

    def CheckStream(
        self,
        request_iterator: Iterable[hashcheck_pb2.CheckRequest],
        context: grpc.ServicerContext,
    ) -> Iterator[hashcheck_pb2.CheckReply]:
        for request in request_iterator:
            yield hashcheck_pb2.CheckReply(sequence=request.sequence)


def serve(listen: str) -> None:
    server = grpc.server(
        ThreadPoolExecutor(max_workers=16),
        options=[
            ("grpc.so_reuseport", 1),
            ("grpc.max_receive_message_length", _MAX_MESSAGE_BYTES),
        ],
    )
    hashcheck_pb2_grpc.add_HashCheckServicer_to_server(EchoServicer(), server)
    if server.add_insecure_port(listen) == 0:
        raise SystemExit(f"echo: cannot listen on {listen}")
    server.start()

    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    signal.signal(signal.SIGINT, lambda *_: stopped.set())
    stopped.wait()
    server.stop(grace=1.0).wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--listen", required=True, help="HOST:PORT")
    serve(parser.parse_args().listen)


if __name__ == "__main__":
    main()
