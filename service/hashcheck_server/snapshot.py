"""Snapshots: compact, consistent copies of a data directory, for replicas.

A snapshot is a directory that a server can serve as it is:

    OUT/
      data.mdb          the store, copied by LMDB with compaction
      <sub>/data.mdb    any other LMDB environment beside it, except the
                        audit log (see below)
      snapshot.json     the manifest: name, generation, digest, and each
                        file's size and SHA-256

Each environment is copied by LMDB itself (``mdb_env_copy2`` with
``MDB_CP_COMPACT``) under one read transaction, so the copy is exactly one
committed generation however many imports commit meanwhile, and the server
keeps answering: a read transaction blocks no one. Free pages are left out,
so a snapshot is usually smaller than the directory it was taken from.

A snapshot appears whole or not at all: it is written into a hidden sibling
directory, flushed to disk, and renamed into place. It is never changed
afterwards, so a follower may map it while another copy of it is being made.

A snapshot root holds several snapshots and a ``current`` symlink:

    ROOT/
      000000000042-3f9a0c1d2b4e/   one snapshot, named by generation and digest
      000000000043-77e01b9c4d2a/
      current -> 000000000043-77e01b9c4d2a

`publish_snapshot` adds a snapshot to a root and moves ``current`` with one
rename (atomic on POSIX), then prunes the oldest. A server started with
``serve --follow ROOT`` maps whatever ``current`` names and switches when it
moves (hashcheck_server.follow); ``hashcheck-server pull`` keeps a replica's
root in step with a primary's (hashcheck_server.replication).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import lmdb

from hashcheck_server import layout
from hashcheck_server.errors import StoreError

__all__ = [
    "CURRENT",
    "MANIFEST",
    "FileEntry",
    "SnapshotManifest",
    "current_snapshot",
    "publish_snapshot",
    "read_manifest",
    "switch_current",
    "write_snapshot",
]

logger = logging.getLogger(__name__)

#: The symlink in a snapshot root that names the snapshot to serve.
CURRENT = "current"
#: The manifest file inside every snapshot.
MANIFEST = "snapshot.json"
_DATA_FILE = "data.mdb"
_CHUNK_BYTES = 1 << 20


@dataclass(frozen=True)
class FileEntry:
    """One file of a snapshot: its size and SHA-256, to verify a transfer."""

    bytes: int
    sha256: str


@dataclass(frozen=True)
class SnapshotManifest:
    """What a snapshot holds: which generation, and every file in it."""

    name: str
    generation: int
    digest: str
    committed_at: float
    created_at: float
    files: dict[str, FileEntry] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> SnapshotManifest:
        raw = json.loads(text)
        files = {path: FileEntry(**entry) for path, entry in raw.pop("files").items()}
        return cls(**raw, files=files)


def write_snapshot(data: Path, out: Path) -> SnapshotManifest:
    """Copy the data directory `data` to the new directory `out`.

    Raises StoreError when `data` is not a HashCheck store or `out` exists.
    """
    if out.exists() or out.is_symlink():
        raise StoreError(
            f"{out} already exists; a snapshot is never written over. "
            "Name a new directory."
        )
    return _write_snapshot(data, out.parent, lambda _: out.name)


def publish_snapshot(data: Path, root: Path, *, keep: int = 3) -> SnapshotManifest:
    """Snapshot `data` into `root` unless its generation is there, then point
    ``current`` at it and delete all but the newest `keep` snapshots."""
    record = _generation_record(data)
    existing = root / snapshot_name(record.number, record.digest)
    if (existing / MANIFEST).is_file():
        manifest = read_manifest(existing)
    else:
        started = time.perf_counter()
        # Named after the generation actually copied, which may be newer
        # than the one just read if an import commits meanwhile.
        manifest = _write_snapshot(
            data, root, lambda copied: snapshot_name(copied.number, copied.digest)
        )
        logger.info(
            "wrote snapshot %s: generation %d, digest %s, %d bytes in %.1f s",
            root / manifest.name,
            manifest.generation,
            manifest.digest or "none",
            sum(entry.bytes for entry in manifest.files.values()),
            time.perf_counter() - started,
            extra={"event": "snapshot_written", "generation": manifest.generation},
        )
    switch_current(root, manifest.name)
    prune_snapshots(root, keep=keep)
    return manifest


def _write_snapshot(
    data: Path, parent: Path, name_for: Callable[[layout.GenerationRecord], str]
) -> SnapshotManifest:
    """Copy `data` into `parent`, named by `name_for(the generation copied)`.

    If a snapshot of that name exists already, it is kept and returned.
    """
    parent.mkdir(parents=True, exist_ok=True)
    staging = parent / f".snapshot.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        record, files = _copy_environments(data, staging)
        out = parent / name_for(record)
        if (out / MANIFEST).is_file():
            shutil.rmtree(staging)
            return read_manifest(out)
        manifest = SnapshotManifest(
            name=out.name,
            generation=record.number,
            digest=record.digest,
            committed_at=record.committed_at,
            created_at=time.time(),
            files=files,
        )
        _write_durably(staging / MANIFEST, manifest.to_json().encode())
        _fsync_directory(staging)
        staging.rename(out)
        _fsync_directory(parent)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return manifest


def snapshot_name(generation: int, digest: str) -> str:
    """A name that sorts by generation and tells contents apart."""
    return f"{generation:012d}-{(digest or 'nodigest')[:12]}"


def switch_current(root: Path, name: str) -> None:
    """Point ``root/current`` at the snapshot `name` in one atomic rename."""
    staging = root / f".{CURRENT}.{os.getpid()}"
    staging.unlink(missing_ok=True)
    staging.symlink_to(name)
    os.replace(staging, root / CURRENT)
    _fsync_directory(root)


def current_snapshot(root: Path) -> Path | None:
    """The snapshot directory ``root/current`` names, if it names one."""
    link = root / CURRENT
    try:
        target = link.resolve(strict=True)
    except (FileNotFoundError, RuntimeError):
        return None
    return target if (target / MANIFEST).is_file() else None


def read_manifest(snapshot: Path) -> SnapshotManifest:
    try:
        return SnapshotManifest.from_json((snapshot / MANIFEST).read_bytes())
    except (OSError, ValueError, TypeError, KeyError) as error:
        raise StoreError(
            f"{snapshot} has no readable {MANIFEST} ({error}); it is not a "
            "HashCheck snapshot."
        ) from error


def snapshots_in(root: Path) -> list[Path]:
    """The complete snapshots in a root, oldest first."""
    if not root.is_dir():
        return []
    found = [
        entry
        for entry in root.iterdir()
        if not entry.name.startswith(".")
        and not entry.is_symlink()
        and (entry / MANIFEST).is_file()
    ]
    return sorted(found, key=lambda entry: entry.name)


def prune_snapshots(root: Path, *, keep: int) -> list[Path]:
    """Delete all but the newest `keep` snapshots, never the current one."""
    current = current_snapshot(root)
    snapshots = snapshots_in(root)
    doomed = [s for s in snapshots[: max(0, len(snapshots) - keep)] if s != current]
    for snapshot in doomed:
        # A server may still map files of an old snapshot; on POSIX its
        # mapping stays valid after the unlink, until it lets go.
        shutil.rmtree(snapshot, ignore_errors=True)
    return doomed


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while chunk := stream.read(_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def _copy_environments(
    data: Path, staging: Path
) -> tuple[layout.GenerationRecord, dict[str, FileEntry]]:
    """Copy every environment of `data`; the store's generation, and the files."""
    environment = layout.Environment(data, readonly=True)
    try:
        with environment.read() as transaction:
            record = layout.read_generation_record(environment, transaction)
            environment.lmdb.copy(str(staging), compact=True, txn=transaction)
    except lmdb.Error as error:
        raise layout.translate_lmdb_error(error, data) from error
    finally:
        environment.close()
    for nested in _nested_environments(data):
        relative = nested.relative_to(data)
        _copy_other_environment(nested, staging / relative)

    files = {
        str(path.relative_to(staging)): FileEntry(
            path.stat().st_size, file_sha256(path)
        )
        for path in sorted(staging.rglob(_DATA_FILE))
    }
    for path in files:
        _fsync_file(staging / path)
    return record, files


#: The audit log's default home in a data directory (hashcheck_server.audit).
#: It records which tenant was told of which hit: the hotline's evidence, not
#: something replicas serve from, and not to be spread to every replica and
#: snapshot recipient. Replicas keep audit logs of their own.
_AUDIT_DIRECTORY = "audit"


def _nested_environments(data: Path) -> Iterator[Path]:
    """Other LMDB environments kept in the data directory, but the audit log."""
    for entry in sorted(data.rglob(_DATA_FILE)):
        relative = entry.parent.relative_to(data)
        if entry.parent != data and relative.parts[0] != _AUDIT_DIRECTORY:
            yield entry.parent


def _copy_other_environment(source: Path, destination: Path) -> None:
    destination.mkdir(parents=True)
    try:
        environment = lmdb.open(str(source), readonly=True, max_dbs=64, max_readers=512)
    except lmdb.Error as error:
        raise layout.translate_lmdb_error(error, source) from error
    try:
        with environment.begin() as transaction:
            environment.copy(str(destination), compact=True, txn=transaction)
    finally:
        environment.close()


def _generation_record(data: Path) -> layout.GenerationRecord:
    environment = layout.Environment(data, readonly=True)
    try:
        with environment.read() as transaction:
            return layout.read_generation_record(environment, transaction)
    finally:
        environment.close()


def _write_durably(path: Path, content: bytes) -> None:
    with path.open("wb") as stream:
        stream.write(content)
        stream.flush()
        os.fsync(stream.fileno())


def _fsync_file(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _fsync_directory(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
