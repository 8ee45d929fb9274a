"""The content digest of a generation: one SHA-256 over what its lookups answer.

Two replicas serve the same answers when they hold the same rows, the same
memberships and the same lists, whatever their generation numbers, LMDB
page layout or import times. The digest is computed over just that, inside the write
transaction that commits a generation (so it always describes the data beside
it in the generation record), and servers report it in GetInfo, in their
switch log line and in the `hashcheck_generation_info` metric.

What is hashed, in this order, every part prefixed with its length so that no
two different stores can produce the same byte stream:

1. every table part's rows (the base table and any delta, see
   hashcheck_server.layout), in LMDB key order: ``b"rows"``, the key, then the
   rows, sorted and unique within the part;
2. every membership bitmap, in LMDB key order (algorithm, list, category):
   ``b"member"``, the key, then the bitmap's rows as little-endian uint32;
3. every list record, in name order: ``b"list"``, the name, then the record
   as canonical JSON without its timestamps (``*_at``) and its import
   bookkeeping (``held_back``): its kind and state decide whether its
   memberships hit, while when it was imported and what was held back do not;
4. every hash on hold in the quarantine (hashcheck_server.quarantine), in
   LMDB key order: ``b"held"``, then its key (algorithm and raw hash). Held
   hashes give no hits; a store that never held one adds nothing here, so
   its digest is what it was before the quarantine existed.

The bitmap's rows are hashed rather than its serialized form, because roaring
may encode one set of rows in more than one way. Equal digests mean equal
answers. The converse does not quite hold: a merge folds the delta into the
base and renumbers rows, so it changes the digest (and the generation) while
every answer stays the same.

A store written before digests existed has none in its record; servers report
an empty digest for it until its next change.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import numpy as np
from pyroaring import BitMap

from hashcheck_server import layout

__all__ = ["content_digest"]

#: Table values whose key ends so hold rows; the others are derived from them.
_ROWS_SUFFIX = b"/rows"

#: List record fields that say what an import did, not what its list answers.
_BOOKKEEPING = frozenset({"held_back"})


def content_digest(environment: layout.Environment, transaction: Any) -> str:
    """The hex SHA-256 of the tables and memberships `transaction` sees."""
    digest = hashlib.sha256()
    for key, value in transaction.cursor(db=environment.tables):
        if bytes(key).endswith(_ROWS_SUFFIX):
            _update(digest, b"rows", bytes(key), value)
    for key, value in transaction.cursor(db=environment.members):
        bitmap = BitMap.deserialize(bytes(value))
        rows = np.frombuffer(bitmap.to_array(), dtype=np.uint32).astype("<u4")
        _update(digest, b"member", bytes(key), rows.tobytes())
    for key, value in transaction.cursor(db=environment.lists):
        record = {
            name: field
            for name, field in json.loads(bytes(value)).items()
            if not name.endswith("_at") and name not in _BOOKKEEPING
        }
        canonical = json.dumps(record, sort_keys=True).encode()
        _update(digest, b"list", bytes(key), canonical)
    if environment.quarantine is not None:
        for key, value in transaction.cursor(db=environment.quarantine):
            # "held" is hashcheck_server.quarantine.HELD (importing it here
            # would be circular: the quarantine commits through this digest).
            if json.loads(bytes(value))["status"] == "held":
                _update(digest, b"held", bytes(key))
    return digest.hexdigest()


def _update(digest: Any, *parts: bytes | memoryview) -> None:
    for part in parts:
        digest.update(len(part).to_bytes(8, "little"))
        digest.update(part)
