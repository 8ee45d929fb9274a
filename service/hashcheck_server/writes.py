"""Write transactions for the records kept beside the lists: quarantine, disputes.

The list changes of hashcheck_server.store have their own transaction
helper; these are the same steps for the smaller records that a running
server writes itself (a flooding hash put on hold, a tenant's dispute) and
that operators change with `hashcheck-server quarantine|disputes`.

The threads of one process take turns on a Python lock before they begin a
write transaction, so that only other processes (an import, say) ever wait
inside LMDB's writer mutex, as in hashcheck_server.audit.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import lmdb

from hashcheck_server import layout
from hashcheck_server.digest import content_digest
from hashcheck_server.manifest import keep_manifest

__all__ = ["commit_generation", "writing"]

_WRITE_LOCK = threading.Lock()


@contextmanager
def writing(environment: layout.Environment) -> Iterator[Any]:
    """A write transaction that commits on success; LMDB errors translated."""
    with _WRITE_LOCK:
        try:
            with environment.write() as transaction:
                yield transaction
        except lmdb.Error as error:
            raise layout.translate_lmdb_error(error, environment.path) from error


def commit_generation(
    environment: layout.Environment, transaction: Any, change: str
) -> int:
    """Write the next generation record, with the digest of what it now holds,
    and keep its manifest (hashcheck_server.manifest)."""
    previous = layout.read_generation_record(environment, transaction)
    record = layout.write_generation_record(
        environment,
        transaction,
        previous.number + 1,
        change,
        content_digest(environment, transaction),
    )
    keep_manifest(environment, transaction)
    return record.number
