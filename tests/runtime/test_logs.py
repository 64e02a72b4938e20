"""The logging helper."""

from __future__ import annotations

import io
import json
import logging

import pytest

from quicflow.logs import configure_logging


def test_json_lines_carry_level_logger_message_and_client_id(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Check that QUICFLOW_LOG_FORMAT=json writes one JSON object per record with extras."""
    monkeypatch.setenv("QUICFLOW_LOG_FORMAT", "json")
    monkeypatch.setenv("LOG_LEVEL", "warning")
    out = io.StringIO()
    handler = configure_logging(stream=out)
    try:
        log = logging.getLogger("quicflow.server")
        log.info("hidden at WARNING")
        log.warning("client %s left", "c1", extra={"client_id": "c1", "reason": "idle"})
        [line] = out.getvalue().splitlines()
        entry = json.loads(line)
        assert entry["level"] == "WARNING"
        assert entry["logger"] == "quicflow.server"
        assert entry["message"] == "client c1 left"
        assert (entry["client_id"], entry["reason"]) == ("c1", "idle")
    finally:
        logging.getLogger("quicflow").removeHandler(handler)
        logging.getLogger("quicflow").setLevel(logging.NOTSET)


def test_plain_format_and_a_bad_level(monkeypatch: pytest.MonkeyPatch) -> None:
    """Check that the plain format is one line per record and a bad LOG_LEVEL is refused."""
    monkeypatch.delenv("QUICFLOW_LOG_FORMAT", raising=False)
    out = io.StringIO()
    handler = configure_logging("DEBUG", stream=out)
    try:
        logging.getLogger("quicflow.client").debug("hello")
        assert out.getvalue() == "DEBUG quicflow.client: hello\n"
    finally:
        logging.getLogger("quicflow").removeHandler(handler)
        logging.getLogger("quicflow").setLevel(logging.NOTSET)
    with pytest.raises(ValueError, match="LOG_LEVEL"):
        configure_logging("LOUD")
