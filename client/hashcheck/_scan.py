"""Scanning paths: walk them, hash the files in parallel, batch the hashes.

The pipeline is pulled, one stage from the next, by whoever reads
`FileScan.batches()` (for the CLI, gRPC's sending thread, so the walk and the
hashing pause whenever the server has enough batches unanswered):

1. `walk_files` yields every non-empty regular file under the given paths.
   Symbolic links are followed, but a directory already walked is never
   walked again, which ends symlink loops. Paths that cannot be read are
   reported and skipped.
2. `FileScan` hashes up to `window` files at a time on a thread pool (hashlib
   releases the GIL, so the threads hash in parallel) and collects them in
   whatever order they finish.
3. Every `batch_size` files, or when no file has finished for a moment or
   the first of them has waited a little while (`_flushing.FlushTimer`), the
   files collected so far become three batches, one per algorithm, each
   carrying the paths in batch order: a hit's position is its file's index.
   With PDQ on, the images among them with a usable PDQ hash (quality 50 or
   more, see hashcheck._pdq) make a fourth batch, with their own paths.

Empty files are skipped: their hashes are on no list.
"""

from __future__ import annotations

import concurrent.futures
import os
import stat
import threading
from collections.abc import Callable, Iterable, Iterator

from hashcheck._algorithms import Algorithm
from hashcheck._flushing import FlushTimer
from hashcheck._hashing import FileHashes, hash_file
from hashcheck._models import Batch
from hashcheck._pdq import PdqHash, pdq_hash_file

__all__ = ["FILE_ALGORITHMS", "FileScan", "walk_files"]

FILE_ALGORITHMS = (Algorithm.MD5, Algorithm.SHA1, Algorithm.SHA256)

Report = Callable[[str], None]

#: A file's exact hashes, and its PDQ hash when it is an image and PDQ is on.
_Hashed = tuple[FileHashes, PdqHash | None]


class FileScan:
    """One scan of some paths, read through `batches()`.

    `files_hashed`, `bytes_hashed` and `problems` grow as it runs and may be
    read from any thread; `problems` counts the paths that could not be read.

    With `pdq` (a callable saying whether to send PDQ hashes, asked once
    before the first PDQ batch), image files are PDQ-hashed too.
    """

    def __init__(
        self,
        paths: Iterable[str],
        *,
        batch_size: int,
        workers: int | None = None,
        report: Report,
        on_progress: Callable[[], None] | None = None,
        pdq: Callable[[], bool] | None = None,
    ) -> None:
        self._paths = list(paths)
        self._pdq = pdq
        self._send_pdq: bool | None = None
        self._batch_size = batch_size
        self._workers = workers or min(32, (os.cpu_count() or 1) + 4)
        self._report = report
        self._on_progress = on_progress
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        self.files_hashed = 0
        self.bytes_hashed = 0
        self.problems = 0

    def batches(self) -> Iterator[Batch[tuple[str, ...]]]:
        """Three batches (MD5, SHA-1, SHA-256) per group of files, and PDQ's."""
        with concurrent.futures.ThreadPoolExecutor(
            max_workers=self._workers, thread_name_prefix="hashcheck-hash"
        ) as executor:
            self._executor = executor
            files = walk_files(self._paths, self._note_problem)
            # A slow file must not hold back the hits of the files done.
            timer = FlushTimer()
            group: list[tuple[str, _Hashed]] = []
            for hashed in self._hash_in_parallel(executor, files, timer):
                if hashed is not None:
                    group.append(hashed)
                if len(group) >= self._batch_size or (
                    group and timer.is_due(len(group))
                ):
                    yield from self._batches_of(group)
                    group = []
                    timer.sent()
            if group:
                yield from self._batches_of(group)

    def cancel(self) -> None:
        """Drop the files not yet being hashed; for a scan ended early."""
        executor = self._executor
        if executor is not None:
            executor.shutdown(wait=False, cancel_futures=True)

    def _hash_in_parallel(
        self,
        executor: concurrent.futures.Executor,
        files: Iterator[str],
        timer: FlushTimer,
    ) -> Iterator[tuple[str, _Hashed] | None]:
        """Hashed files as they finish; None marks a wait the timer ended."""
        window = 4 * self._workers
        running: dict[concurrent.futures.Future[_Hashed], str] = {}
        for path in files:
            running[executor.submit(self._hash, path)] = path
            if len(running) >= window:
                yield from self._collect(running, timer)
        while running:
            yield from self._collect(running, timer)

    def _hash(self, path: str) -> _Hashed:
        hashes = hash_file(path)
        if self._pdq is None or not hashes.size_bytes:
            return hashes, None
        try:
            return hashes, pdq_hash_file(path)
        except (OSError, ValueError):
            # Changed or gone since it was hashed, or an image PDQ cannot
            # take: its exact hashes still count.
            return hashes, None

    def _collect(
        self,
        running: dict[concurrent.futures.Future[_Hashed], str],
        timer: FlushTimer,
    ) -> Iterator[tuple[str, _Hashed] | None]:
        """The files that finish next, or one None when the timer runs out first."""
        done, _ = concurrent.futures.wait(
            running,
            timeout=timer.wait_seconds(),
            return_when=concurrent.futures.FIRST_COMPLETED,
        )
        if not done:
            yield None
        for future in done:
            path = running.pop(future)
            hashed = self._outcome(path, future)
            if hashed is not None:
                yield path, hashed

    def _outcome(
        self, path: str, future: concurrent.futures.Future[_Hashed]
    ) -> _Hashed | None:
        """The file's hashes, or None when it was unreadable or is now empty."""
        try:
            hashed = future.result()
        except OSError as error:
            self._note_problem(_unreadable(path, error))
            return None

        hashes = hashed[0]
        with self._lock:
            self.files_hashed += 1
            self.bytes_hashed += hashes.size_bytes
        if self._on_progress is not None:
            self._on_progress()
        return hashed if hashes.size_bytes else None

    def _batches_of(
        self, group: list[tuple[str, _Hashed]]
    ) -> Iterator[Batch[tuple[str, ...]]]:
        paths = tuple(path for path, _ in group)
        for algorithm in FILE_ALGORITHMS:
            packed = b"".join(hashes.digest(algorithm) for _, (hashes, _) in group)
            yield Batch(algorithm, packed, paths)

        images = [(path, pdq) for path, (_, pdq) in group if pdq and pdq.is_usable]
        if images and self._sends_pdq():
            packed = b"".join(pdq.hash for _, pdq in images)
            yield Batch(Algorithm.PDQ, packed, tuple(path for path, _ in images))

    def _sends_pdq(self) -> bool:
        """Ask `pdq` once, when the first PDQ batch is ready."""
        if self._send_pdq is None:
            self._send_pdq = self._pdq is not None and self._pdq()
        return self._send_pdq

    def _note_problem(self, message: str) -> None:
        with self._lock:
            self.problems += 1
        self._report(message)


def walk_files(paths: Iterable[str], report: Report) -> Iterator[str]:
    """Every non-empty regular file under the paths, files given included.

    Each problem goes to `report` as a sentence, and the walk goes on.
    """
    walked: set[tuple[int, int]] = set()
    for path in paths:
        try:
            info = os.stat(path)
        except OSError as error:
            report(_unreadable(path, error))
            continue

        if stat.S_ISDIR(info.st_mode):
            yield from _walk_tree(path, info, walked, report)
        elif stat.S_ISREG(info.st_mode):
            if info.st_size:
                yield path
        else:
            report(f"Skipped {path}: it is neither a regular file nor a directory.")


def _walk_tree(
    root: str,
    root_info: os.stat_result,
    walked: set[tuple[int, int]],
    report: Report,
) -> Iterator[str]:
    pending = [(root, root_info)]
    while pending:
        directory, info = pending.pop()
        # Identity, not path: a link back up the tree leads to a directory
        # already walked, and is where a symlink loop ends.
        identity = (info.st_dev, info.st_ino)
        if identity in walked:
            continue
        walked.add(identity)

        try:
            with os.scandir(directory) as scanner:
                entries = list(scanner)
        except OSError as error:
            report(_unreadable(directory, error))
            continue

        for entry in entries:
            try:
                entry_info = entry.stat()
            except OSError as error:
                report(_unreadable(entry.path, error))
                continue
            if stat.S_ISDIR(entry_info.st_mode):
                pending.append((entry.path, entry_info))
            elif stat.S_ISREG(entry_info.st_mode) and entry_info.st_size:
                yield entry.path


def _unreadable(path: str, error: OSError) -> str:
    reason = error.strerror or str(error)
    return f"Cannot read {path}: {reason}; skipped it."
