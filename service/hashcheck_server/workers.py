"""`serve --workers N`: N server processes on one port and one mapped table.

Python runs one lookup at a time per process, so a machine's cores serve only
when each has its own process. The supervisor (this module) starts N workers;
each opens the data directory itself, so the table's pages are mapped from the
same file and shared through the page cache: N workers cost one table in RAM.
They bind the same address with SO_REUSEPORT and the kernel spreads
connections over them.

Workers are started with the "spawn" method: gRPC must not be forked after it
has started threads. A worker that dies is started again, at most once a
second; workers that keep failing right after their start make the
supervisor give up (exit 2) rather than loop. SIGTERM or SIGINT to the
supervisor drains every worker.

Metrics: prometheus_client's multi-process mode. Each worker writes its
samples to files in a private directory; the supervisor serves the sum on
the metrics host and port (hashcheck_server.metrics.MultiProcessMetrics).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from dataclasses import replace
from multiprocessing.process import BaseProcess
from types import FrameType

from hashcheck_server.errors import HashCheckError
from hashcheck_server.logs import configure_logging
from hashcheck_server.server import ServerConfig, serve_until_signalled

__all__ = ["supervise_workers"]

logger = logging.getLogger(__name__)

_RESTART_PAUSE_SECONDS = 1.0
#: A worker that exits sooner than this after its start failed to start.
_STARTUP_SECONDS = 10.0
_FAILED_STARTS_LIMIT = 3
_EXIT_CANNOT_SERVE = 2
_PROMETHEUS_DIRECTORY_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"


def supervise_workers(
    config: ServerConfig, workers: int, log_format: str, log_level: str
) -> None:
    """Run `workers` server processes until SIGTERM or SIGINT, then drain them."""
    metrics_directory = tempfile.mkdtemp(prefix="hashcheck-metrics-")
    os.environ[_PROMETHEUS_DIRECTORY_VARIABLE] = metrics_directory
    worker_config = replace(config, metrics_port=None, reuse_port=True)
    stopping = threading.Event()

    def stop(signum: int, _: FrameType | None) -> None:
        logger.info(
            "received %s: draining %d workers", signal.Signals(signum).name, workers
        )
        stopping.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        _start_metrics(config, metrics_directory)
        processes = [
            _start_worker(worker_config, number, log_format, log_level)
            for number in range(workers)
        ]
        logger.info("started %d workers on %s", workers, config.listen)
        try:
            _keep_running(processes, worker_config, stopping, log_format, log_level)
        finally:
            _drain(processes, config.grace_seconds)
    finally:
        shutil.rmtree(metrics_directory, ignore_errors=True)


def _start_metrics(config: ServerConfig, metrics_directory: str) -> None:
    if config.metrics_port is None:
        return
    from prometheus_client import CollectorRegistry, start_http_server

    from hashcheck_server.metrics import MultiProcessMetrics

    registry = CollectorRegistry()
    registry.register(MultiProcessMetrics(metrics_directory))
    start_http_server(
        config.metrics_port, addr=config.metrics_listen, registry=registry
    )


def _start_worker(
    config: ServerConfig, number: int, log_format: str, log_level: str
) -> BaseProcess:
    context = multiprocessing.get_context("spawn")
    process = context.Process(
        target=_run_worker,
        args=(config, log_format, log_level),
        name=f"hashcheck-worker-{number}",
    )
    process.start()
    return process


def _run_worker(config: ServerConfig, log_format: str, log_level: str) -> None:
    configure_logging(log_format, log_level)
    try:
        serve_until_signalled(config)
    except HashCheckError as error:
        # One line, not a traceback: the supervisor says what happens next.
        logger.error("worker cannot serve: %s", error)
        sys.exit(_EXIT_CANNOT_SERVE)


def _keep_running(
    processes: list[BaseProcess],
    config: ServerConfig,
    stopping: threading.Event,
    log_format: str,
    log_level: str,
) -> None:
    """Restart workers that die, until asked to stop.

    A worker that dies within its first seconds counts as a failed start;
    after a few in a row the supervisor gives up with an error instead of
    restarting workers forever that cannot serve (a damaged data directory,
    say), so that the operator sees why and an orchestrator sees the exit.
    """
    started = [time.monotonic()] * len(processes)
    failed_starts = 0
    while not stopping.wait(0.2):
        for number, process in enumerate(processes):
            if process.is_alive():
                if time.monotonic() - started[number] > _STARTUP_SECONDS:
                    failed_starts = 0
                continue
            _mark_dead(process)
            if time.monotonic() - started[number] <= _STARTUP_SECONDS:
                failed_starts += 1
            if failed_starts >= _FAILED_STARTS_LIMIT:
                raise HashCheckError(
                    f"Workers failed {failed_starts} times in a row within "
                    f"{_STARTUP_SECONDS:.0f} s of starting (the last exited with "
                    f"{process.exitcode}); giving up. Their log lines say why."
                )
            logger.error(
                "worker %d (pid %s) exited with %s; starting it again",
                number,
                process.pid,
                process.exitcode,
            )
            time.sleep(_RESTART_PAUSE_SECONDS)
            processes[number] = _start_worker(config, number, log_format, log_level)
            started[number] = time.monotonic()


def _mark_dead(process: BaseProcess) -> None:
    """Tell the metrics that a dead worker's live gauges no longer count."""
    if process.pid is None:
        return
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(process.pid)  # type: ignore[no-untyped-call]


def _drain(processes: list[BaseProcess], grace_seconds: float) -> None:
    for process in processes:
        if process.is_alive() and process.pid is not None:
            os.kill(process.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_seconds + 5
    for process in processes:
        process.join(max(0.0, deadline - time.monotonic()))
        if process.is_alive():
            logger.error("worker pid %s did not drain in time; killing it", process.pid)
            process.kill()
            process.join()
    logger.info("all workers stopped")
