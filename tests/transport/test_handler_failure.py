"""A stream handler that raises ends only its stream."""

from __future__ import annotations

import logging

import pytest
from echo.echo_pb2 import EchoRequest
from echo.echo_quicflow import EchoStub

from quicflow import ConnectionClosed, RpcError, StatusCode
from quicflow.testing import ClientFor
from tests.transport.listeners import CallsTo


class _Exploding:
    unread_bytes = 0

    def data_received(self, data: bytes, end_stream: bool) -> None:
        raise RuntimeError("handler bug")

    def stream_reset(self, error_code: int) -> None:
        pass

    def stop_sending(self, error_code: int) -> None:
        pass

    def connection_lost(self, exc: ConnectionClosed) -> None:
        pass


async def test_a_raising_stream_handler_resets_its_stream_only(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Check that an exception in a stream handler resets that stream with INTERNAL_ERROR,
    is logged, and leaves the connection serving other calls."""
    harness = ClientFor([])
    async with harness as client:
        [server_conn] = harness.server.connections
        CallsTo(server_conn, lambda stream_id: _Exploding())
        with (
            caplog.at_level(logging.ERROR, logger="quicflow.transport"),
            pytest.raises(RpcError) as info,
        ):
            await EchoStub(client).say(EchoRequest(text="boom"), timeout=2)
        assert info.value.code is StatusCode.INTERNAL
        assert "handler bug" in caplog.text
        assert client.connected and not server_conn.is_closed
