"""The soak: mixed traffic through 5 % loss for minutes, then check nothing leaked.

`make chaos` runs it for 10 minutes; ``QUICFLOW_SOAK_SECONDS`` changes that
(e.g. 60 for a quick look). Traffic: unary calls, server and client streams,
acked pushes with promises, broadcasts, forced reconnects (a client closed and
replaced under the same id) and NAT rebinds, all through the chaos proxy.
Before and after it samples tasks, open streams, pending promises and RSS at
quiet moments (traffic paused, calls drained) and requires no growth.
"""

from __future__ import annotations

import asyncio
import gc
import hashlib
import os
import random
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import pytest
from echo.echo_pb2 import EchoReply, EchoRequest
from echo.echo_quicflow import EchoStub

from quicflow import Client, ClientNotConnected, RpcError, StatusCode
from quicflow.chaos import Faults
from quicflow.push import ClientChannel, DeliveryStatus

from .fleet import PushEcho
from .harness import ChaosPair, Figures, chunk, expected_digest

pytestmark = pytest.mark.faults  # make chaos runs every fault test, short and long

SOAK_FAULTS = Faults(loss=0.05, delay=0.0005, jitter=0.001)
CLIENTS = 8
EXPECTED = {StatusCode.UNAVAILABLE.name}  # only for a client being replaced at that moment


def _rss_kib() -> int:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def _say(text: str) -> Callable[[ClientChannel], Awaitable[EchoReply]]:
    return lambda ch: EchoStub(ch).say(EchoRequest(text=text))


@dataclass
class Slot:
    """One client id; its Client is replaced on a forced reconnect."""

    id: str
    client: Client
    swapping: bool = False
    swaps: int = 0  # forced reconnects begun; a push or broadcast spanning one may fail

    def replaced_since(self, swaps: int | None) -> bool:
        """Being replaced now, or replaced since the slot's count was ``swaps``."""
        return self.swapping or (swaps is not None and self.swaps != swaps)

    tasks: list[asyncio.Task[None]] = field(default_factory=list)


class Soak:
    def __init__(self, pair: ChaosPair) -> None:
        self.pair = pair
        self.slots: list[Slot] = []
        self.counts: Counter[str] = Counter()
        self.unexpected: list[str] = []
        self.expected: Counter[str] = Counter()
        self.running = asyncio.Event()
        self.stop = False
        self.in_flight = 0
        self.idle = asyncio.Event()
        self.rng = random.Random(42)

    def failed(
        self, what: str, slot: Slot | None, exc: BaseException, swaps: int | None = None
    ) -> None:
        """Count an error as expected only if it is UNAVAILABLE and the slot's client was
        being replaced at some moment while the call ran (``swaps`` is the slot's count
        when the call began)."""
        code = exc.code.name if isinstance(exc, RpcError) else type(exc).__name__
        swapped = slot is not None and slot.replaced_since(swaps)
        if swapped and code in EXPECTED:
            self.expected[code] += 1
        else:
            self.unexpected.append(f"{what} at {time.time():.3f}: {code}: {exc}")

    def done(self) -> None:
        self.in_flight -= 1
        if not self.in_flight:
            self.idle.set()

    async def new_client(self, client_id: str) -> Client:
        client = Client(self.pair.config(client_id=client_id, connect_timeout=10.0))
        client.add_service(PushEcho(client_id))
        self.pair.clients.append(client)  # closed by the pair even if the soak fails
        await client.connect()
        return client

    async def gated(self) -> bool:
        await self.running.wait()
        return not self.stop

    # -- traffic kinds; each loop belongs to one slot's client --

    async def unary(self, slot: Slot, client: Client) -> None:
        stub, i = EchoStub(client), 0
        while await self.gated():
            text = f"{slot.id}/{i}"
            i += 1
            self.in_flight += 1
            try:
                reply = await stub.say(EchoRequest(text=text), timeout=20.0)
                if reply.text != text:
                    self.unexpected.append(f"unary: wrong reply {reply.text!r} for {text!r}")
                self.counts["unary"] += 1
            except Exception as exc:
                self.failed("unary", slot, exc)
            finally:
                self.done()
            await asyncio.sleep(0.02)

    async def streams(self, slot: Slot, client: Client) -> None:
        stub, i = EchoStub(client), 0
        while await self.gated():
            i += 1
            self.in_flight += 1
            try:
                h = hashlib.sha256()
                async for reply in stub.stream(
                    EchoRequest(text="s", repeat=4, delay_ms=i), timeout=30.0
                ):
                    h.update(reply.payload)
                if h.hexdigest() != expected_digest(i, 4):
                    self.unexpected.append("server stream: bytes differ")

                async def upload(n: int = i) -> AsyncIterator[EchoRequest]:
                    for k in range(4):
                        yield EchoRequest(payload=chunk(n + 10_000, k))

                reply = await stub.collect(upload(), timeout=30.0)
                if reply.text != expected_digest(i + 10_000, 4):
                    self.unexpected.append("client stream: bytes differ")
                self.counts["streams"] += 2
            except Exception as exc:
                self.failed("stream", slot, exc)
            finally:
                self.done()
            await asyncio.sleep(0.2)

    async def pushes(self) -> None:
        server, i = self.pair.server, 0
        while await self.gated():
            slot = self.rng.choice(self.slots)
            text = f"push{i}"
            i += 1
            swaps = slot.swaps
            self.in_flight += 1
            try:
                promise = server.async_send(slot.id, _say(text), timeout=20.0)
                reply = await promise
                if reply.text != f"{text}@{slot.id}":
                    self.unexpected.append(f"push: wrong ack {reply.text!r}")
                self.counts["pushes"] += 1
            except (RpcError, ClientNotConnected) as exc:
                self.failed("push", slot, exc, swaps)
            finally:
                self.done()
            await asyncio.sleep(0.05)

    async def broadcasts(self) -> None:
        server = self.pair.server
        while await self.gated():
            self.in_flight += 1
            swaps_before = {s.id: s.swaps for s in self.slots}
            try:
                result = await server.broadcast(
                    lambda ch: EchoStub(ch).say(EchoRequest(text="all")), client_timeout=20.0
                )
                # A client replaced at any moment during the broadcast may fail it: its
                # old connection closed under the call (UNAVAILABLE).
                swapping = {s.id for s in self.slots if s.replaced_since(swaps_before[s.id])}
                for client_id, d in result.deliveries.items():
                    if d.status is DeliveryStatus.DELIVERED:
                        if d.reply is None or d.reply.text != f"all@{client_id}":
                            self.unexpected.append("broadcast: wrong reply")
                    elif client_id in swapping and d.code.name in EXPECTED:
                        self.expected[d.code.name] += 1
                    else:
                        self.unexpected.append(
                            f"broadcast to {client_id} at {time.time():.3f}: {d.status.name} "
                            f"{d.code.name}: {d.message}"
                        )
                self.counts["broadcasts"] += 1
            finally:
                self.done()
            await asyncio.sleep(1.0)

    def start_slot(self, slot: Slot) -> None:
        slot.tasks = [
            asyncio.ensure_future(self.unary(slot, slot.client)),
            asyncio.ensure_future(self.streams(slot, slot.client)),
        ]

    async def churn(self, every: float) -> None:
        """Forced reconnects (a client closed, then the same id connects again) and NAT
        rebinds, taking turns."""
        proxy = self.pair.proxy
        assert proxy is not None
        n = 0
        while await self.gated():
            await asyncio.sleep(every)
            if self.stop:
                return
            if not self.running.is_set():
                # Paused for a sample: every client is silent now, and a rebinding of a
                # silent client is only healed by its next packet (its next heartbeat).
                continue
            n += 1
            if n % 2:
                proxy.rebind()
                self.counts["rebinds"] += 1
                continue
            slot = self.rng.choice(self.slots)
            slot.swapping = True
            slot.swaps += 1
            self.in_flight += 1  # a quiet-moment sample waits for the swap to finish
            old = slot.client
            for task in slot.tasks:  # its loops end (a call in flight is cancelled)
                task.cancel()
            await asyncio.gather(*slot.tasks, return_exceptions=True)
            await old.close()
            self.pair.clients.remove(old)  # closed: the pair need not keep it (RSS)
            slot.client = await self.new_client(slot.id)  # same id, new connection
            self.start_slot(slot)
            slot.swapping = False
            self.done()
            self.counts["reconnects"] += 1

    async def quiesce(self) -> dict[str, int]:
        """Pause traffic, wait for calls to drain, and sample what could leak."""
        self.running.clear()
        async with asyncio.timeout(60):
            while self.in_flight:
                self.idle.clear()
                await self.idle.wait()
        await asyncio.sleep(0.5)  # stream state freed after the last acks
        gc.collect()
        server = self.pair.server
        endpoint = server._listener
        assert endpoint is not None
        return {
            "tasks": len(asyncio.all_tasks()),
            "server streams": sum(c.stream_count for c in endpoint.connections),
            "server QUIC streams": sum(c.quic_stream_count for c in endpoint.connections),
            "client streams": sum(
                s.client.connection.stream_count for s in self.slots if s.client.connection
            ),
            "promises": server.pending_promises,
            "sessions": len(server.list_clients()),
            "rss KiB": _rss_kib(),
        }


@pytest.mark.chaos
async def test_soak_mixed_traffic_through_loss(figures: Figures) -> None:
    """Check that minutes of mixed traffic through 5 % loss end with no unexpected
    error, and with tasks, streams, promises and RSS where they were after warm-up."""
    seconds = float(os.environ.get("QUICFLOW_SOAK_SECONDS", "600"))
    async with ChaosPair(SOAK_FAULTS, seed=99, server={"max_pending_promises": 1000}) as pair:
        soak = Soak(pair)
        for i in range(CLIENTS):
            client_id = f"soak-{i}"
            soak.slots.append(Slot(client_id, await soak.new_client(client_id)))
        for slot in soak.slots:
            soak.start_slot(slot)
        others = [
            asyncio.ensure_future(soak.pushes()),
            asyncio.ensure_future(soak.broadcasts()),
            asyncio.ensure_future(soak.churn(every=max(1.0, seconds / 60))),
        ]
        try:
            soak.running.set()
            await asyncio.sleep(min(30.0, seconds / 10))  # warm-up
            before = await soak.quiesce()
            soak.running.set()
            began = time.perf_counter()
            await asyncio.sleep(seconds)
            ran = time.perf_counter() - began
            after = await soak.quiesce()
            soak.stop = True
            soak.running.set()
            await asyncio.gather(*others, *(t for s in soak.slots for t in s.tasks))
            assert pair.proxy is not None
        finally:  # a failed soak still ends its loops before the pair closes
            soak.stop = True
            soak.running.set()
            loops = (*others, *(t for s in soak.slots for t in s.tasks))
            for task in loops:
                task.cancel()
            await asyncio.gather(*loops, return_exceptions=True)
        stats = pair.proxy.stats
    assert soak.unexpected == []
    for key in ("tasks", "server streams", "client streams", "promises", "sessions"):
        assert after[key] <= before[key], (key, before, after)
    assert after["server QUIC streams"] <= before["server QUIC streams"] + CLIENTS
    rss_growth = (after["rss KiB"] - before["rss KiB"]) / 1024
    assert rss_growth < 20, (before, after)  # MiB; allocator noise, not per-call growth
    dropped = stats.client_to_server.dropped + stats.server_to_client.dropped
    received = stats.client_to_server.received + stats.server_to_client.received
    figures.add("duration (after warm-up)", ran, "s")
    figures.add("unary / stream / push / broadcast", (
        f"{soak.counts['unary']:,} / {soak.counts['streams']:,} / {soak.counts['pushes']:,} / "
        f"{soak.counts['broadcasts']:,}"
    ))  # fmt: skip
    figures.add("forced reconnects / NAT rebinds",
                f"{soak.counts['reconnects']} / {soak.counts['rebinds']}")  # fmt: skip
    figures.add("datagrams dropped", f"{dropped:,} of {received:,}")
    figures.add("unexpected errors", len(soak.unexpected))
    figures.add("expected errors (client being replaced)", sum(soak.expected.values()))
    for key in ("tasks", "server streams", "client streams", "promises", "sessions"):
        figures.add(f"{key} before / after", f"{before[key]} / {after[key]}")
    figures.add("RSS before / after", f"{before['rss KiB'] / 1024:.1f} / "
                f"{after['rss KiB'] / 1024:.1f}", "MiB")  # fmt: skip
