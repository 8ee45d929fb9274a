"""`serve --follow ROOT`: serve a snapshot root's `current` snapshot, and follow it.

A replica does not import lists; it serves snapshots of a primary's data
directory (hashcheck_server.snapshot). Its snapshot root is kept in step by
`hashcheck-server pull` or by any tool that copies whole snapshots and then
moves the ``current`` symlink in one rename.

The follower polls ``ROOT/current``. When it names another snapshot, the
follower opens that snapshot's environment read-only, maps its generation off
the request path and installs it exactly as the keeper installs a new
generation of one directory: requests already running finish on the old one,
whose environment is closed once its last lease is returned. Until the first
snapshot appears there is nothing to serve: calls get UNAVAILABLE and health
stays NOT_SERVING, so an orchestrator sends the replica no traffic.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

from hashcheck_server import layout
from hashcheck_server.errors import NotReady
from hashcheck_server.generation import Generation
from hashcheck_server.serving import GenerationKeeper, log_switch
from hashcheck_server.snapshot import CURRENT, current_snapshot

__all__ = ["SnapshotFollower"]

logger = logging.getLogger(__name__)


class SnapshotFollower(GenerationKeeper):
    """Serves the snapshot that ``root/current`` names, switching when it moves.

    follower = SnapshotFollower(Path("/snapshots"))
    follower.start_watching(interval_seconds=1.0)
    with follower.lease() as generation:
        hits = generation.check(Algorithm.MD5, batch)
    """

    def __init__(
        self,
        root: Path,
        *,
        on_switch: Callable[[Generation], None] | None = None,
    ) -> None:
        super().__init__(None, on_switch=on_switch)
        self.root = root
        self._snapshot: Path | None = None
        #: The open environment of the snapshot served now. LMDB allows one
        #: handle per path and process, so readers of other databases of the
        #: snapshot (the tenants) go through this one.
        self.served_environment: layout.Environment | None = None

    @property
    def snapshot(self) -> Path | None:
        """The snapshot directory served now."""
        return self._snapshot

    def load_current(self) -> Generation:
        """Map the snapshot ``current`` names, if it is not the one served.

        Raises NotReady while the root holds no snapshot and none is served.
        """
        snapshot = current_snapshot(self.root)
        served = self._current
        if served is not None and snapshot in (None, self._snapshot):
            # Snapshots never change once named, and a link that is missing
            # for a moment (being replaced by hand) is no reason to stop.
            return served.generation
        if snapshot is None:
            raise NotReady(
                f"No snapshot to serve yet: {self.root / CURRENT} names none."
            )

        started = time.perf_counter()
        environment = layout.Environment(snapshot, readonly=True)
        try:
            generation = Generation.load(environment)
        except BaseException:
            environment.close()
            raise
        self._install(generation, on_closed=environment.close)
        self._snapshot = snapshot
        self.served_environment = environment
        log_switch(generation, time.perf_counter() - started, snapshot)
        return generation
