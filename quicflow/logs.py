"""Logging: the standard `logging` module, under the ``quicflow`` logger tree.

QuicFlow never configures logging on import. `configure_logging` is a
convenience for programs (the CLI and the examples use it):

* the level comes from the ``LOG_LEVEL`` environment variable (DEBUG, INFO,
  WARNING, ERROR; default INFO) unless given;
* ``QUICFLOW_LOG_FORMAT=json`` (or ``json=True``) writes one JSON object per
  line for log shippers: ``ts``, ``level``, ``logger``, ``message`` and any
  ``client_id`` / ``reason`` passed in ``extra``.

What is logged: each connection event (connect, disconnect with its reason,
eviction, refusal) once at INFO with the client id, up to 20 a second (a
server sums up the rest of that second in one line:
``quicflow.server.CONNECTION_LOG_BURST``); errors at WARNING or
ERROR; nothing per call at INFO (per-call detail is DEBUG). aioquic's own
``quic`` logger is set to WARNING, since it logs every connection at INFO.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from typing import TextIO

__all__ = ["JsonFormatter", "configure_logging"]

_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


class JsonFormatter(logging.Formatter):
    """One JSON object per line."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in ("client_id", "reason"):
            value = getattr(record, key, None)
            if value is not None:
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def configure_logging(
    level: str | None = None, *, json_lines: bool | None = None, stream: TextIO | None = None
) -> logging.Handler:
    """Send the ``quicflow`` loggers to ``stream`` (stderr) at ``level`` (``LOG_LEVEL``).

    Returns the handler it installed (replacing one it installed before).

    Raises:
        ValueError: the level is not one of DEBUG, INFO, WARNING, ERROR, CRITICAL.
    """
    name = (level or os.environ.get("LOG_LEVEL") or "INFO").upper()
    if name not in _LEVELS:
        raise ValueError(f"LOG_LEVEL must be one of {', '.join(_LEVELS)}, got {name!r}")
    if json_lines is None:
        json_lines = os.environ.get("QUICFLOW_LOG_FORMAT", "").lower() == "json"
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(
        JsonFormatter() if json_lines else logging.Formatter("%(levelname)s %(name)s: %(message)s")
    )
    handler.set_name("quicflow")
    root = logging.getLogger("quicflow")
    for old in [h for h in root.handlers if h.get_name() == "quicflow"]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(name)
    logging.getLogger("quic").setLevel(logging.WARNING)
    return handler
