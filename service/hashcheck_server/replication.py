"""`hashcheck-server pull`: keep a replica's snapshot root in step with a primary's.

The primary publishes snapshots into a root (`snapshot --into ROOT`) and makes
that root readable over HTTP(S), for instance with a static file server. A
replica runs `pull --from URL --into ROOT` beside `serve --follow ROOT`:

1. read ``URL/current/snapshot.json``, the manifest of the snapshot to serve;
2. if the replica's root lacks that snapshot, download each file the
   manifest lists from ``URL/<name>/<file>`` into a hidden staging directory,
   checking every file's size and SHA-256 against the manifest;
3. rename the staging directory into place, move ``current`` to it in one
   rename, and delete old snapshots beyond the newest few.

The follower switches within its poll interval. A download cut short, or one
that does not match its manifest, leaves a staging directory that the next
round deletes; ``current`` only ever names a snapshot that was complete and
verified. ``file://`` URLs and plain paths work as well, for shared volumes.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import time
import urllib.parse
import urllib.request
from pathlib import Path, PurePosixPath
from typing import Any

from hashcheck_server.errors import StoreError
from hashcheck_server.snapshot import (
    CURRENT,
    MANIFEST,
    SnapshotManifest,
    current_snapshot,
    prune_snapshots,
    switch_current,
)

__all__ = ["PullError", "pull_forever", "pull_once"]

logger = logging.getLogger(__name__)

_TIMEOUT_SECONDS = 60.0
_CHUNK_BYTES = 1 << 20


class PullError(StoreError):
    """A snapshot could not be fetched, or did not match its manifest."""


def pull_once(source: str, root: Path, *, keep: int = 2) -> SnapshotManifest:
    """Bring `root` to the primary's current snapshot; return its manifest."""
    base = _base_url(source)
    manifest = _fetch_manifest(base)
    root.mkdir(parents=True, exist_ok=True)
    target = root / manifest.name
    if not (target / MANIFEST).is_file():
        started = time.perf_counter()
        _download(base, manifest, root)
        logger.info(
            "pulled snapshot %s: generation %d, digest %s, %d bytes in %.1f s",
            manifest.name,
            manifest.generation,
            manifest.digest or "none",
            sum(entry.bytes for entry in manifest.files.values()),
            time.perf_counter() - started,
            extra={"event": "snapshot_pulled", "generation": manifest.generation},
        )
    if current_snapshot(root) != target.resolve():
        switch_current(root, manifest.name)
    prune_snapshots(root, keep=keep)
    return manifest


def pull_forever(
    source: str, root: Path, *, interval_seconds: float, keep: int = 2
) -> None:
    """Pull every `interval_seconds`; failures are logged and retried."""
    _remove_stale_staging(root)
    while True:
        try:
            pull_once(source, root, keep=keep)
        except (OSError, StoreError) as error:
            logger.warning("cannot pull a snapshot from %s: %s", source, error)
        time.sleep(interval_seconds)


def _base_url(source: str) -> str:
    if "://" not in source:
        return Path(source).resolve().as_uri()
    return source.rstrip("/")


def _fetch_manifest(base: str) -> SnapshotManifest:
    raw = _read_url(f"{base}/{CURRENT}/{MANIFEST}")
    try:
        manifest = SnapshotManifest.from_json(raw)
    except (ValueError, TypeError, KeyError) as error:
        raise PullError(
            f"{base}/{CURRENT}/{MANIFEST} is not a snapshot manifest ({error})."
        ) from error
    _require_safe_names(manifest)
    return manifest


def _require_safe_names(manifest: SnapshotManifest) -> None:
    """Refuse names that would write outside the snapshot directory."""
    paths = [PurePosixPath(manifest.name), *map(PurePosixPath, manifest.files)]
    for path in paths:
        if path.is_absolute() or ".." in path.parts or not path.parts:
            raise PullError(f"The manifest names an unsafe path {str(path)!r}.")
    if len(PurePosixPath(manifest.name).parts) != 1:
        raise PullError(f"The snapshot name {manifest.name!r} is not one directory.")


def _download(base: str, manifest: SnapshotManifest, root: Path) -> None:
    staging = root / f".{manifest.name}.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        for relative, entry in manifest.files.items():
            url = f"{base}/{urllib.parse.quote(manifest.name)}/{relative}"
            destination = staging / relative
            destination.parent.mkdir(parents=True, exist_ok=True)
            size, sha256 = _copy_url(url, destination)
            if (size, sha256) != (entry.bytes, entry.sha256):
                raise PullError(
                    f"{url} is {size} bytes with SHA-256 {sha256}, but the "
                    f"manifest says {entry.bytes} bytes with {entry.sha256}; "
                    "the primary may have replaced it meanwhile. Retrying later."
                )
        (staging / MANIFEST).write_text(manifest.to_json())
        staging.rename(root / manifest.name)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _copy_url(url: str, destination: Path) -> tuple[int, str]:
    digest = hashlib.sha256()
    size = 0
    with _open_url(url) as response, destination.open("wb") as out:
        while chunk := response.read(_CHUNK_BYTES):
            digest.update(chunk)
            out.write(chunk)
            size += len(chunk)
        out.flush()
        os.fsync(out.fileno())
    return size, digest.hexdigest()


def _read_url(url: str) -> bytes:
    with _open_url(url) as response:
        content: bytes = response.read()
        return content


def _open_url(url: str) -> Any:
    try:
        return urllib.request.urlopen(url, timeout=_TIMEOUT_SECONDS)
    except OSError as error:
        raise PullError(f"Cannot fetch {url}: {error}.") from error


def _remove_stale_staging(root: Path) -> None:
    """Staging directories of pulls that a restart cut short."""
    if root.is_dir():
        for entry in root.glob(".*.partial-*"):
            shutil.rmtree(entry, ignore_errors=True)
