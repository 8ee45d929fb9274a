"""Checks that turn two silent failures of LMDB into clear errors.

- A data file shorter than its own meta page says (truncated by a failed
  copy, a full disk during a restore, a damaged volume): LMDB maps the whole
  data file, and the first read of a page past the end of the file kills the
  process with SIGBUS, with no message at all. So the length is checked
  against the meta page right after opening, before any page is read.
- A write that fails because the disk is full: LMDB reports it as whatever
  the failing call returned (on tmpfs, for instance, EIO from the commit
  rather than ENOSPC), so the free space is asked for as well.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from hashcheck_server.errors import StoreCorrupt

__all__ = ["disk_is_full", "require_complete_data_file"]

_DATA_FILE = "data.mdb"


def require_complete_data_file(environment: Any, path: Path) -> None:
    """StoreCorrupt unless `path`'s data file holds every page its meta names.

    `environment` is a just-opened lmdb.Environment; only its meta page has
    been read (with pread, not through the map).
    """
    data_file = path / _DATA_FILE if path.is_dir() else path
    try:
        size = data_file.stat().st_size
    except OSError:
        return
    last_page = environment.info()["last_pgno"]
    page_size = environment.stat()["psize"]
    needed = (last_page + 1) * page_size
    if size < needed:
        raise StoreCorrupt(
            f"{data_file} is truncated: {size} bytes, but its pages need "
            f"{needed}. Restore the data directory from a snapshot or point "
            "--data at another directory."
        )


def disk_is_full(path: Path, *, spare_bytes: int = 1 << 20) -> bool:
    """Whether the file system holding `path` has (almost) no space left."""
    try:
        status = os.statvfs(path)
    except OSError:
        return False
    return status.f_bavail * status.f_frsize < spare_bytes
