"""Logging set-up for the server's entry point: JSON lines or plain text.

Only the `hashcheck-server` entry point calls this; library modules just get
their logger. JSON is chosen automatically when standard error is not a
terminal (a container, a service manager), so log collectors get one parsable
object per event.
"""

from __future__ import annotations

import json
import logging
import sys
import time

__all__ = ["configure_logging"]


#: Attributes every LogRecord has; anything else came in `extra=` and is a field.
_RECORD_ATTRIBUTES = frozenset(
    logging.LogRecord("", 0, "", 0, "", None, None).__dict__
) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time, level, logger, message, and any traceback.

    Fields passed as `extra=` (such as `event`, which names operator events:
    `server_started`, `configuration`, `generation_switch`, `call_refused`,
    `import_finished`) are added to the object, so collectors can select
    events without parsing messages.
    """

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "process": record.process,
        }
        for name, value in record.__dict__.items():
            if name not in _RECORD_ATTRIBUTES and name not in entry:
                entry[name] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_logging(log_format: str = "auto", level: str = "INFO") -> None:
    """Send all logs to standard error in the chosen format."""
    if log_format == "auto":
        log_format = "text" if sys.stderr.isatty() else "json"
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
        )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
