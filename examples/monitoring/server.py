"""A complete QuicFlow server with everything on, until Ctrl-C (or SIGTERM, or --duration).

Connections with token authentication and heartbeats, the Echo service and an
untyped-message handler, server push (a welcome pushed to each client as it
connects, and a broadcast every few seconds), hooks for every connection event,
metrics with a Prometheus endpoint and the status page::

    PYTHONPATH=generated python -m examples.monitoring.server --certs certs
    # then: curl http://127.0.0.1:9464/metrics, or open http://127.0.0.1:9464/

Run ``python -m examples.monitoring.client`` against it. Settings the flags and the
code leave open come from QUICFLOW_SERVER_<FIELD> environment variables, as for any
server (`ServerConfig.load`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
from pathlib import Path
from typing import Any

from echo.echo_pb2 import EchoReply, EchoRequest
from notify.notify_pb2 import Ack, Event
from notify.notify_quicflow import NotifyStub

import quicflow
from quicflow import (
    ClientInfo,
    RpcError,
    Server,
    ServerConfig,
    ServicerContext,
    StatusCode,
    TokenAuthenticator,
)
from quicflow.certs import write_dev_certs
from quicflow.dispatch import Message
from quicflow.logs import configure_logging
from quicflow.push import ClientChannel

from ..echo.service import Echo

TOKEN = "demo-token"
"""The one token this server accepts (any client id may use it)."""


class Greeter(Echo):
    """Echo, except that an empty ``say`` is refused with INVALID_ARGUMENT."""

    async def say(self, request: EchoRequest, context: ServicerContext) -> EchoReply:
        """Answer, or refuse an empty text."""
        if not request.text:
            raise RpcError(StatusCode.INVALID_ARGUMENT, "text must not be empty")
        return EchoReply(text=request.text)


def build(
    certs: Path,
    *,
    host: str | None = None,
    port: int | None = None,
    metrics_port: int | None = 9464,
) -> Server:
    """A server with every feature on (not started yet). Fields not set here come from
    QUICFLOW_SERVER_* environment variables, as for any server (`ServerConfig.load`);
    ``host`` and ``port`` too, when None (default 127.0.0.1:4433)."""
    if not (certs / "server.pem").exists():
        write_dev_certs(certs)
    address: dict[str, Any] = {"host": host, "port": port}
    server = Server(
        ServerConfig.load(
            **{name: value for name, value in address.items() if value is not None},
            cert_file=str(certs / "server.pem"),
            key_file=str(certs / "server.key"),
            authenticator=TokenAuthenticator({TOKEN: None}),
            heartbeat_interval=5.0,
            heartbeat_check_interval=1.0,
            metrics=True,
            metrics_port=metrics_port,
        )
    )
    server.add_service(Greeter())

    def on_chat(message: Message) -> bytes:
        return b"got " + message.payload

    server.register_handler("chat", on_chat)

    def welcome(info: ClientInfo) -> None:
        print(f"[server] {info.client_id} connected from {info.remote_address}", flush=True)

        async def push(channel: ClientChannel) -> Ack:
            return await NotifyStub(channel).deliver(Event(topic="welcome", text="hello", seq=0))

        with contextlib.suppress(RpcError):  # the client may already be gone
            server.async_send(info.client_id, push, timeout=5.0)

    server.hooks.on_connect(welcome)
    server.hooks.on_disconnect(
        lambda info, reason: print(f"[server] {info.client_id} left: {reason}", flush=True)
    )
    server.hooks.on_heartbeat_timeout(
        lambda info: print(f"[server] {info.client_id} missed its heartbeats", flush=True)
    )
    return server


async def broadcast_ticks(server: Server, every: float) -> None:
    """Broadcast a numbered tick to every client every ``every`` seconds."""
    seq = 0
    while True:
        await asyncio.sleep(every)
        seq += 1
        tick = Event(topic="tick", seq=seq)

        async def send(channel: ClientChannel, tick: Event = tick) -> Ack:
            return await NotifyStub(channel).deliver(tick)

        result = await server.broadcast(send, client_timeout=2.0)
        if len(result):
            print(f"[server] tick {seq}: {result!r}", flush=True)


async def serve(
    certs: Path, host: str | None, port: int | None, metrics_port: int, duration: float
) -> None:
    """Serve until a signal (or ``duration`` seconds, when > 0)."""
    server = build(certs, host=host, port=port, metrics_port=metrics_port)
    await server.start()
    host = server.config.host
    print(f"[server] listening on {host}:{server.port} (QUIC)", flush=True)
    print(f"[server] status page: http://{host}:{server.metrics_port}/", flush=True)
    print(f"[server] prometheus:  http://{host}:{server.metrics_port}/metrics", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    if duration > 0:
        loop.call_later(duration, stop.set)
    ticker = loop.create_task(broadcast_ticks(server, 3.0))
    await stop.wait()
    ticker.cancel()
    snap = server.get_metrics()
    print(
        f"[server] stopping: {snap.connects} connects, {snap.handled_latency.count} calls "
        f"handled, {snap.made_latency.count} pushes",
        flush=True,
    )
    await server.stop(grace=2.0)


def main() -> None:
    """Parse arguments and serve."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="UDP port (default 4433; 0: a free one)")
    parser.add_argument("--metrics-port", type=int, default=9464, help="0: any free port")
    parser.add_argument("--certs", type=Path, default=Path("certs"))
    parser.add_argument("--duration", type=float, default=0.0, help="stop after this long")
    args = parser.parse_args()
    configure_logging()  # LOG_LEVEL (default INFO); QUICFLOW_LOG_FORMAT=json for JSON lines
    quicflow.run(serve(args.certs, args.host, args.port, args.metrics_port, args.duration))


if __name__ == "__main__":
    main()
