"""Refused calls: counted by reason, and logged without flooding the log.

A refused call is one the servicer ended with an error status (a bad batch, no
generation yet, a failure of ours, or a refusal by the access layer). Each is
counted in `hashcheck_refused_calls_total{reason}`, the reason being the gRPC
status code in snake case, so the label stays small and bounded.

An operator wants to see refusals in the log, but a misbehaving client can
send thousands a second. So the first refusal of a reason is logged at once,
and later ones at most once per interval per reason, as one line that says
how many were refused since the last. The message logged is the one the
caller got, which never holds a checked hash.
"""

from __future__ import annotations

import logging
import threading
import time

import grpc

from hashcheck_server.metrics import ServerMetrics

__all__ = ["RefusalRecorder"]

logger = logging.getLogger(__name__)


class RefusalRecorder:
    """Counts every refused call and logs a sample of them.

    recorder = RefusalRecorder(metrics)
    recorder.record("Check", grpc.StatusCode.INVALID_ARGUMENT, "The batch is ...")
    """

    def __init__(self, metrics: ServerMetrics, interval_seconds: float = 10.0) -> None:
        self._metrics = metrics
        self._interval_seconds = interval_seconds
        self._lock = threading.Lock()
        self._last_logged: dict[str, float] = {}
        self._unlogged: dict[str, int] = {}

    def record(self, method: str, code: grpc.StatusCode, message: str) -> None:
        reason = code.name.lower()
        self._metrics.refused_calls.labels(reason).inc()

        now = time.monotonic()
        with self._lock:
            last = self._last_logged.get(reason)
            if last is not None and now - last < self._interval_seconds:
                self._unlogged[reason] = self._unlogged.get(reason, 0) + 1
                return
            self._last_logged[reason] = now
            also = self._unlogged.pop(reason, 0)
        logger.info(
            "refused %s: %s (%s)%s",
            method,
            reason,
            message,
            f"; {also} more refused so since the last such line" if also else "",
            extra={"event": "call_refused", "reason": reason, "method": method},
        )
