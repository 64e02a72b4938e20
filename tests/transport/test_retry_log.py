"""The server endpoint's automatic Retry (``retry_threshold``) says when it turns on and
off once per episode, not each time the handshakes in progress cross the threshold."""

from __future__ import annotations

import logging
from typing import cast

import pytest
from aioquic.quic.configuration import QuicConfiguration

from quicflow.transport import QuicFlowProtocol, TransportSettings
from quicflow.transport.server_endpoint import QuicFlowServer

THRESHOLD = 10


def _handshaking(endpoint: QuicFlowServer, count: int) -> bool:
    """Set ``count`` handshakes in progress; whether a new connection must pass a Retry."""
    endpoint._handshaking = {cast(QuicFlowProtocol, object()) for _ in range(count)}
    return endpoint._must_validate()


def test_automatic_retry_is_logged_once_on_and_once_off_per_episode(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Check that a count hovering around retry_threshold logs one warning when Retry
    turns on and one line, with the Retries sent, once the count falls below half the
    threshold; that which connections must pass a Retry still follows the threshold alone;
    and that a later episode is logged again."""
    endpoint = QuicFlowServer(
        QuicConfiguration(is_client=False),
        TransportSettings(),
        lambda _p: None,
        retry_threshold=THRESHOLD,
    )
    caplog.set_level(logging.INFO, logger="quicflow.transport")
    hovering = [10, 9, 11, 9, 10, 8, 12, 6, 10, 5]
    assert [_handshaking(endpoint, n) for n in hovering] == [n >= THRESHOLD for n in hovering]
    endpoint.retries_sent += 7
    assert _handshaking(endpoint, 4) is False  # below half: the episode ends
    assert _handshaking(endpoint, 9) is False
    assert _handshaking(endpoint, 10) is True  # a new episode
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        (
            "WARNING",
            "10 handshakes in progress (retry_threshold 10): new connections must validate "
            "their address with a QUIC Retry first",
        ),
        (
            "INFO",
            "4 handshakes in progress, below half of retry_threshold 10: automatic Retry "
            "off again (7 Retries sent)",
        ),
        (
            "WARNING",
            "10 handshakes in progress (retry_threshold 10): new connections must validate "
            "their address with a QUIC Retry first",
        ),
    ]
