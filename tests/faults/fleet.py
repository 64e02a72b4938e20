"""A process hosting many QuicFlow clients, for the process-fault tests.

Run as ``python tests/faults/fleet.py --port P --count N --prefix h0 ...`` with the
repository and ``generated/`` on PYTHONPATH. It connects ``count`` clients (ids
``<prefix>-<i>``), each serving Echo for pushes (``say`` answers
``text@client-id`` after ``delay_ms``). With ``--call-every`` each client also
calls the server that often, and keeps one long call pending. It writes JSON lines
to stdout: ``ready`` once all are connected, ``all_lost`` once every client has
lost its connection at least once, ``all_back`` once every such client is
CONNECTED again, and on a ``stop`` line (or end of stdin) a ``summary``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections import Counter
from dataclasses import replace
from typing import Any

from echo.echo_pb2 import EchoReply, EchoRequest
from echo.echo_quicflow import EchoBase, EchoStub

from quicflow import Client, ClientConfig, ConnectionClosed, RpcError, ServicerContext
from quicflow.client import ClientState


class PushEcho(EchoBase):
    """What the server reaches by push: answers ``text@id`` after ``delay_ms``."""

    def __init__(self, client_id: str) -> None:
        self.client_id = client_id

    async def say(self, request: EchoRequest, context: ServicerContext) -> EchoReply:
        if request.delay_ms:
            await asyncio.sleep(request.delay_ms / 1000)
        return EchoReply(text=f"{request.text}@{self.client_id}")


def emit(event: str, **fields: Any) -> None:
    """One JSON line on stdout."""
    print(json.dumps({"event": event, **fields}), flush=True)


class Member:
    """One client of the fleet and what it observed."""

    def __init__(self, config: ClientConfig) -> None:
        assert config.client_id is not None
        self.id = config.client_id
        self.client = Client(config)
        self.client.add_service(PushEcho(self.id))
        self.lost_at: float | None = None
        self.back_at: float | None = None
        self.ok = 0
        self.wrong = 0
        self.errors: Counter[str] = Counter()
        self.pending: tuple[float, str] | None = None  # (failed at, code)
        self.client.hooks.on_state_change(self._state)

    def _state(self, old: ClientState, new: ClientState) -> None:
        now = time.time()
        if new is ClientState.RECONNECTING and self.lost_at is None:
            self.lost_at = now
        if new is ClientState.CONNECTED and self.lost_at is not None and self.back_at is None:
            self.back_at = now

    async def call_loop(self, every: float, stop: asyncio.Event) -> None:
        stub = EchoStub(self.client)
        i = 0
        while not stop.is_set():
            text = f"{self.id}#{i}"
            i += 1
            try:
                reply = await stub.say(EchoRequest(text=text), timeout=2.0)
            except RpcError as exc:
                self.errors[exc.code.name] += 1
            else:
                if reply.text == text:
                    self.ok += 1
                else:
                    self.wrong += 1  # a false success: someone else's reply
            await asyncio.sleep(every)

    async def pending_call(self) -> None:
        try:
            await EchoStub(self.client).say(
                EchoRequest(text=f"{self.id}-pending", delay_ms=600_000), timeout=900.0
            )
        except RpcError as exc:
            self.pending = (time.time(), exc.code.name)
        else:
            self.pending = (time.time(), "OK")


async def run(args: argparse.Namespace) -> None:
    base = ClientConfig(
        host="127.0.0.1",
        port=args.port,
        ca_file=args.ca,
        server_name="localhost",
        heartbeat_interval=args.hb_interval,
        heartbeat_timeout=args.hb_timeout,
        backoff_initial=args.backoff_initial,
        backoff_max=args.backoff_max,
        connect_timeout=args.connect_timeout,
    )
    members = [Member(replace(base, client_id=f"{args.prefix}-{i}")) for i in range(args.count)]
    gate = asyncio.Semaphore(8)

    async def connect(m: Member) -> None:
        # Setting up the fleet is not under test: a handshake that misses its timeout
        # on a busy machine is tried again (a Client connects once per connect()).
        async with gate:
            for attempt in range(5):
                try:
                    await m.client.connect()
                    return
                except ConnectionClosed:
                    m.client = Client(m.client.config)
                    m.client.add_service(PushEcho(m.id))
                    m.client.hooks.on_state_change(m._state)
                    await asyncio.sleep(0.2 * (attempt + 1))
            await m.client.connect()

    await asyncio.gather(*(connect(m) for m in members))
    stop = asyncio.Event()
    tasks: list[asyncio.Task[None]] = []
    if args.call_every:
        tasks += [asyncio.ensure_future(m.pending_call()) for m in members]
        tasks += [asyncio.ensure_future(m.call_loop(args.call_every, stop)) for m in members]
    emit("ready", count=len(members))

    async def watch() -> None:
        said_lost = said_back = False
        while True:
            await asyncio.sleep(0.05)
            if not said_lost and all(m.lost_at is not None for m in members):
                emit("all_lost")
                said_lost = True
            if said_lost and not said_back and all(m.back_at is not None for m in members):
                emit("all_back")
                said_back = True

    watcher = asyncio.ensure_future(watch())
    while True:
        line = await asyncio.to_thread(sys.stdin.readline)
        if not line or line.strip() == "stop":
            break
    stop.set()
    watcher.cancel()
    await asyncio.gather(*tasks[len(members) :], return_exceptions=True)
    await asyncio.gather(*(m.client.close() for m in members), return_exceptions=True)
    await asyncio.gather(*tasks[: len(members)], return_exceptions=True)
    emit(
        "summary",
        members=[
            {
                "id": m.id,
                "lost_at": m.lost_at,
                "back_at": m.back_at,
                "ok": m.ok,
                "wrong": m.wrong,
                "errors": dict(m.errors),
                "pending": m.pending,
            }
            for m in members
        ],
    )


def main() -> None:
    """Parse arguments and run the fleet until told to stop."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--prefix", required=True)
    parser.add_argument("--ca", required=True)
    parser.add_argument("--call-every", type=float, default=0.0)
    parser.add_argument("--hb-interval", type=float, default=1.0)
    parser.add_argument("--hb-timeout", type=float, default=1.0)
    parser.add_argument("--backoff-initial", type=float, default=0.2)
    parser.add_argument("--backoff-max", type=float, default=1.0)
    parser.add_argument("--connect-timeout", type=float, default=1.0)
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
