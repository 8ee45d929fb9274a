"""`hashcheck-server`: the operator's command line.

    hashcheck-server serve  --data DIR --listen HOST:PORT [--metrics-port PORT]
    hashcheck-server import --data DIR --list NAME [--algorithm ALG] [--format F] FILE|-
    hashcheck-server lists  --data DIR
    hashcheck-server show   --data DIR NAME
    hashcheck-server retire --data DIR NAME
    hashcheck-server remove --data DIR [--list NAME] [--algorithm ALG] HASH...|-
    hashcheck-server merge  --data DIR
    hashcheck-server staged --data DIR NAME
    hashcheck-server promote --data DIR NAME [--into LIVE]
    hashcheck-server demo   --data DIR --samples DIR
    hashcheck-server serve  --follow ROOT ...  (a replica; see hashcheck_server.follow)
    hashcheck-server snapshot --data DIR OUT
    hashcheck-server pull --from URL --into ROOT
    hashcheck-server healthcheck --address HOST:PORT
    hashcheck-server tenant add|list|show|disable|enable|rotate-key|set-limits ...
    hashcheck-server audit export|prune ...  (see hashcheck_server.tenant_cli)
    hashcheck-server keys generate|show --data DIR ...  (see provenance_cli)
    hashcheck-server manifest --data DIR [--out FILE]
    hashcheck-server manifest verify FILE --public-key KEY
    hashcheck-server quarantine list|release ...  (see hashcheck_server.review_cli)
    hashcheck-server disputes list|resolve ...

The forms above are driven by scripts outside the project: keep them stable.
Every command exits 0 on success and 2 with one clear message on error.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from hashcheck._algorithms import Algorithm, infer_algorithm, parse_hex
from hashcheck._progress import ProgressBar
from hashcheck_server import (
    cli_ops,
    config,
    layout,
    provenance_cli,
    review_cli,
    tenant_cli,
)
from hashcheck_server.errors import HashCheckError
from hashcheck_server.formats import infer_format, read_hash_file
from hashcheck_server.importer import prepare_entries
from hashcheck_server.logs import configure_logging
from hashcheck_server.pdq_quality import hold_back_low_quality
from hashcheck_server.store import HashStore, ImportReport, ListSummary, Withdrawals

__all__ = ["main"]

logger = logging.getLogger("hashcheck_server")

EXIT_OK = 0
EXIT_ERROR = 2


def main(argv: Sequence[str] | None = None) -> int:
    parser = _build_parser()
    args = parser.parse_args(argv)
    try:
        logging_settings = config.resolve(args, settings=config.LOGGING_SETTINGS)
        configure_logging(logging_settings["log_format"], logging_settings["log_level"])
        result: int = args.run(args)
        return result
    except HashCheckError as error:
        print(f"hashcheck-server {args.command}: {error}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hashcheck-server",
        description="Serve and manage the hash lists of a HashCheck hotline.",
    )
    # Settings of every command: flag, else $HASHCHECK_LOG_*, else default.
    config.add_setting_flags(parser, config.LOGGING_SETTINGS, config_file=False)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_serve(commands)
    _add_import(commands)
    _add_lists(commands)
    _add_show(commands)
    _add_retire(commands)
    _add_remove(commands)
    _add_merge(commands)
    _add_promote(commands)
    _add_staged(commands)
    _add_demo(commands)
    cli_ops.add_commands(commands)
    tenant_cli.add_commands(commands)
    provenance_cli.add_commands(commands)
    review_cli.add_commands(commands)
    return parser


def _data_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, type=Path, help="the data directory")


def _add_serve(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    serve = commands.add_parser(
        "serve",
        help="answer checks over gRPC",
        description="Each setting comes from its flag, else its HASHCHECK_ "
        "variable, else the config file's [serve] table, else its default.",
    )
    config.add_setting_flags(serve, config.SERVE_FLAG_SETTINGS)
    serve.set_defaults(run=_run_serve)


def _run_serve(args: argparse.Namespace) -> int:
    from hashcheck_server.access import check_start
    from hashcheck_server.server import serve_until_signalled
    from hashcheck_server.workers import supervise_workers

    effective = config.resolve(args)
    server_config = config.server_config(effective)
    config.log_start(effective)
    workers = effective["workers"]
    if workers == 1:
        serve_until_signalled(server_config)
    else:
        # Fail here, once and clearly, rather than in every worker.
        if not server_config.follow:
            HashStore.open(server_config.data, readonly=True).close()
        check_start(
            server_config.data,
            server_config.follow,
            server_config.listen,
            server_config.access,
        )
        supervise_workers(
            server_config, workers, effective["log_format"], effective["log_level"]
        )
    return EXIT_OK


def _add_import(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    command = commands.add_parser("import", help="put the hashes of a file on a list")
    _data_argument(command)
    command.add_argument(
        "--list", required=True, dest="list_name", help="the list's name"
    )
    command.add_argument(
        "--algorithm", type=Algorithm.from_name, help="md5, sha1, sha256 or pdq"
    )
    command.add_argument(
        "--format",
        choices=("text", "csv", "icse", "vics", "ncmec"),
        help="default: by the file name (.csv, .json, .xml; else text)",
    )
    command.add_argument(
        "--category", default="", help="category of records that give none"
    )
    command.add_argument("--hash-column", help="CSV: the column holding the hash")
    command.add_argument(
        "--category-column", help="CSV: the column holding the category"
    )
    command.add_argument("--source", default="", help="where the list comes from")
    command.add_argument("--description", default="")
    command.add_argument(
        "--replace", action="store_true", help="the list becomes exactly this file"
    )
    command.add_argument(
        "--allow",
        action="store_true",
        help="an allow list of known-benign hashes, which never hit",
    )
    command.add_argument(
        "--staged",
        action="store_true",
        help="store the list without serving it until `promote`",
    )
    command.add_argument(
        "--rebuild",
        action="store_true",
        help="merge the delta into the base table now (default: only when large)",
    )
    command.add_argument(
        "--min-quality",
        type=int,
        metavar="N",
        help="PDQ: hold back hashes whose quality score is below N (the field "
        "uses 50); hashes without a score are kept",
    )
    command.add_argument("file", help="the file to import, or - for standard input")
    command.set_defaults(run=_run_import)


def _run_import(args: argparse.Namespace) -> int:
    source: str | Path = "-" if args.file == "-" else Path(args.file)
    file_format = args.format or infer_format(str(args.file))
    progress = ProgressBar(total=_size_of(source), unit="B", label="reading")
    try:
        parsed = read_hash_file(
            source,
            format=file_format,
            algorithm=args.algorithm,
            hash_column=args.hash_column,
            category_column=args.category_column,
            progress=progress.update,
        )
    except ValueError as error:
        # The readers say ValueError for options that do not fit the format.
        raise HashCheckError(str(error)) from error
    finally:
        progress.close()

    quality = None
    if args.min_quality is not None:
        parsed, quality = hold_back_low_quality(parsed, args.min_quality)
    prepared = prepare_entries(parsed, args.category)
    with HashStore.open(args.data, create=True) as store:
        report = store.import_entries(
            args.list_name,
            prepared.entries,
            source=args.source,
            description=args.description,
            replace=args.replace,
            rebuild=args.rebuild,
            kind=layout.ALLOW if args.allow else layout.BLOCK,
            staged=args.staged,
            withdrawals=prepared.withdrawals,
            record_ids=prepared.record_ids,
        )
    _print_import_report(report, parsed.records, prepared.dropped_empty_file)
    if parsed.skipped:
        print(f"  {_skipped_entries(parsed.skipped, parsed.skipped_reason)}")
    if quality is not None:
        print(f"  {quality.describe()}")
    return EXIT_OK


def _size_of(source: str | Path) -> int | None:
    """The file's size for the progress bar; None for standard input."""
    if source == "-":
        return None
    try:
        return Path(source).stat().st_size
    except OSError as error:
        raise HashCheckError(f"Cannot read {source}: {error.strerror}.") from None


def _print_import_report(
    report: ImportReport, records: int, dropped: dict[Algorithm, int]
) -> None:
    print(
        f"list {report.list_name}: generation {report.generation}, "
        f"{records} records read"
    )
    for algorithm, part in report.algorithms.items():
        empty = dropped.get(algorithm, 0)
        print(
            f"  {algorithm.value}: {part.added} added, {part.updated} updated, "
            f"{part.unchanged} unchanged, {part.removed} removed, "
            f"{part.held_back} held back as allow-listed, "
            f"{empty} empty-file hash(es) dropped; table holds {part.table_hashes}"
        )
        if part.regraded:
            print(
                f"  {algorithm.value}: {part.regraded} hash(es) graded differently "
                "by their own records; the last record's category was kept"
            )
    print(f"  took {report.seconds:.1f} s")


def _skipped_entries(count: int, reason: str) -> str:
    entries = "entry" if count == 1 else "entries"
    return f"skipped {count} {entries} {reason}"


def _add_lists(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    command = commands.add_parser("lists", help="show every list with its counts")
    _data_argument(command)
    command.add_argument("--json", action="store_true", help="one JSON object a line")
    command.set_defaults(run=_run_lists)


def _run_lists(args: argparse.Namespace) -> int:
    with HashStore.open(args.data, readonly=True) as store:
        generation = store.generation()
        summaries = store.lists()
    if args.json:
        for summary in summaries:
            print(json.dumps(_summary_json(summary)))
        return EXIT_OK

    print(f"generation {generation.number}: {generation.change}")
    for summary in summaries:
        print(f"{summary.record.name}\t{summary.total} hashes\t{summary.record.source}")
    return EXIT_OK


def _add_show(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    command = commands.add_parser("show", help="one list's metadata and counts")
    _data_argument(command)
    command.add_argument("name")
    command.set_defaults(run=_run_show)


def _run_show(args: argparse.Namespace) -> int:
    with HashStore.open(args.data, readonly=True) as store:
        summary = store.list_summary(args.name)
    print(json.dumps(_summary_json(summary), indent=2))
    return EXIT_OK


def _summary_json(summary: ListSummary) -> dict[str, object]:
    record = summary.record
    return {
        "name": record.name,
        "source": record.source,
        "description": record.description,
        "created_at": _iso(record.created_at),
        "updated_at": _iso(record.updated_at),
        "hashes": summary.total,
        "by_algorithm": {
            algorithm.value: by_category
            for algorithm, by_category in summary.counts.items()
        },
    }


def _iso(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


def _add_retire(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    command = commands.add_parser("retire", help="delete a whole list")
    _data_argument(command)
    command.add_argument("name")
    command.set_defaults(run=_run_retire)


def _run_retire(args: argparse.Namespace) -> int:
    with HashStore.open(args.data) as store:
        held, generation = store.retire_list(args.name)
    print(f"retired {args.name} ({held} hashes): generation {generation}")
    return EXIT_OK


def _add_remove(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    command = commands.add_parser(
        "remove", help="take hashes off one list or all lists"
    )
    _data_argument(command)
    command.add_argument("--list", dest="list_name", help="default: every list")
    command.add_argument(
        "--algorithm", type=Algorithm.from_name, help="default: by length"
    )
    command.add_argument(
        "hashes", nargs="+", metavar="HASH", help="hex hashes, or - for stdin"
    )
    command.set_defaults(run=_run_remove)


def _run_remove(args: argparse.Namespace) -> int:
    tokens = _hash_arguments(args.hashes)
    grouped = _group_hex(tokens, args.algorithm)
    with HashStore.open(args.data) as store:
        for algorithm, hashes in grouped.items():
            removed, generation = store.remove_hashes(
                algorithm, hashes, list_name=args.list_name
            )
            scope = args.list_name or "every list"
            print(
                f"{algorithm.value}: removed {removed} of {hashes.shape[0]} "
                f"from {scope}: "
                f"generation {generation}"
            )
    return EXIT_OK


def _hash_arguments(arguments: list[str]) -> list[tuple[str, str]]:
    """(where, hex) of every hash named: the arguments, and stdin for `-`.

    `-` is the fixed form's way for scripts to pipe hashes in, one a line. It
    is read once, wherever it stands, so `HASH... -` takes both.
    """
    named: list[tuple[str, str]] = []
    stdin_read = False
    for number, argument in enumerate(arguments, start=1):
        if argument != "-":
            named.append((f"hash {number}", argument))
        elif not stdin_read:
            named.extend(_stdin_hashes())
            stdin_read = True
    return named


def _stdin_hashes() -> list[tuple[str, str]]:
    """The hashes on standard input, blank lines skipped.

    Read as bytes and decoded here: a file saved with a byte-order mark, or
    with Windows line ends, is still one hash a line.
    """
    text = sys.stdin.buffer.read().decode("utf-8-sig", errors="replace")
    return [
        (f"standard input line {number}", token)
        for number, line in enumerate(text.splitlines(), start=1)
        for token in line.split()
    ]


def _group_hex(
    named: list[tuple[str, str]], algorithm: Algorithm | None
) -> dict[Algorithm, np.ndarray]:
    """Raw hashes by algorithm; a token that is not a hash is an error."""
    grouped: dict[Algorithm, list[bytes]] = {}
    for where, token in named:
        try:
            chosen = algorithm or infer_algorithm(token)
            grouped.setdefault(chosen, []).append(parse_hex(token, chosen))
        except ValueError as error:
            raise HashCheckError(f"{where}: {error}") from None
    return {
        chosen: np.frombuffer(b"".join(raw), dtype=np.uint8).reshape(-1, chosen.width)
        for chosen, raw in grouped.items()
    }


def _add_promote(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    command = commands.add_parser("promote", help="serve a staged list")
    _data_argument(command)
    command.add_argument("name", help="the staged list")
    command.add_argument("--into", help="fold it into this live list instead")
    command.set_defaults(run=_run_promote)


def _run_promote(args: argparse.Namespace) -> int:
    with HashStore.open(args.data) as store:
        generation = store.promote(args.name, into=args.into)
    target = f" into {args.into}" if args.into else ""
    print(f"promoted {args.name}{target}: generation {generation}")
    return EXIT_OK


def _add_staged(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    command = commands.add_parser(
        "staged",
        help="a staged list's overlap with the allow and live lists, the "
        "hashes held back as allow-listed, and what its tombstones will "
        "withdraw on promotion",
    )
    _data_argument(command)
    command.add_argument("name")
    command.set_defaults(run=_run_staged)


def _run_staged(args: argparse.Namespace) -> int:
    with HashStore.open(args.data, readonly=True) as store:
        overlap = store.staged_overlap(args.name)
        tombstones = store.staged_withdrawals(args.name)
    shown: dict[str, object] = {a.value: counts for a, counts in overlap.items()}
    # Only when there are some, so the usual output keeps its one key per
    # algorithm.
    if not tombstones.is_empty:
        shown["tombstones"] = _tombstones_json(tombstones)
    print(json.dumps(shown, indent=2))
    return EXIT_OK


def _tombstones_json(tombstones: Withdrawals) -> dict[str, object]:
    """What a staged list's tombstones will withdraw from the list it joins."""
    return {
        "record_ids": len(tombstones.record_ids),
        "hashes": {
            algorithm.value: int(hashes.shape[0])
            for algorithm, hashes in tombstones.hashes.items()
        },
    }


def _add_merge(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    command = commands.add_parser(
        "merge", help="fold the daily deltas into the base tables (e.g. nightly)"
    )
    _data_argument(command)
    command.set_defaults(run=_run_merge)


def _run_merge(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    with HashStore.open(args.data) as store:
        generation = store.merge()
    print(f"merged: generation {generation} in {time.perf_counter() - started:.1f} s")
    return EXIT_OK


def _add_demo(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    command = commands.add_parser(
        "demo", help="build a demo store of synthetic hashes and harmless sample files"
    )
    _data_argument(command)
    command.add_argument(
        "--samples", required=True, type=Path, help="where to write samples"
    )
    command.add_argument(
        "--hashes", type=int, default=1_400_000, help="synthetic list size"
    )
    command.set_defaults(run=_run_demo)


def _run_demo(args: argparse.Namespace) -> int:
    from hashcheck_server.demo import build_demo

    summary = build_demo(args.data, args.samples, synthetic_hashes=args.hashes)
    print(summary)
    return EXIT_OK
