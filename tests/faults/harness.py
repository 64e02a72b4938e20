"""A real server, a chaos proxy in front of it, and clients that go through the proxy."""

from __future__ import annotations

import asyncio
import hashlib
import random
import statistics
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import replace
from typing import Any, Protocol

from echo.echo_pb2 import EchoReply, EchoRequest
from echo.echo_quicflow import EchoBase

from quicflow import Client, ClientConfig, Server, ServerConfig, ServicerContext
from quicflow.chaos import ChaosProxy, Faults
from quicflow.testing import dev_certs

CHUNK = 64 << 10


class Figures(Protocol):
    """The ``figures`` fixture of tests/conftest.py (its type, for annotations)."""

    def add(self, name: str, value: float | str, unit: str = "") -> None:
        """Record (and print) one figure for `make chaos`'s table."""


def chunk(seed: int, index: int, size: int = CHUNK) -> bytes:
    """Deterministic pseudo-random bytes, so both ends can hash what should arrive."""
    return random.Random(seed * 1_000_003 + index).randbytes(size)


def expected_digest(seed: int, chunks: int) -> str:
    """The SHA-256 of ``chunks`` chunks of ``seed``."""
    h = hashlib.sha256()
    for i in range(chunks):
        h.update(chunk(seed, i))
    return h.hexdigest()


class CountingEcho(EchoBase):
    """Echo that counts handler invocations per request text (the request id).

    ``stream`` sends ``repeat`` deterministic chunks (seed in ``delay_ms``);
    ``collect`` answers with the SHA-256 of every payload it received.
    """

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()
        self.cancelled: Counter[str] = Counter()
        self.started = asyncio.Event()
        self._waiters: list[tuple[Callable[[], bool], asyncio.Future[None]]] = []

    async def wait_until(self, predicate: Callable[[], bool]) -> None:
        """Wait until ``predicate()`` holds (checked whenever a call starts or ends)."""
        if predicate():
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((predicate, waiter))
        try:
            await waiter
        finally:
            self._waiters = [w for w in self._waiters if w[1] is not waiter]

    def _changed(self) -> None:
        for predicate, waiter in self._waiters:
            if not waiter.done() and predicate():
                waiter.set_result(None)

    async def say(self, request: EchoRequest, context: ServicerContext) -> EchoReply:
        self.calls[request.text] += 1
        self.started.set()
        self._changed()
        try:
            if request.delay_ms:
                await asyncio.sleep(request.delay_ms / 1000)
        except asyncio.CancelledError:
            self.cancelled[request.text] += 1
            self._changed()
            raise
        return EchoReply(text=request.text, payload=request.payload)

    async def stream(
        self, request: EchoRequest, context: ServicerContext
    ) -> AsyncIterator[EchoReply]:
        self.calls[request.text] += 1
        for i in range(request.repeat):
            yield EchoReply(text=request.text, index=i, payload=chunk(request.delay_ms, i))

    async def collect(
        self, requests: AsyncIterator[EchoRequest], context: ServicerContext
    ) -> EchoReply:
        h = hashlib.sha256()
        n = 0
        async for request in requests:
            h.update(request.payload)
            n += 1
        return EchoReply(text=h.hexdigest(), index=n)


WAN: dict[str, Any] = {"max_datagram_size": 1200}


def server_config(**overrides: Any) -> ServerConfig:
    """A loopback `ServerConfig` with the test certificates."""
    certs = dev_certs()
    # The proxy stands for a real network path: use a real path's datagram size
    # ("auto" would pick loopback's 16 KiB, and a handful of big datagrams).
    overrides.setdefault("max_datagram_size", 1200)
    return ServerConfig(
        host="127.0.0.1",
        port=overrides.pop("port", 0),
        cert_file=str(certs.cert_file),
        key_file=str(certs.key_file),
        **overrides,
    )


def client_config(port: int, **overrides: Any) -> ClientConfig:
    """A `ClientConfig` for a server (or proxy) on loopback ``port``."""
    certs = dev_certs()
    base = ClientConfig(
        host="127.0.0.1",
        port=port,
        ca_file=str(certs.ca_file),
        server_name="localhost",
        max_datagram_size=1200,  # a real path's size, as in server_config
    )
    return replace(base, **overrides)


class ChaosPair:
    """Server + proxy (+ one client made by `connect`) for one test."""

    def __init__(
        self,
        faults: Faults | None = None,
        *,
        seed: int = 1,
        server: dict[str, Any] | None = None,
        client: dict[str, Any] | None = None,
    ) -> None:
        self.service = CountingEcho()
        # Lossy paths are WAN paths: 1200-byte datagrams, as QUIC uses to any peer that
        # is not on loopback (auto would pick 16 KiB here, since the proxy is local).
        self.server = Server(server_config(**{**WAN, **(server or {})}))
        self.server.add_service(self.service)
        self.faults = faults
        self.seed = seed
        self.client_options = {**WAN, **(client or {})}
        self.proxy: ChaosProxy | None = None
        self.clients: list[Client] = []

    def config(self, **overrides: Any) -> ClientConfig:
        """A client config pointing at the proxy."""
        assert self.proxy is not None
        return client_config(self.proxy.port, **{**self.client_options, **overrides})

    async def connect(self, **overrides: Any) -> Client:
        """A new client, connected through the proxy."""
        client = Client(self.config(**overrides))
        self.clients.append(client)
        await client.connect()
        return client

    async def __aenter__(self) -> ChaosPair:
        await self.server.start()
        self.proxy = ChaosProxy(("127.0.0.1", self.server.port), seed=self.seed)
        await self.proxy.start()
        if self.faults is not None:
            self.proxy.set_faults(self.faults)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.proxy is not None
        self.proxy.set_faults(Faults())  # let the closes through
        self.proxy.set_blackhole(False)
        await asyncio.gather(*(c.close() for c in self.clients), return_exceptions=True)
        await self.server.stop(grace=0.5)
        await self.proxy.close()


def percentile(values: Iterable[float], q: float) -> float:
    """The ``q``-th percentile (0-100) of ``values`` (inclusive method)."""
    data = sorted(values)
    if len(data) == 1:
        return data[0]
    return statistics.quantiles(data, n=100, method="inclusive")[int(q) - 1]
