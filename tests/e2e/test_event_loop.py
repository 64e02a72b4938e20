"""QuicFlow's own entry points run on uvloop when it is installed (the ``fast`` extra;
`make test` installs it with the ``dev`` extra)."""

from __future__ import annotations

import asyncio

import pytest
from echo.echo_pb2 import EchoRequest
from echo.echo_quicflow import EchoStub

import quicflow
from quicflow.testing import ClientFor

from .service import TestEcho


def test_quicflow_run_serves_and_calls_on_uvloop() -> None:
    """Check that quicflow.run (event_loop "auto") runs a real server and client on uvloop
    and a call completes there."""
    uvloop = pytest.importorskip("uvloop")

    async def main() -> tuple[asyncio.AbstractEventLoop, str]:
        async with ClientFor([TestEcho()]) as client:
            reply = await EchoStub(client).say(EchoRequest(text="on uvloop"), timeout=10)
            return asyncio.get_running_loop(), reply.text

    loop, text = quicflow.run(main())
    assert isinstance(loop, uvloop.Loop)
    assert text == "on uvloop"
