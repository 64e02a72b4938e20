"""A complete QuicFlow client with everything on: it calls, receives pushes, and reports.

Connects with a token and heartbeats, serves the Notify service so the server
can push to it, makes unary and streaming calls (one refused on purpose),
sends an untyped message, and prints what its hooks and metrics saw::

    PYTHONPATH=generated python -m examples.monitoring.client --certs certs --id kitchen
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

from echo.echo_pb2 import EchoRequest
from echo.echo_quicflow import EchoStub
from notify.notify_pb2 import Ack, Event
from notify.notify_quicflow import NotifyBase

import quicflow
from quicflow import Client, ClientConfig, MetricsSnapshot, RpcError, ServicerContext
from quicflow.logs import configure_logging

from .server import TOKEN


class Inbox(NotifyBase):
    """What the server pushes to this client."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.events: list[Event] = []
        self.welcomed = asyncio.Event()

    async def deliver(self, request: Event, context: ServicerContext) -> Ack:
        """Acknowledge one pushed event."""
        self.events.append(request)
        if request.topic == "welcome":
            self.welcomed.set()
        return Ack(client_id=self.name, seq=request.seq, note=f"{self.name} saw {request.topic}")

    async def feed(self, requests: AsyncIterator[Event], context: ServicerContext) -> Ack:
        """Acknowledge a stream of events at once."""
        return Ack(client_id=self.name, seq=sum([e.seq async for e in requests]))


def config(host: str, port: int, certs: Path, client_id: str) -> ClientConfig:
    """This client's configuration: token, labels, heartbeats, reconnects, metrics."""
    return ClientConfig(
        host=host,
        port=port,
        ca_file=str(certs / "ca.pem"),
        server_name="localhost",
        client_id=client_id,
        token=TOKEN,
        labels={"example": "monitoring"},
        heartbeat_interval=5.0,
        backoff_initial=0.5,
        default_timeout=5.0,
        metrics=True,
    )


async def run(
    host: str, port: int, certs: Path, client_id: str, calls: int = 10
) -> MetricsSnapshot:
    """Connect, call, take pushes, and return this client's metrics."""
    client = Client(config(host, port, certs, client_id))
    inbox = Inbox(client_id)
    client.add_service(inbox)
    client.hooks.on_connect(lambda cid: print(f"[{cid}] connected", flush=True))
    client.hooks.on_disconnect(lambda reason: print(f"[{client_id}] lost: {reason}", flush=True))
    client.hooks.on_reconnect(
        lambda attempt, delay: print(f"[{client_id}] reconnect #{attempt} in {delay:.1f} s")
    )
    client.hooks.on_heartbeat_timeout(lambda: print(f"[{client_id}] heartbeat timed out"))
    async with client:
        stub = EchoStub(client)
        for i in range(calls):
            await stub.say(EchoRequest(text=f"{client_id} #{i}"))
        try:
            await stub.say(EchoRequest(text=""))
        except RpcError as exc:
            print(f"[{client_id}] refused as expected: {exc.code.name}", flush=True)
        replies = [r.index async for r in stub.stream(EchoRequest(text="x", repeat=3))]
        assert replies == [0, 1, 2]
        ack = await client.send_message("chat", b"hi")
        print(f"[{client_id}] chat ack: {ack!r}", flush=True)
        await asyncio.wait_for(inbox.welcomed.wait(), 5.0)
        print(f"[{client_id}] pushed to me: {[e.topic for e in inbox.events]}", flush=True)
        return client.get_metrics()


def report(client_id: str, snap: MetricsSnapshot) -> None:
    """Print a client's metrics in a few lines."""
    say = snap.made["/echo.Echo/Say"]
    p50 = say.latency.p50 or 0.0
    p99 = say.latency.p99 or 0.0
    print(
        f"[{client_id}] Say: {say.started} calls {dict(say.finished)}, "
        f"p50 {p50 * 1000:.2f} ms, p99 {p99 * 1000:.2f} ms; "
        f"{snap.handled_latency.count} pushes handled",
        flush=True,
    )


def main() -> None:
    """Parse arguments and run."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=4433)
    parser.add_argument("--certs", type=Path, default=Path("certs"))
    parser.add_argument("--id", default="kitchen", help="the client id to claim")
    parser.add_argument("--calls", type=int, default=10)
    args = parser.parse_args()
    configure_logging("WARNING")
    snap = quicflow.run(run(args.host, args.port, args.certs, args.id, args.calls))
    report(args.id, snap)


if __name__ == "__main__":
    main()
