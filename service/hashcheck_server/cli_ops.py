"""The operations commands of `hashcheck-server`: snapshots, replicas, health.

    hashcheck-server snapshot --data DIR OUT
    hashcheck-server snapshot --data DIR --into ROOT [--keep N] [--every SECONDS]
    hashcheck-server pull --from URL --into ROOT [--keep N] [--interval S] [--once]
    hashcheck-server healthcheck [--address HOST:PORT] [--service NAME] [--timeout S]

`snapshot --data DIR OUT` is a fixed form that scripts outside the project
drive. `healthcheck` exits 0 when the server reports SERVING and 1 otherwise,
as container health checks expect; the others exit 0 on success and 2 with
one clear message on error, like every other command.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from hashcheck_server.errors import HashCheckError

__all__ = ["add_commands"]

logger = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_UNHEALTHY = 1


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    _add_snapshot(commands)
    _add_pull(commands)
    _add_healthcheck(commands)


def _add_snapshot(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
) -> None:
    command = commands.add_parser(
        "snapshot",
        help="a compact, consistent copy of the data directory, taken while serving",
    )
    command.add_argument("--data", required=True, type=Path, help="the data directory")
    command.add_argument(
        "out", nargs="?", type=Path, help="the new snapshot directory to write"
    )
    command.add_argument(
        "--into",
        type=Path,
        help="publish into this snapshot root and point ROOT/current at it",
    )
    command.add_argument(
        "--keep", type=int, default=3, help="snapshots kept in the root (--into)"
    )
    command.add_argument(
        "--every",
        type=float,
        help="with --into: publish again every SECONDS, when the generation changed",
    )
    command.set_defaults(run=_run_snapshot)


def _run_snapshot(args: argparse.Namespace) -> int:
    from hashcheck_server.snapshot import write_snapshot

    if (args.out is None) == (args.into is None):
        raise HashCheckError("Name either OUT or --into ROOT, not both or neither.")
    if args.out is not None:
        manifest = write_snapshot(args.data, args.out)
        size = sum(entry.bytes for entry in manifest.files.values())
        print(
            f"snapshot {args.out}: generation {manifest.generation}, "
            f"digest {manifest.digest or 'none'}, {size} bytes"
        )
        return EXIT_OK

    if args.every is None:
        _publish(args)
        return EXIT_OK
    while True:
        try:
            _publish(args)
        except HashCheckError as error:
            # A publisher beside a primary outlives a store not yet created
            # or a disk that is full for a while: say so, and try again.
            logger.warning("cannot publish a snapshot: %s", error)
        time.sleep(args.every)


def _publish(args: argparse.Namespace) -> None:
    from hashcheck_server.snapshot import publish_snapshot

    manifest = publish_snapshot(args.data, args.into, keep=args.keep)
    print(
        f"{args.into}/current -> {manifest.name}: generation "
        f"{manifest.generation}, digest {manifest.digest or 'none'}",
        flush=True,
    )


def _add_pull(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    command = commands.add_parser(
        "pull", help="keep a replica's snapshot root in step with a primary's"
    )
    command.add_argument(
        "--from",
        dest="source",
        required=True,
        help="the primary's snapshot root: an http(s):// or file:// URL, or a path",
    )
    command.add_argument(
        "--into", required=True, type=Path, help="this replica's snapshot root"
    )
    command.add_argument("--keep", type=int, default=2, help="snapshots kept")
    command.add_argument(
        "--interval", type=float, default=30.0, help="seconds between pulls"
    )
    command.add_argument(
        "--once", action="store_true", help="pull once and exit (2 on failure)"
    )
    command.set_defaults(run=_run_pull)


def _run_pull(args: argparse.Namespace) -> int:
    from hashcheck_server.replication import pull_forever, pull_once

    if args.once:
        manifest = pull_once(args.source, args.into, keep=args.keep)
        print(f"{args.into}/current -> {manifest.name}")
        return EXIT_OK
    pull_forever(args.source, args.into, interval_seconds=args.interval, keep=args.keep)
    return EXIT_OK


def _add_healthcheck(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
) -> None:
    command = commands.add_parser(
        "healthcheck",
        help="ask a server's gRPC health service; exit 0 when SERVING, else 1",
    )
    command.add_argument("--address", default="127.0.0.1:50051", help="HOST:PORT")
    command.add_argument(
        "--service", default="", help="the service to ask about; default: the server"
    )
    command.add_argument("--timeout", type=float, default=3.0, help="seconds")
    command.set_defaults(run=_run_healthcheck)


def _run_healthcheck(args: argparse.Namespace) -> int:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    request = health_pb2.HealthCheckRequest(service=args.service)
    with grpc.insecure_channel(args.address) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                request, timeout=args.timeout
            )
        except grpc.RpcError as error:
            print(
                f"{args.address}: {error.code().name} ({error.details()})",
                file=sys.stderr,
            )
            return EXIT_UNHEALTHY
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    print(f"{args.address}: {status}")
    return EXIT_OK if reply.status == health_pb2.HealthCheckResponse.SERVING else 1
