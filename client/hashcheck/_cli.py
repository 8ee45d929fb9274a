"""The `hashcheck` command: check hashes or scan files against a HashCheck server.

    hashcheck check --server HOST:PORT [--algorithm ALG] HASH...
    hashcheck check --server HOST:PORT [--algorithm ALG] -
    hashcheck scan --server HOST:PORT PATH...
    hashcheck info --server HOST:PORT
    hashcheck check|scan ... --receipts FILE
    hashcheck verify --public-key KEY RECEIPTS...
    hashcheck verify-manifest --public-key KEY FILE
    hashcheck dispute --server HOST:PORT [--algorithm ALG] HASH --reason TEXT
    hashcheck withdrawals --server HOST:PORT [--since ISO-TIME]

Outside scripts drive these forms, so they stay as they are. Each hit is one
JSON line on stdout (see `_output`); errors and progress go to stderr. The
exit status is grep's: 0 when nothing hit, 1 when something did, 2 on error.
Receipts and `verify` are described in `_receipt_cli`; `dispute` and
`withdrawals`, which exit 0 on success, in `_disputes_cli`.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, BinaryIO

from hashcheck._algorithms import Algorithm, infer_algorithm, parse_hex
from hashcheck._client import Client
from hashcheck._config import (
    API_KEY_ENV,
    DEFAULT_BATCH_SIZE,
    DEFAULT_TARGET,
    TARGET_ENV,
    TLSOptions,
)
from hashcheck._disputes_cli import add_recourse_commands
from hashcheck._exceptions import HashCheckError, InvalidHash
from hashcheck._hexlines import read_hex_batches
from hashcheck._output import HitWriter
from hashcheck._pdq import pdq_available
from hashcheck._progress import ProgressBar
from hashcheck._receipt_cli import (
    ReceiptWriter,
    add_receipts_option,
    add_verify_commands,
)
from hashcheck._scan import FileScan
from hashcheck._version import __version__

__all__ = ["EXIT_ERROR", "EXIT_HITS", "EXIT_NO_HITS", "build_parser", "main"]

EXIT_NO_HITS = 0
EXIT_HITS = 1
EXIT_ERROR = 2
_EXIT_INTERRUPTED = 130

if TYPE_CHECKING:
    # argparse's subparsers type is generic only in typeshed, not at run time.
    _Subcommands = argparse._SubParsersAction[argparse.ArgumentParser]

_EPILOG = f"""\
exit status: 0 no hits, 1 hits found, 2 error (for scan also: some files
could not be read and nothing hit). The server defaults to ${TARGET_ENV}, then
{DEFAULT_TARGET}; the API key to ${API_KEY_ENV}, better than --api-key as it
stays out of the process list.
"""


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        status: int = args.run(args)
    except BrokenPipeError:
        _silence_stdout()
        return EXIT_ERROR
    except KeyboardInterrupt:
        return _EXIT_INTERRUPTED
    except (HashCheckError, OSError, ValueError) as error:
        print(f"hashcheck: error: {error}", file=sys.stderr)
        return EXIT_ERROR
    return status


def build_parser() -> argparse.ArgumentParser:
    """The argument parser, one subcommand per form."""
    parser = argparse.ArgumentParser(
        prog="hashcheck",
        description="Check file hashes against a HashCheck server's lists.",
        epilog=_EPILOG,
    )
    parser.add_argument("--version", action="version", version=__version__)

    commands = parser.add_subparsers(dest="command", required=True)
    connection = _connection_options()
    _add_check_command(commands, connection)
    _add_scan_command(commands, connection)
    _add_info_command(commands, connection)
    add_verify_commands(commands)
    add_recourse_commands(commands, connection, _client_for, _algorithm_argument)
    return parser


def _add_check_command(
    commands: _Subcommands, connection: argparse.ArgumentParser
) -> None:
    check = commands.add_parser(
        "check",
        parents=[connection],
        help="check hex hashes given as arguments or on stdin",
        description="Check hex hashes; `-` reads one hash a line from stdin.",
        epilog=_EPILOG,
    )
    check.add_argument(
        "--algorithm",
        metavar="ALG",
        type=_algorithm_argument,
        help="md5, sha1, sha256 or pdq (default: from the length of the first "
        "hash; PDQ must be named)",
    )
    check.add_argument(
        "--batch-size",
        metavar="N",
        type=_positive_int,
        help=f"hashes per request (default for `-`: {_BULK_BATCH_SIZE:,}, or the "
        f"server's largest batch if smaller; {DEFAULT_BATCH_SIZE:,} for PDQ)",
    )
    add_receipts_option(check)
    check.add_argument("hashes", nargs="+", metavar="HASH", help="hex hashes, or -")
    check.set_defaults(run=_run_check)


def _add_scan_command(
    commands: _Subcommands, connection: argparse.ArgumentParser
) -> None:
    scan = commands.add_parser(
        "scan",
        parents=[connection],
        help="hash files and directories and check their hashes",
        description="Hash every file under the paths (MD5, SHA-1, SHA-256, "
        "and PDQ for images when the pdq extra is installed) and check the "
        "hashes. Empty files are skipped; PDQ hits say their distance.",
        epilog=_EPILOG,
    )
    scan.add_argument(
        "--pdq",
        action=argparse.BooleanOptionalAction,
        help="send PDQ hashes of images (default: when `hashcheck[pdq]` is "
        "installed and the server answers PDQ)",
    )
    scan.add_argument(
        "--workers",
        metavar="N",
        type=_positive_int,
        help="files hashed at once (default: CPUs + 4)",
    )
    _add_batch_size(scan)
    add_receipts_option(scan)
    scan.add_argument("paths", nargs="+", metavar="PATH", help="files or directories")
    scan.set_defaults(run=_run_scan)


def _add_info_command(
    commands: _Subcommands, connection: argparse.ArgumentParser
) -> None:
    info = commands.add_parser(
        "info",
        parents=[connection],
        help="show the server's version, generation and algorithms as JSON",
    )
    info.set_defaults(run=_run_info)


def _connection_options() -> argparse.ArgumentParser:
    options = argparse.ArgumentParser(add_help=False)
    group = options.add_argument_group("connection")
    group.add_argument(
        "--server",
        metavar="HOST:PORT",
        help=f"default: ${TARGET_ENV} or {DEFAULT_TARGET}",
    )
    group.add_argument("--api-key", metavar="KEY", help=f"default: ${API_KEY_ENV}")
    group.add_argument("--tls", action="store_true", help="connect with TLS")
    group.add_argument("--ca-cert", metavar="FILE", help="PEM roots to trust (TLS)")
    group.add_argument("--client-cert", metavar="FILE", help="PEM client certificate")
    group.add_argument("--client-key", metavar="FILE", help="PEM client private key")
    return options


#: Hashes a request for `check -` without --batch-size. A server answers large
#: batches at a fraction of the cost per hash of small ones (some 2.5 times
#: more hashes a second at 100,000 than at 10,000; benchmarks/RESULTS.md),
#: and slow input is sent before a batch is full anyway (hashcheck._flushing).
_BULK_BATCH_SIZE = 100_000


def _stdin_batch_size(
    client: Client, requested: int | None, algorithm: Algorithm | None
) -> int:
    """The batch size for `check -`: as asked, else bulk within the server's limit."""
    if requested is not None:
        return requested
    if algorithm is Algorithm.PDQ:
        # A PDQ batch has a smaller limit of its own, which GetInfo does not say.
        return DEFAULT_BATCH_SIZE
    largest = client.info().max_batch_hashes
    return min(_BULK_BATCH_SIZE, largest) if largest else _BULK_BATCH_SIZE


def _add_batch_size(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "--batch-size",
        metavar="N",
        type=_positive_int,
        default=DEFAULT_BATCH_SIZE,
        help=f"hashes per request (default: {DEFAULT_BATCH_SIZE})",
    )


def _run_check(args: argparse.Namespace) -> int:
    writer = HitWriter(sys.stdout)
    with _client_for(args) as client, ReceiptWriter.opened(args.receipts) as receipts:
        if args.hashes == ["-"]:
            batch_size = _stdin_batch_size(client, args.batch_size, args.algorithm)
            _check_stdin(client, args.algorithm, batch_size, writer, receipts)
        else:
            _check_arguments(client, args.hashes, args.algorithm, writer, receipts)
    return EXIT_HITS if writer.hits else EXIT_NO_HITS


def _check_stdin(
    client: Client,
    algorithm: Algorithm | None,
    batch_size: int,
    writer: HitWriter,
    receipts: ReceiptWriter,
) -> None:
    """Stream stdin through the packed path: no per-hash objects but hits."""
    progress = ProgressBar(unit="hashes", label="checked")
    batches = read_hex_batches(_raw_stdin(), algorithm, batch_size)
    checked = 0
    try:
        for result in client.check_batches(batches, want_receipts=receipts.wanted):
            writer.write(result)
            receipts.write(result)
            checked += result.checked
            progress.update(checked, suffix=f"{writer.hits:,} hits")
    finally:
        progress.close()


def _check_arguments(
    client: Client,
    hashes: list[str],
    algorithm: Algorithm | None,
    writer: HitWriter,
    receipts: ReceiptWriter,
) -> None:
    """Check hashes given as arguments, one call per algorithm among them."""
    if "-" in hashes:
        raise InvalidHash("Give hashes as arguments or `-` for stdin, not both.")

    groups: dict[Algorithm, list[bytes]] = {}
    for number, text in enumerate(hashes, start=1):
        try:
            chosen = algorithm or infer_algorithm(text)
            groups.setdefault(chosen, []).append(parse_hex(text, chosen))
        except ValueError as error:
            raise InvalidHash(f"Hash argument {number}: {error}") from None

    for chosen, digests in groups.items():
        result = client.check_packed(
            b"".join(digests), chosen, want_receipts=receipts.wanted
        )
        writer.write(result)
        receipts.write(result)


def _run_scan(args: argparse.Namespace) -> int:
    writer = HitWriter(sys.stdout)
    progress = ProgressBar(unit="B", label="hashed")
    client = _client_for(args)
    required = _pdq_requirement(args.pdq)
    scan = FileScan(
        args.paths,
        batch_size=args.batch_size,
        workers=args.workers,
        report=lambda message: progress.note(f"hashcheck: {message}"),
        on_progress=lambda: _show_scan_progress(progress, scan, writer),
        pdq=None if required is None else lambda: _serves_pdq(client, required),
    )
    try:
        with (
            client,
            ReceiptWriter.opened(args.receipts) as receipts,
        ):
            batches = scan.batches()
            for result in client.check_batches(batches, want_receipts=receipts.wanted):
                writer.write(result, paths=result.context)
                receipts.write(result, paths=result.context)
                _show_scan_progress(progress, scan, writer)
    finally:
        scan.cancel()
        progress.close()

    if writer.hits:
        return EXIT_HITS
    return EXIT_ERROR if scan.problems else EXIT_NO_HITS


def _pdq_requirement(wanted: bool | None) -> bool | None:
    """None: no PDQ; False: PDQ if the server answers it; True: PDQ or fail."""
    if wanted is False:
        return None
    if pdq_available():
        return bool(wanted)
    if wanted:
        raise HashCheckError(
            "--pdq needs the optional extra: pip install 'hashcheck[pdq]'."
        )
    return None


def _serves_pdq(client: Client, required: bool) -> bool:
    """Whether the server answers PDQ; asked before the first PDQ batch."""
    served = any(entry.algorithm is Algorithm.PDQ for entry in client.info().algorithms)
    if required and not served:
        raise HashCheckError(
            f"The server at {client.target} does not answer PDQ hashes; scan "
            "without --pdq."
        )
    return served


def _show_scan_progress(
    progress: ProgressBar, scan: FileScan, writer: HitWriter
) -> None:
    suffix = f"{scan.files_hashed:,} files  {writer.hits:,} hits"
    progress.update(scan.bytes_hashed, suffix=suffix)


def _run_info(args: argparse.Namespace) -> int:
    with _client_for(args) as client:
        info = client.info()
    algorithms = []
    for entry in info.algorithms:
        described: dict[str, object] = {
            "algorithm": entry.algorithm.value,
            "width": entry.width,
        }
        if entry.hash_count is not None:
            described["hash_count"] = entry.hash_count
        algorithms.append(described)

    print(
        json.dumps(
            {
                "server": client.target,
                "service_version": info.service_version,
                "generation": info.generation,
                "generation_committed_at": info.generation_committed_at,
                "generation_digest": info.generation_digest,
                "tenant": info.tenant,
                "max_batch_hashes": info.max_batch_hashes,
                "default_max_distance": info.default_max_distance,
                "max_distance_cap": info.max_distance_cap,
                "algorithms": algorithms,
            }
        )
    )
    return EXIT_NO_HITS


def _client_for(args: argparse.Namespace) -> Client:
    return Client(args.server, api_key=args.api_key, tls=_tls_for(args))


def _tls_for(args: argparse.Namespace) -> TLSOptions | None:
    files = (args.ca_cert, args.client_cert, args.client_key)
    if not args.tls and all(path is None for path in files):
        return None
    return TLSOptions.from_files(
        ca_file=args.ca_cert, cert_file=args.client_cert, key_file=args.client_key
    )


def _algorithm_argument(name: str) -> Algorithm:
    try:
        return Algorithm.from_name(name)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number above 0.")
    return value


def _raw_stdin() -> BinaryIO:
    """Standard input without Python's buffer, where it is a real file.

    gRPC reads it on a daemon thread. A buffered reader holds a lock while it
    reads, and the interpreter aborts if it exits (after an error, say) while
    that lock is held; a raw read holds none.
    """
    try:
        return io.FileIO(sys.stdin.fileno(), "rb", closefd=False)
    except (AttributeError, OSError, ValueError):
        return sys.stdin.buffer


def _silence_stdout() -> None:
    """Point stdout at /dev/null once its reader has gone (`hashcheck ... | head`).

    Otherwise Python's final flush at exit fails a second time, noisily.
    """
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


if __name__ == "__main__":
    sys.exit(main())
