"""A fleet of QuicFlow clients in one process, for the scale run (``bench.scale``).

``python -m bench.scale_fleet --port P --ca CA --count N --prefix f0`` makes ``count``
`Client` objects (ids ``<prefix>-<i>``) through the public API, each serving Echo for the
server's pushes, with default settings unless told otherwise, and connects them at most
``--gate`` at a time. It prints ``ready <count>`` once every client connected (or gave up:
a first connect that fails is tried again with a new `Client`, as an application would),
then one JSON ``tick`` line a second (clients connected, reconnect attempts, RSS, ...)
and one JSON answer per command line on stdin:

* ``{"op": "mark"}``: remember now; later ticks count clients connected again since.
* ``{"op": "calls_start", "clients": k, "every": s}`` / ``{"op": "calls_stop"}``: the
  first ``k`` clients each call ``Say`` every ``s`` seconds; stop returns the latencies.
* ``{"op": "close", "fraction": f}``: close that fraction of the clients, all at once.
* ``{"op": "stats"}``: the counters now.

It exits when stdin closes (the orchestrator's end) or when killed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import random
import sys
import time
from dataclasses import replace
from typing import Any

from echo.echo_pb2 import EchoReply, EchoRequest
from echo.echo_quicflow import EchoBase, EchoStub

import quicflow
from quicflow import Client, ClientConfig, RpcError, ServicerContext
from quicflow.client import ClientState
from quicflow.transport.quic import QuicFlowProtocol
from quicflow.transport.tls import CLIENT_TICKETS

from .common import encode, raise_fd_limit
from .scale_server import rss_kib


def outcome(exc: BaseException | None) -> str:
    """What ended a connect attempt, in a word or two (None: it succeeded)."""
    if exc is None:
        return "ok"
    text = str(exc)
    for needle, name in (
        ("no answer within", "handshake timeout"),
        ("no WELCOME", "welcome timeout"),
        ("nothing answers", "refused (port closed)"),
        ("server busy", "busy"),
        ("too many connections", "too many connections"),
        ("CancelledError", "cancelled"),
    ):
        if needle in text:
            return name
    return f"other: {type(exc).__name__}: {text[:80]}"


class AttemptLog:
    """Every connect attempt of this process since the mark: when it began (seconds since
    the mark), how long it took, how it ended; and the TLS state of each handshake that
    timed out (did the server's first flight arrive?)."""

    def __init__(self) -> None:
        self.mark = 0.0
        self.rows: list[tuple[float, float, str]] = []
        self.timeout_states: dict[str, int] = {}
        self.lost: dict[str, int] = {}
        self.delays: list[float] = []
        install(self)


def install(log: AttemptLog) -> None:
    """Wrap `Client._establish` and `QuicFlowProtocol.discard` (harness only: private)."""
    establish = Client._establish
    discard = QuicFlowProtocol.discard

    async def counted(self: Client) -> None:
        start = time.time()
        try:
            await establish(self)
        except BaseException as exc:
            if log.mark:
                log.rows.append((start - log.mark, time.time() - start, outcome(exc)))
            raise
        if log.mark:
            log.rows.append((start - log.mark, time.time() - start, "ok"))

    def discarded(self: QuicFlowProtocol, reason: str) -> None:
        if log.mark and reason == "connect timeout":
            tls = getattr(self._quic, "tls", None)
            state = getattr(getattr(tls, "state", None), "name", "?")
            log.timeout_states[state] = log.timeout_states.get(state, 0) + 1
        discard(self, reason)

    Client._establish = counted  # type: ignore[method-assign]
    QuicFlowProtocol.discard = discarded  # type: ignore[method-assign]


class PushEcho(EchoBase):
    """What the server's broadcast reaches: the request's text back."""

    async def say(self, request: EchoRequest, context: ServicerContext) -> EchoReply:
        return EchoReply(text=request.text)


class Fleet:
    """The clients of this process and what they observed."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        settings: dict[str, Any] = {}
        if args.hb_interval:
            settings["heartbeat_interval"] = args.hb_interval
            settings["heartbeat_timeout"] = min(5.0, args.hb_interval)
        if args.backoff_max:
            settings["backoff_max"] = args.backoff_max
        self.base = ClientConfig(
            host="127.0.0.1",
            port=args.port,
            ca_file=args.ca,
            server_name="localhost",
            **settings,
        )
        self.clients: list[Client | None] = [None] * args.count
        self.connected_at: list[float] = [0.0] * args.count
        self.connected = 0
        self.attempts = 0  # reconnect attempts (the client's "reconnect" hook)
        self.lost = 0  # CONNECTED -> anything else
        self.first_failures = 0  # first connects that failed and were made again
        self.first_busy = 0  # of them: turned away busy (and made again when asked)
        self.gave_up = 0
        self.mark = 0.0
        self.closed: set[int] = set()
        self.callers: list[asyncio.Task[None]] = []
        self.latencies: list[float] = []
        self.call_errors: dict[str, int] = {}
        self.wrong = 0
        self.log = AttemptLog()
        self.pokes: list[asyncio.Task[None]] = []

    def make(self, i: int) -> Client:
        client = Client(replace(self.base, client_id=f"{self.args.prefix}-{i}"))
        client.add_service(PushEcho())

        def changed(old: ClientState, new: ClientState) -> None:
            if new is ClientState.CONNECTED:
                self.connected += 1
                self.connected_at[i] = time.time()
            elif old is ClientState.CONNECTED:
                self.connected -= 1
                self.lost += 1

        def reconnecting(attempt: int, delay: float) -> None:
            self.attempts += 1
            if self.log.mark:
                self.log.delays.append(delay)

        def disconnected(reason: str) -> None:
            if self.log.mark:
                self.log.lost[reason] = self.log.lost.get(reason, 0) + 1

        client.hooks.on_state_change(changed)
        client.hooks.on_reconnect(reconnecting)
        client.hooks.on_disconnect(disconnected)
        self.clients[i] = client
        return client

    async def connect_all(self) -> None:
        gate = asyncio.Semaphore(self.args.gate)

        async def one(i: int) -> None:
            async with gate:
                attempt = 0
                while attempt < self.args.first_tries:  # busy answers are not counted
                    client = self.make(i)
                    try:
                        await client.connect()
                        return
                    except Exception as exc:
                        self.first_failures += 1
                        await client.close()
                        asked = getattr(exc, "retry_after", None)
                        if asked is not None:  # "server busy, retry in N ms": as asked
                            self.first_busy += 1
                            await asyncio.sleep(asked * random.uniform(1.0, 1.2))
                            continue
                        # Jittered, growing pause, as the client's own backoff would.
                        await asyncio.sleep(random.uniform(0.5, 1.5) * min(8.0, 2.0**attempt))
                        attempt += 1
                self.gave_up += 1

        await asyncio.gather(*(one(i) for i in range(self.args.count)))

    def back(self) -> int:
        """Clients connected now whose last connect came after the mark."""
        return sum(
            1
            for i, client in enumerate(self.clients)
            if client is not None
            and i not in self.closed
            and client.state is ClientState.CONNECTED
            and self.connected_at[i] >= self.mark
        )

    def tick(self) -> dict[str, Any]:
        return {
            "event": "tick",
            "t": time.time(),
            "connected": self.connected,
            "back": self.back() if self.mark else self.connected,
            "attempts": self.attempts,
            "lost": self.lost,
            "rss_kib": rss_kib(),
        }

    async def call_loop(self, client: Client, every: float) -> None:
        stub = EchoStub(client)
        n = 0
        await asyncio.sleep(random.uniform(0, every))  # spread the callers over the period
        while True:
            text = f"{client.client_id}#{n}"
            n += 1
            start = time.perf_counter()
            try:
                reply = await stub.say(EchoRequest(text=text), timeout=self.args.call_timeout)
            except RpcError as exc:
                self.call_errors[exc.code.name] = self.call_errors.get(exc.code.name, 0) + 1
            else:
                if reply.text == text:
                    self.latencies.append(time.perf_counter() - start)
                else:
                    self.wrong += 1  # a false success: someone else's reply
            await asyncio.sleep(every)

    async def command(self, cmd: dict[str, Any]) -> dict[str, Any]:
        op = cmd.get("op")
        if op == "mark":
            self.mark = self.log.mark = time.time()
            self.log.rows, self.log.timeout_states, self.log.lost = [], {}, {}
            self.log.delays = []
            # A tick now, before the answer: the orchestrator must not count a tick from
            # before the mark (it says every client is back) as the first of the storm.
            print(encode(self.tick()), flush=True)
            return {"mark": self.mark}
        if op == "poke":
            # Every connected client makes one call now (not awaited): after a server
            # restart each hears the stateless reset at once, not at its next ping, so
            # the whole fleet reconnects within a second (a sharper storm than pings
            # spread over the heartbeat interval; bench.scale --storm burst).
            async def poke(client: Client) -> None:
                with contextlib.suppress(Exception):
                    await EchoStub(client).say(EchoRequest(text="poke"), timeout=2.0)

            live = [
                c
                for i, c in enumerate(self.clients)
                if c is not None and i not in self.closed and c.state is ClientState.CONNECTED
            ]
            self.pokes = [asyncio.ensure_future(poke(c)) for c in live]
            return {"poked": len(live)}
        if op == "attempts":
            return {
                "rows": self.log.rows,
                "timeout_states": self.log.timeout_states,
                "lost": self.log.lost,
                "delays": self.log.delays,
                "connected_at": [
                    t - self.mark
                    for i, t in enumerate(self.connected_at)
                    if t >= self.mark and i not in self.closed
                ],
            }
        if op == "calls_start":
            live = [c for i, c in enumerate(self.clients) if c is not None and i not in self.closed]
            self.latencies, self.call_errors, self.wrong = [], {}, 0
            self.callers = [
                asyncio.ensure_future(self.call_loop(c, float(cmd["every"])))
                for c in live[: int(cmd["clients"])]
            ]
            return {"callers": len(self.callers)}
        if op == "calls_stop":
            for task in self.callers:
                task.cancel()
            await asyncio.gather(*self.callers, return_exceptions=True)
            self.callers = []
            return {"latencies": self.latencies, "errors": self.call_errors, "wrong": self.wrong}
        if op == "close":
            picked = [
                i
                for i, c in enumerate(self.clients)
                if c is not None and i not in self.closed and i >= self.args.keep
            ]
            picked = picked[: round(len(picked) * float(cmd["fraction"]))]
            self.closed.update(picked)
            start = time.perf_counter()
            await asyncio.gather(
                *(c.close() for i in picked if (c := self.clients[i]) is not None),
                return_exceptions=True,
            )
            return {"closed": len(picked), "elapsed": time.perf_counter() - start}
        if op == "stats":
            return {
                **self.tick(),
                "event": "stats",
                "first_failures": self.first_failures,
                "gave_up": self.gave_up,
            }
        return {"error": f"unknown op {op!r}"}


async def run(args: argparse.Namespace) -> None:
    raise_fd_limit()
    # The process's ticket cache keeps 4 tickets per server; these clients stand for
    # clients in processes of their own, each of which would keep its own ticket.
    CLIENT_TICKETS.per_key = max(CLIENT_TICKETS.per_key, args.count)
    fleet = Fleet(args)
    base_rss = rss_kib()

    async def ticks() -> None:
        while True:
            await asyncio.sleep(1.0)
            print(encode(fleet.tick()), flush=True)

    ticker = asyncio.ensure_future(ticks())
    start = time.perf_counter()
    await fleet.connect_all()
    print(
        encode(
            {
                "event": "ready",
                "count": args.count,
                "connected": fleet.connected,
                "elapsed": time.perf_counter() - start,
                "base_rss_kib": base_rss,
                "rss_kib": rss_kib(),
                "first_failures": fleet.first_failures,
                "first_busy": fleet.first_busy,
                "gave_up": fleet.gave_up,
            }
        ),
        flush=True,
    )
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 20)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    try:
        while line := await reader.readline():
            answer = await fleet.command(json.loads(line))
            print(encode({"event": "answer", **answer}), flush=True)
    finally:
        ticker.cancel()
        for task in fleet.callers:
            task.cancel()
        with contextlib.suppress(Exception):
            async with asyncio.timeout(10):
                await asyncio.gather(
                    *(c.close() for c in fleet.clients if c is not None), return_exceptions=True
                )


def main() -> None:
    """Parse arguments and run the fleet until stdin closes."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--ca", required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--prefix", required=True)
    parser.add_argument("--gate", type=int, default=32, help="connects in flight at once")
    parser.add_argument("--first-tries", type=int, default=6)
    parser.add_argument("--keep", type=int, default=0, help="clients `close` never picks")
    parser.add_argument("--call-timeout", type=float, default=5.0)
    parser.add_argument("--hb-interval", type=float, default=0.0, help="0: the default")
    parser.add_argument("--backoff-max", type=float, default=0.0, help="0: the default")
    parser.add_argument("--nice", type=int, default=0, help="lower this process's priority")
    args = parser.parse_args()
    if args.nice:
        os.nice(args.nice)
    # A reconnect storm logs a line per attempt per client: keep only warnings.
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    quicflow.run(run(args))


if __name__ == "__main__":
    main()
