"""In-process cluster nodes for tests: a `Server` per node on one NATS, clients with an Inbox."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from echo.echo_pb2 import EchoReply, EchoRequest
from echo.echo_quicflow import EchoBase
from notify.notify_pb2 import Ack, Event
from notify.notify_quicflow import NotifyBase

from quicflow import (
    Client,
    ClientConfig,
    RpcError,
    Server,
    ServerConfig,
    ServicerContext,
    StatusCode,
)
from quicflow.testing import dev_certs


class Inbox(NotifyBase):
    """A client's Notify service: records events, answers with an Ack naming the client."""

    def __init__(self, client_id: str) -> None:
        self.client_id = client_id
        self.events: list[Event] = []
        self.message_ids: list[str | None] = []

    async def deliver(self, request: Event, context: ServicerContext) -> Ack:
        self.events.append(request)
        self.message_ids.append(context.message_id)
        if request.topic == "fail":
            await context.abort(StatusCode.FAILED_PRECONDITION, f"{self.client_id} refuses")
        if request.delay_ms:
            await asyncio.sleep(request.delay_ms / 1000)
        return Ack(client_id=self.client_id, seq=request.seq)

    async def feed(self, requests: AsyncIterator[Event], context: ServicerContext) -> Ack:
        return Ack(client_id=self.client_id, seq=sum([e.seq async for e in requests]))


def node_config(urls: tuple[str, ...], node_id: str, **overrides: Any) -> ServerConfig:
    """A node's config: loopback, dev certificates, a fast liveness bound."""
    certs = dev_certs()
    values: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": 0,
        "cert_file": str(certs.cert_file),
        "key_file": str(certs.key_file),
        "cluster_nats_urls": urls,
        "cluster_name": "t",
        "cluster_node_id": node_id,
        "cluster_node_refresh": 0.2,
        "cluster_node_ttl": 1.0,
        "push_timeout": 5.0,
    }
    values.update(overrides)
    return ServerConfig(**values)


async def start_node(urls: tuple[str, ...], node_id: str, **overrides: Any) -> Server:
    """Start one node and wait until its registry mirror is in sync."""
    server = Server(node_config(urls, node_id, **overrides))
    await server.start()
    return server


@asynccontextmanager
async def node_pair(
    urls: tuple[str, ...], **overrides: Any
) -> AsyncIterator[tuple[Server, Server]]:
    """Nodes "a" and "b" of cluster "t" (both with ``overrides``), stopped when the block ends."""
    a = await start_node(urls, "a", **overrides)
    b = await start_node(urls, "b", **overrides)
    try:
        yield a, b
    finally:
        await a.stop()
        await b.stop()


def registered(server: Server, client_id: str, node: str) -> bool:
    """Whether ``server`` lists ``client_id`` as connected to ``node``."""
    return any(i.client_id == client_id and i.node == node for i in server.list_clients())


def client_config(port: int | list[int], client_id: str, **overrides: Any) -> ClientConfig:
    """A client of the node(s) on ``port``, fast to notice a dead server."""
    certs = dev_certs()
    ports = [port] if isinstance(port, int) else port
    values: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": ports[0],
        "ca_file": str(certs.ca_file),
        "server_name": "localhost",
        "client_id": client_id,
        "backoff_initial": 0.05,
        "backoff_max": 0.2,
    }
    values.update(overrides)
    return ClientConfig(**values)


async def connect(port: int, client_id: str, **overrides: Any) -> tuple[Client, Inbox]:
    """Connect a client with an Inbox to the node on ``port``."""
    inbox = Inbox(client_id)
    client = Client(client_config(port, client_id, **overrides))
    client.add_service(inbox)
    await client.connect()
    return client, inbox


async def until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    """Wait (polling every 10 ms) until ``predicate()`` holds, or fail after ``timeout``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(0.01)


class StreamEcho(EchoBase):
    """A client's Echo service for routed streams: records what it saw.

    ``stream`` yields ``repeat`` replies (``delay_ms`` apart); ``collect`` joins the
    texts; ``chat`` upper-cases each request (``stop`` fails FAILED_PRECONDITION).
    """

    def __init__(self) -> None:
        self.yielded = 0
        self.received: list[str] = []
        self.cancelled = asyncio.Event()
        self.metadata: tuple[tuple[str, str | bytes], ...] = ()
        self.time_remaining: float | None = None

    async def stream(
        self, request: EchoRequest, context: ServicerContext
    ) -> AsyncIterator[EchoReply]:
        self.metadata = tuple(context.invocation_metadata())
        self.time_remaining = context.time_remaining()
        await context.send_initial_metadata([("from", "client")])
        try:
            for i in range(request.repeat):
                if request.delay_ms:
                    await asyncio.sleep(request.delay_ms / 1000)
                yield EchoReply(text=request.text, index=i)
                self.yielded = i + 1
        except asyncio.CancelledError:
            self.cancelled.set()
            raise
        context.set_trailing_metadata([("count", str(request.repeat))])

    async def collect(
        self, requests: AsyncIterator[EchoRequest], context: ServicerContext
    ) -> EchoReply:
        try:
            async for request in requests:
                self.received.append(request.text)
        except asyncio.CancelledError:
            self.cancelled.set()
            raise
        return EchoReply(text=",".join(self.received))

    async def chat(
        self, requests: AsyncIterator[EchoRequest], context: ServicerContext
    ) -> AsyncIterator[EchoReply]:
        i = 0
        try:
            async for request in requests:
                self.received.append(request.text)
                if request.text == "stop":
                    raise RpcError(StatusCode.FAILED_PRECONDITION, "told to stop")
                yield EchoReply(text=request.text.upper(), index=i)
                i += 1
        except asyncio.CancelledError:
            self.cancelled.set()
            raise
