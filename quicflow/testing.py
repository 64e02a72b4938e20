"""Test helpers: a real server and a connected client in a few lines.

`ClientFor` starts a real `Server` on 127.0.0.1 (port 0) with throwaway
certificates and connects a real `Client` to it, over real QUIC and TLS 1.3,
so your tests exercise exactly what production runs (no mocks)::

    from quicflow.testing import ClientFor

    async def test_say() -> None:
        async with ClientFor([MyEcho()]) as client:
            reply = await EchoStub(client).say(EchoRequest(text="hi"))
            assert reply.text == "hi"

`ChaosProxy` (from `quicflow.chaos`) sits between a client and a server and
drops, delays, reorders, duplicates and corrupts datagrams on purpose, so
you can test your own service under loss (docs/reliability.md).
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from .certs import DevCerts, write_dev_certs
from .chaos import ChaosProxy, Faults, GilbertElliott
from .client import Client
from .clock import Clock, FakeClock
from .config import ClientConfig, ServerConfig
from .rpc import Service
from .server import Server

__all__ = ["ChaosProxy", "ClientFor", "FakeClock", "Faults", "GilbertElliott", "dev_certs"]

_certs: DevCerts | None = None


def dev_certs() -> DevCerts:
    """Throwaway CA and server/client certificates, made once per process.

    They live in a temporary directory removed at exit.
    """
    global _certs
    if _certs is None:
        directory = tempfile.mkdtemp(prefix="quicflow-certs-")
        atexit.register(shutil.rmtree, directory, True)
        _certs = write_dev_certs(Path(directory))
    return _certs


class ClientFor:
    """Serve ``services`` on loopback and yield a connected `Client`.

    ``server_options`` and ``client_options`` override `ServerConfig` and
    `ClientConfig` fields (e.g. ``max_message_size``). The server is
    available as ``.server`` while the block runs; both are stopped at exit.
    With ``clock`` (a `FakeClock`), the runtime timers of the server and of the
    clients made by `client` (heartbeats, evictions, deadlines, timeouts,
    backoff) run on it, and move only when it is advanced; QUIC's own timers
    stay on the event loop.
    """

    def __init__(
        self,
        services: Sequence[Service],
        *,
        server_options: dict[str, Any] | None = None,
        client_options: dict[str, Any] | None = None,
        clock: Clock | None = None,
    ) -> None:
        certs = dev_certs()
        self.certs = certs
        self.clock = clock
        self.server = Server(
            ServerConfig(
                host="127.0.0.1",
                port=0,
                cert_file=str(certs.cert_file),
                key_file=str(certs.key_file),
                **(server_options or {}),
            ),
            clock=clock,
        )
        for service in services:
            self.server.add_service(service)
        self._client_options = client_options or {}
        self.client: Client | None = None

    def client_config(self, **overrides: Any) -> ClientConfig:
        """A `ClientConfig` for this server (call it inside the block)."""
        base = ClientConfig(
            host="127.0.0.1",
            port=self.server.port,
            ca_file=str(self.certs.ca_file),
            server_name="localhost",
            **self._client_options,
        )
        return replace(base, **overrides) if overrides else base

    def new_client(self, **overrides: Any) -> Client:
        """A (not yet connected) `Client` of this server, on the harness's clock."""
        return Client(self.client_config(**overrides), clock=self.clock)

    async def __aenter__(self) -> Client:
        await self.server.start()
        try:
            self.client = self.new_client()
            await self.client.connect()
        except BaseException:
            await self.server.stop()
            raise
        return self.client

    async def __aexit__(self, *exc: object) -> None:
        try:
            if self.client is not None:
                await self.client.close()
        finally:
            await self.server.stop()
