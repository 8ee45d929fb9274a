"""`hashcheck-server keys` and `hashcheck-server manifest`: what the hotline signs.

    hashcheck-server keys generate --data DIR [--out FILE] [--force]
    hashcheck-server keys show --data DIR [--key FILE] [--pem]
    hashcheck-server manifest --data DIR [--key FILE] [--out FILE]
                              [--generation N]
    hashcheck-server manifest verify FILE --public-key KEY [--data DIR]

`keys generate` writes the signing key (by default DATA/signing-key.pem, mode
0600; see hashcheck_server.signing) and, like `keys show`, prints two lines:

    public key: <base64 of the raw 32-byte Ed25519 key>
    key id: <hex SHA-256 of the raw key>

`keys show --pem` prints the public key as a PEM block instead. `manifest`
writes the signed manifest of the generation now committed (see
hashcheck_server.manifest), or with --generation that of an earlier one as
it was kept at its commit, to FILE or standard output. `manifest verify`
exits 0 when the manifest's signature holds (and, with --data, it describes
that data directory exactly), 1 when it does not, 2 on error; a manifest of
an earlier generation differs, and verify says whether it is the one the
data directory kept for that generation. KEY is the public key's text or a
file holding it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, TypeAlias

from hashcheck._exceptions import ManifestInvalid
from hashcheck._keys import read_public_key_argument
from hashcheck._manifests import verify_manifest
from hashcheck_server import layout
from hashcheck_server.errors import HashCheckError, ManifestNotKept
from hashcheck_server.manifest import build_manifest, kept_manifest, sign_manifest
from hashcheck_server.signing import (
    SigningKey,
    default_key_path,
    generate_key_file,
    load_key_file,
)

__all__ = ["add_commands"]

EXIT_OK = 0
EXIT_INVALID = 1

Commands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


def add_commands(commands: Commands) -> None:
    """Register `keys` and `manifest` with the `hashcheck-server` parser."""
    _add_keys(commands)
    _add_manifest(commands)


def _add_keys(commands: Commands) -> None:
    keys = commands.add_parser("keys", help="the hotline's receipt signing key")
    actions = keys.add_subparsers(dest="keys_command", required=True, metavar="ACTION")

    generate = actions.add_parser(
        "generate",
        help="make the signing key and print its public key",
        description="Make an Ed25519 signing key, written as PKCS#8 PEM with "
        "mode 0600 (default DATA/signing-key.pem, outside the LMDB store, so "
        "snapshots never carry it).",
    )
    generate.add_argument("--data", type=Path, help="the data directory")
    generate.add_argument("--out", type=Path, help="default: DATA/signing-key.pem")
    generate.add_argument(
        "--force", action="store_true", help="replace an existing key"
    )
    generate.set_defaults(run=_run_generate)

    show = actions.add_parser("show", help="print the public key and its id")
    show.add_argument("--data", type=Path, help="the data directory")
    show.add_argument("--key", type=Path, help="default: DATA/signing-key.pem")
    show.add_argument("--pem", action="store_true", help="print a PEM block")
    show.set_defaults(run=_run_show)


def _add_manifest(commands: Commands) -> None:
    manifest = commands.add_parser(
        "manifest",
        help="write the signed manifest of the current generation",
        description="Write the signed manifest of the generation now committed: "
        "its lists and counts, table digests and content digest. It holds "
        "counts: give it to auditors and partners, not to tenants.",
    )
    manifest.add_argument("--data", type=Path, help="the data directory")
    manifest.add_argument("--key", type=Path, help="default: DATA/signing-key.pem")
    manifest.add_argument("--out", type=Path, help="default: standard output")
    manifest.add_argument(
        "--generation",
        type=int,
        metavar="N",
        help="an earlier generation, as its manifest was kept at its commit "
        "(for a receipt that names it); default: the current one",
    )
    manifest.set_defaults(run=_run_manifest)

    actions = manifest.add_subparsers(
        dest="manifest_command", required=False, metavar="ACTION"
    )
    verify = actions.add_parser(
        "verify",
        help="check a signed manifest",
        description="Exit 0 if the manifest's signature holds (and it "
        "describes --data exactly), 1 if not, 2 on error.",
    )
    verify.add_argument("file", type=Path, help="the signed manifest")
    verify.add_argument(
        "--public-key",
        required=True,
        metavar="KEY",
        help="the hotline's public key (base64 or PEM), or a file holding it",
    )
    verify.add_argument(
        "--data",
        dest="compare_data",
        type=Path,
        help="also check that the manifest describes this data directory",
    )
    verify.set_defaults(run=_run_verify)


def _run_generate(args: argparse.Namespace) -> int:
    key = generate_key_file(_key_path(args.out, args.data, "--out"), force=args.force)
    _print_public_key(key, pem=False)
    return EXIT_OK


def _run_show(args: argparse.Namespace) -> int:
    key = load_key_file(_key_path(args.key, args.data, "--key"))
    _print_public_key(key, pem=args.pem)
    return EXIT_OK


def _run_manifest(args: argparse.Namespace) -> int:
    if args.data is None:
        raise HashCheckError("manifest needs --data DIR, the data directory.")
    key = load_key_file(_key_path(args.key, args.data, "--key"))
    environment = layout.Environment(args.data, readonly=True)
    try:
        if args.generation is None:
            manifest = build_manifest(environment)
        else:
            manifest = kept_manifest(environment, args.generation)
    finally:
        environment.close()

    text = json.dumps(sign_manifest(manifest, key), indent=2, sort_keys=True) + "\n"
    if args.out is None:
        sys.stdout.write(text)
    else:
        _write_text(args.out, text)
    number = manifest["generation"]["number"]
    print(
        f"manifest of generation {number} signed with key {key.key_id}",
        file=sys.stderr,
    )
    return EXIT_OK


def _run_verify(args: argparse.Namespace) -> int:
    try:
        public_key = read_public_key_argument(args.public_key)
        document = args.file.read_bytes()
    except (OSError, ValueError) as error:
        raise HashCheckError(str(error)) from error

    try:
        verified = verify_manifest(document, public_key)
    except ManifestInvalid as error:
        print(f"invalid: {error}")
        return EXIT_INVALID
    print(
        f"valid: generation {verified.generation}, digest {verified.digest}, "
        f"signed by key {verified.key_id}"
    )
    if args.compare_data is None:
        return EXIT_OK
    return _compare_with_data(verified.content, args.compare_data)


def _compare_with_data(content: Any, data: Path) -> int:
    """Whether a verified manifest describes `data` exactly, said and returned.

    A manifest of an earlier generation differs from the data as it is now;
    the reason line then also says whether it is the manifest `data` kept for
    that generation at its commit.
    """
    environment = layout.Environment(data, readonly=True)
    try:
        actual = build_manifest(environment)
        number = content.get("generation", {}).get("number")
        is_earlier = number != actual["generation"]["number"]
        kept = _kept_or_none(environment, number) if is_earlier else None
    finally:
        environment.close()

    differing = _differing_sections(actual, content)
    if not differing:
        print(f"matches {data}")
        return EXIT_OK
    print(f"differs from {data}: {', '.join(differing)}")
    if is_earlier:
        print(_earlier_generation_note(data, number, kept, content))
    return EXIT_INVALID


def _kept_or_none(environment: layout.Environment, number: Any) -> Any:
    if not isinstance(number, int):
        return None
    try:
        return kept_manifest(environment, number)
    except ManifestNotKept:
        return None


def _differing_sections(actual: Any, content: Any) -> list[str]:
    return sorted(
        name
        for name in set(actual) | set(content)
        if actual.get(name) != content.get(name)
    )


def _earlier_generation_note(data: Path, number: Any, kept: Any, content: Any) -> str:
    if kept is None:
        return f"{data} kept no manifest for generation {number}"
    if kept == content:
        return f"it is the manifest {data} kept for generation {number}"
    return f"nor is it the manifest {data} kept for generation {number}"


def _key_path(named: Path | None, data: Path | None, flag: str) -> Path:
    if named is not None:
        return named
    if data is None:
        raise HashCheckError(f"Give --data DIR (for DIR/signing-key.pem) or {flag}.")
    return default_key_path(data)


def _print_public_key(key: SigningKey, *, pem: bool) -> None:
    if pem:
        sys.stdout.write(key.public_pem())
        return
    print(f"public key: {key.public_key.base64}")
    print(f"key id: {key.key_id}")


def _write_text(path: Path, text: str) -> None:
    try:
        path.write_text(text, encoding="utf-8")
    except OSError as error:
        raise HashCheckError(f"Cannot write {path}: {error.strerror}.") from error
