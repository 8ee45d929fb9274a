"""Generation manifests: what one generation holds, signed with the hotline's key.

A manifest is made from one read transaction, so it describes exactly one
committed generation. Its content, all strings and integers:

    {
      "format": "hashcheck-manifest/1",
      "generation": {"number": 42, "committed_at": "2026-05-04T10:11:12.345678Z",
                     "change": "import police-2026-05", "digest": "<hex>"},
      "lists": [{"name": "police", "source": "...", "hashes": 5000,
                 "counts": {"md5": {"A1": 4000, "B": 1000}}}, ...],
      "tables": {"md5": {"base": {"rows": 5000, "sha256": "<hex>"},
                         "delta": {"rows": 10, "sha256": "<hex>"}}}
    }

- ``generation.digest`` is the content digest servers report in GetInfo
  (hashcheck_server.digest); ``committed_at`` is UTC with microseconds.
- ``lists`` holds every list, by name, with how many hashes it grades with
  each category, per algorithm (``counts``), and their sum (``hashes``).
- ``tables`` holds, per algorithm and table part, the number of rows and the
  SHA-256 of the part's rows exactly as stored: the sorted raw hashes
  end to end (hashcheck_server.layout). Rows on no list (until the next
  rebuild) are included; anyone holding the same data directory can recompute
  them.

The signed file is ``{"manifest": ..., "signature": ..., "key_id": ...}``:
the Ed25519 signature, in base64, of the manifest's canonical JSON
(hashcheck._manifests). Ed25519 is deterministic, so signing the same
generation with the same key always gives the same file.

Manifests carry counts, which tenants do not see: they are for the hotline,
its auditors and partners, and no RPC serves them.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import json
from typing import Any

from hashcheck._algorithms import Algorithm
from hashcheck._manifests import MANIFEST_FORMAT, canonical_json
from hashcheck_server import layout
from hashcheck_server.errors import ManifestNotKept
from hashcheck_server.signing import SigningKey

__all__ = [
    "build_manifest",
    "keep_manifest",
    "kept_manifest",
    "manifest_in",
    "sign_manifest",
]


def build_manifest(environment: layout.Environment) -> dict[str, Any]:
    """The manifest of the generation now committed in `environment`."""
    with environment.read() as transaction:
        return manifest_in(environment, transaction)


def manifest_in(environment: layout.Environment, transaction: Any) -> dict[str, Any]:
    """The manifest of the generation that `transaction` sees."""
    record = layout.read_generation_record(environment, transaction)
    algorithms = layout.stored_algorithms(environment, transaction)
    return {
        "format": MANIFEST_FORMAT,
        "generation": {
            "number": record.number,
            "committed_at": _utc_text(record.committed_at),
            "change": record.change,
            "digest": record.digest,
        },
        "lists": _lists(environment, transaction, algorithms),
        "tables": _tables(environment, transaction, algorithms),
    }


def keep_manifest(environment: layout.Environment, transaction: Any) -> None:
    """Keep the manifest of the generation `transaction` is about to commit.

    Called in the write transaction, after its generation record: a manifest
    asked for later (an auditor's question about a past hit) then describes
    that generation exactly, though its tables are long gone.
    """
    manifest = manifest_in(environment, transaction)
    number = manifest["generation"]["number"]
    layout.write_manifest(environment, transaction, number, canonical_json(manifest))


def kept_manifest(environment: layout.Environment, number: int) -> dict[str, Any]:
    """The manifest kept for generation `number`; ManifestNotKept if none was."""
    with environment.read() as transaction:
        current = layout.read_generation_record(environment, transaction).number
        raw = layout.read_manifest(environment, transaction, number)
    if raw is None:
        raise ManifestNotKept(
            f"No manifest was kept for generation {number} (this store is at "
            f"generation {current}). Manifests are kept from the first change "
            "made by a HashCheck that keeps them; for an earlier generation, "
            "use a manifest or snapshot taken then."
        )
    kept: dict[str, Any] = json.loads(raw)
    return kept


def sign_manifest(manifest: dict[str, Any], key: SigningKey) -> dict[str, Any]:
    """The signed document: the manifest, its signature and the key's id."""
    signature = key.sign(canonical_json(manifest))
    return {
        "manifest": manifest,
        "signature": base64.b64encode(signature).decode("ascii"),
        "key_id": key.key_id,
    }


def _lists(
    environment: layout.Environment, transaction: Any, algorithms: list[Algorithm]
) -> list[dict[str, Any]]:
    counts: dict[str, dict[str, dict[str, int]]] = {}
    for algorithm in algorithms:
        for name, category, rows in layout.read_memberships(
            environment, transaction, algorithm
        ):
            by_category = counts.setdefault(name, {}).setdefault(algorithm.value, {})
            by_category[category] = len(rows)

    described = []
    records = layout.read_list_records(environment, transaction)
    for record in sorted(records, key=lambda r: r.name):
        list_counts = counts.get(record.name, {})
        described.append(
            {
                "name": record.name,
                "source": record.source,
                "hashes": sum(sum(c.values()) for c in list_counts.values()),
                "counts": list_counts,
            }
        )
    return described


def _tables(
    environment: layout.Environment, transaction: Any, algorithms: list[Algorithm]
) -> dict[str, dict[str, dict[str, Any]]]:
    tables: dict[str, dict[str, dict[str, Any]]] = {}
    for algorithm in algorithms:
        parts = tables.setdefault(algorithm.value, {})
        for part in layout.TABLE_PARTS:
            rows = transaction.get(
                layout.rows_key(algorithm, part), db=environment.tables
            )
            if rows is None:
                continue
            header = layout.read_table_header(environment, transaction, algorithm, part)
            parts[part] = {
                "rows": len(rows) // algorithm.width,
                # Older stores' headers lack it: hash the rows where they lie
                # in the map, never copied.
                "sha256": header.sha256 or hashlib.sha256(rows).hexdigest(),
            }
    return tables


def _utc_text(seconds: float) -> str:
    moment = datetime.datetime.fromtimestamp(seconds, datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
