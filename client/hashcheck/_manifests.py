"""Generation manifests: what one generation of a hotline's lists held, signed.

A hotline publishes, for auditors and partners, a signed manifest of each
generation it serves (`hashcheck-server manifest`). The file is JSON:

    {"manifest": {...}, "signature": "<base64>", "key_id": "<hex>"}

`signature` is the Ed25519 signature, by the key with id `key_id`, of the
canonical form of `manifest`: its JSON with keys sorted at every level, no
whitespace, non-ASCII characters as UTF-8 and not escaped. A manifest holds
only strings, integers, lists and objects, never floats, so this form is
also the RFC 8785 (JCS) form, and any language can rebuild it. How the file
itself is laid out (indentation, key order) does not matter.

The manifest's own fields (``"format": "hashcheck-manifest/1"``) are
described in docs/provenance.md and hashcheck_server.manifest.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from hashcheck._exceptions import ManifestInvalid
from hashcheck._keys import PublicKey, as_public_key

__all__ = ["VerifiedManifest", "verify_manifest"]

#: The value of a manifest's "format" field; a verifier refuses any other.
MANIFEST_FORMAT = "hashcheck-manifest/1"


def canonical_json(value: Any) -> bytes:
    """The bytes a manifest's signature covers: sorted keys, no whitespace, UTF-8."""
    text = json.dumps(
        value,
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
        allow_nan=False,
    )
    return text.encode("utf-8")


@dataclass(frozen=True, slots=True)
class VerifiedManifest:
    """A manifest whose signature holds: its content, and the key that signed it."""

    content: Mapping[str, Any]
    key_id: str

    @property
    def generation(self) -> int:
        """The number of the generation the manifest describes."""
        number: int = self.content["generation"]["number"]
        return number

    @property
    def digest(self) -> str:
        """The generation's content digest, as servers report it in GetInfo."""
        digest: str = self.content["generation"]["digest"]
        return digest


def verify_manifest(
    document: str | bytes | Mapping[str, Any], public_key: PublicKey | str | bytes
) -> VerifiedManifest:
    """Check a signed manifest against the hotline's key; its verified content.

        with open("manifest-42.json") as file:
            verified = hashcheck.verify_manifest(file.read(), hotline_key)
        print(verified.generation, verified.digest)

    `document` is the file's text or its parsed JSON. Raises `ManifestInvalid`
    when it is not a signed manifest, names another key, or its signature
    does not match its content. Needs `cryptography` (ImportError says so).
    """
    key = as_public_key(public_key)
    signed = _parse(document) if isinstance(document, str | bytes) else document
    manifest, signature, key_id = _parts_of(signed)

    if key_id != key.key_id:
        raise ManifestInvalid(
            f"The manifest was signed by the key with id {key_id!r}, not by the "
            f"key given (id {key.key_id}). Check it against the hotline's key "
            "with the manifest's id."
        )
    try:
        message = canonical_json(manifest)
    except ValueError:
        raise ManifestInvalid(
            "The manifest holds NaN or Infinity, which no manifest holds."
        ) from None
    if not key.is_valid_signature(signature, message):
        raise ManifestInvalid(
            "The manifest's signature does not match its content: the manifest "
            "was altered, or was not signed by this key."
        )
    if manifest.get("format") != MANIFEST_FORMAT:
        raise ManifestInvalid(
            f"The document is signed, but it is not a {MANIFEST_FORMAT} manifest."
        )
    return VerifiedManifest(manifest, key_id)


def _parse(document: str | bytes) -> Any:
    try:
        return json.loads(document, object_pairs_hook=_refuse_duplicate_keys)
    except (ValueError, UnicodeDecodeError) as error:
        raise ManifestInvalid(f"The manifest is not JSON: {error}") from None


def _refuse_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """The object of `pairs`; readers disagree on repeated keys, so none may repeat."""
    record = dict(pairs)
    if len(record) != len(pairs):
        raise ValueError("a key appears twice in one object")
    return record


def _parts_of(signed: Any) -> tuple[dict[str, Any], bytes, str]:
    """The manifest, the signature and the key id of a signed document."""
    if not isinstance(signed, Mapping):
        raise ManifestInvalid("The manifest file is not a JSON object.")
    manifest = signed.get("manifest")
    signature = signed.get("signature")
    key_id = signed.get("key_id")
    if not (
        isinstance(manifest, dict)
        and isinstance(signature, str)
        and isinstance(key_id, str)
    ):
        raise ManifestInvalid(
            'A signed manifest holds "manifest" (an object), "signature" and '
            '"key_id" (strings); this document does not.'
        )
    try:
        raw_signature = base64.b64decode(signature, validate=True)
    except (binascii.Error, ValueError):
        raise ManifestInvalid("The manifest's signature is not base64.") from None
    return manifest, raw_signature, key_id
