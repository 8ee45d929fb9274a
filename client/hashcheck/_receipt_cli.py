"""The CLI's receipts: saving them (`check|scan --receipts FILE`) and checking them.

    hashcheck check|scan ... --receipts FILE
    hashcheck verify --public-key KEY [--public-key KEY2] RECEIPTS...
    hashcheck verify-manifest --public-key KEY FILE

`--receipts FILE` asks the server for a signed receipt for every hit and
appends one JSON line per hit to FILE:

    {"path": "photos/a.jpg", "hash": "5d41...", "algorithm": "md5",
     "key_id": "3f9a...", "body": "<base64>", "signature": "<base64>"}

`path` appears only for `scan`. Only `body`, `signature` and `key_id` are the
receipt; `hash` and `algorithm` are there to find a line, and `verify` checks
that they agree with the signed body.

`verify` checks every line of the files (`-` reads standard input) and prints
one JSON line for each: `"valid": true` with what the receipt attests, or
`"valid": false` with the reason. It exits 0 when every receipt is valid, 1
when any is not, 2 on error (a file or key that cannot be read, no receipts
at all). KEY is the public key's text (base64 or PEM) or a file holding it;
give several to check receipts of rotated keys, each against the key it names.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from hashcheck._exceptions import HashCheckError, ManifestInvalid, ReceiptInvalid
from hashcheck._keys import PublicKey, read_public_key_argument, require_cryptography
from hashcheck._manifests import verify_manifest
from hashcheck._models import CheckResult
from hashcheck._receipts import Receipt, VerifiedReceipt, verify_receipt

if TYPE_CHECKING:
    _Subcommands = argparse._SubParsersAction[argparse.ArgumentParser]

__all__ = ["ReceiptWriter", "add_receipts_option", "add_verify_commands"]

EXIT_VALID = 0
EXIT_INVALID = 1
EXIT_ERROR = 2


def add_receipts_option(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "--receipts",
        metavar="FILE",
        help="ask for a signed receipt for each hit and append it to FILE "
        "as a JSON line (check them later with `hashcheck verify`)",
    )


class ReceiptWriter:
    """Appends the receipts of results to a file, one JSON line a hit."""

    def __init__(self, stream: IO[str] | None) -> None:
        self._stream = stream

    @property
    def wanted(self) -> bool:
        """Whether checks should ask the server for receipts."""
        return self._stream is not None

    @classmethod
    @contextlib.contextmanager
    def opened(cls, path: str | None) -> Iterator[ReceiptWriter]:
        """A writer appending to `path`; one that writes nothing for None."""
        if path is None:
            yield cls(None)
            return
        with open(path, "a", encoding="utf-8") as stream:
            yield cls(stream)

    def write(self, result: CheckResult, paths: Sequence[str] | None = None) -> None:
        if self._stream is None or not result.hits:
            return
        for hit in result.hits:
            if hit.receipt is None:
                continue
            record: dict[str, Any] = {}
            if paths is not None:
                record["path"] = paths[hit.position]
            record["hash"] = hit.hex
            record["algorithm"] = hit.algorithm.value
            record.update(hit.receipt.to_json())
            self._stream.write(json.dumps(record) + "\n")
        # Receipts are evidence: on disk as soon as the hit is reported.
        self._stream.flush()


def add_verify_commands(commands: _Subcommands) -> None:
    """Register `verify` and `verify-manifest` with the `hashcheck` parser."""
    verify = commands.add_parser(
        "verify",
        help="check saved receipts against the hotline's public key",
        description="Check receipts saved by --receipts (JSON lines; - reads "
        "stdin). Exit 0 if all are valid, 1 if any is not, 2 on error.",
    )
    _add_public_key_option(verify)
    verify.add_argument("files", nargs="+", metavar="RECEIPTS", help="files, or -")
    verify.set_defaults(run=_run_verify)

    manifest = commands.add_parser(
        "verify-manifest",
        help="check a hotline's signed generation manifest",
        description="Exit 0 if the manifest's signature holds, 1 if not, 2 on error.",
    )
    _add_public_key_option(manifest)
    manifest.add_argument("file", metavar="FILE", help="the signed manifest")
    manifest.set_defaults(run=_run_verify_manifest)


def _add_public_key_option(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "--public-key",
        required=True,
        action="append",
        metavar="KEY",
        help="the hotline's public key (base64 or PEM), or a file holding it; "
        "repeat for several keys",
    )


def _run_verify(args: argparse.Namespace) -> int:
    keys = _public_keys(args.public_key)
    checked = invalid = 0
    for source, line in _receipt_lines(args.files):
        outcome = _check_line(line, keys)
        print(json.dumps({"source": source, **outcome}), flush=True)
        checked += 1
        invalid += not outcome["valid"]
    if not checked:
        raise HashCheckError("The files hold no receipts; nothing was checked.")
    return EXIT_INVALID if invalid else EXIT_VALID


def _run_verify_manifest(args: argparse.Namespace) -> int:
    keys = _public_keys(args.public_key)
    document = Path(args.file).read_bytes()
    outcome: dict[str, Any] = {}
    for key in keys.values():
        try:
            verified = verify_manifest(document, key)
        except ManifestInvalid as error:
            outcome = {"valid": False, "error": str(error)}
            continue
        outcome = {
            "valid": True,
            "generation": verified.generation,
            "digest": verified.digest,
            "key_id": verified.key_id,
        }
        break
    print(json.dumps(outcome))
    return EXIT_VALID if outcome["valid"] else EXIT_INVALID


def _public_keys(arguments: list[str]) -> dict[str, PublicKey]:
    """The keys given, by id; exit 2 (an error) when one cannot be read."""
    try:
        require_cryptography()
    except ImportError as error:
        raise HashCheckError(str(error)) from error
    keys = (read_public_key_argument(argument) for argument in arguments)
    return {key.key_id: key for key in keys}


def _receipt_lines(files: list[str]) -> Iterator[tuple[str, str]]:
    """(file:line, text) for every non-blank line of the files."""
    for name in files:
        with _opened(name) as stream:
            for number, line in enumerate(stream, start=1):
                if line.strip():
                    yield f"{name}:{number}", line


def _opened(name: str) -> contextlib.AbstractContextManager[IO[str]]:
    """The named file, or standard input for `-` (left open afterwards)."""
    if name == "-":
        return contextlib.nullcontext(sys.stdin)
    return open(name, encoding="utf-8")


def _check_line(line: str, keys: dict[str, PublicKey]) -> dict[str, Any]:
    """The outcome of one receipt line, as printed."""
    try:
        record = json.loads(line)
        if not isinstance(record, dict):
            raise ReceiptInvalid("The line is not a JSON object.")
        receipt = Receipt.from_json(record)
        key = keys.get(receipt.key_id) or next(iter(keys.values()))
        verified = verify_receipt(receipt, key)
        _require_labels_agree(record, verified)
    except ValueError:
        return {"valid": False, "error": "The line is not JSON."}
    except ReceiptInvalid as error:
        return {"valid": False, "error": str(error)}
    return {"valid": True, **_attested_record(verified)}


def _require_labels_agree(record: dict[str, Any], verified: VerifiedReceipt) -> None:
    """ReceiptInvalid if the line's unsigned hash or algorithm contradict the body."""
    if (
        record.get("hash", verified.hex) != verified.hex
        or record.get("algorithm", verified.algorithm.value) != verified.algorithm.value
    ):
        raise ReceiptInvalid(
            "The line's hash or algorithm differs from what its receipt attests; "
            "the line was edited."
        )


def _attested_record(verified: VerifiedReceipt) -> dict[str, Any]:
    issued = datetime.datetime.fromtimestamp(verified.issued_at, datetime.UTC)
    record: dict[str, Any] = {
        "hash": verified.hex,
        "algorithm": verified.algorithm.value,
        "lists": list(verified.list_names),
        "matches": [
            {"list": match.list, "category": match.category} for match in verified.lists
        ],
        "generation": verified.generation,
        "issued_at": issued.isoformat(timespec="seconds").replace("+00:00", "Z"),
        "tenant": verified.tenant,
        "key_id": verified.key_id,
    }
    if verified.distance:
        record["distance"] = verified.distance
    return record
