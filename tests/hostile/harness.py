"""What every hostile-peer test needs: a server, a well-behaved bystander, state counts."""

from __future__ import annotations

import asyncio
import gc
import statistics
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from typing import Any, Protocol

from echo.echo_pb2 import EchoReply, EchoRequest
from echo.echo_quicflow import EchoBase, EchoStub

from quicflow import Client, Server, ServicerContext
from quicflow.incoming import IncomingCall
from quicflow.testing import ClientFor

from .peer import HostilePeer


class Figures(Protocol):
    """The suite's ``figures`` fixture (tests/conftest.py): figures for make chaos's table."""

    def add(self, name: str, value: float | int | str, unit: str = "") -> None: ...


class Echo(EchoBase):
    """Say echoes; Stream sends ``repeat`` replies of ``payload`` as fast as the transport
    lets it, counting them in ``yielded`` (so a test can see where backpressure held it)."""

    def __init__(self) -> None:
        self.says = 0
        self.yielded = 0
        self.stream_ended: asyncio.Event = asyncio.Event()

    async def say(self, request: EchoRequest, context: ServicerContext) -> EchoReply:
        self.says += 1
        return EchoReply(text=request.text)

    async def collect(
        self, requests: AsyncIterator[EchoRequest], context: ServicerContext
    ) -> EchoReply:
        return EchoReply(text="".join([r.text async for r in requests]))

    async def stream(
        self, request: EchoRequest, context: ServicerContext
    ) -> AsyncIterator[EchoReply]:
        try:
            for i in range(request.repeat):
                yield EchoReply(index=i, payload=request.payload)
                self.yielded = i + 1
        finally:
            self.stream_ended.set()


def server_state(server: Server) -> dict[str, int]:
    """Server-side state that a finished attack must give back (deterministic counts, not
    RSS): connections, running calls, stream handlers, aioquic streams, background tasks,
    live call objects, and every task on the loop."""
    conns = server.connections
    gc.collect()
    return {
        "connections": len(conns),
        "calls": server.active_calls,
        "handlers": sum(c.stream_count for c in conns),
        "quic_streams": sum(c.quic_stream_count for c in conns),
        "background": len(server._endpoint.background),
        "call_objects": sum(1 for o in gc.get_objects() if type(o) is IncomingCall),
        "tasks": len(asyncio.all_tasks()),
    }


async def wait_state(server: Server, baseline: dict[str, int], timeout: float = 5.0) -> None:
    """Wait until the server's state is back at ``baseline`` (assert it is, at the end)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    state = server_state(server)
    while state != baseline and loop.time() < end:
        await asyncio.sleep(0.05)
        state = server_state(server)
    assert state == baseline, f"server state did not return to baseline: {state} != {baseline}"


async def settled_state(server: Server, timeout: float = 5.0) -> dict[str, int]:
    """The server's state once aioquic has freed the streams of finished calls (it does
    when their last frames are acknowledged): only control streams remain."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    state = server_state(server)
    while state["quic_streams"] != state["handlers"] and loop.time() < end:
        await asyncio.sleep(0.02)
        state = server_state(server)
    return state


class Bystander:
    """A well-behaved client making unary calls back to back, timing each one."""

    def __init__(self, client: Client) -> None:
        self.stub = EchoStub(client)
        self.latencies: dict[str, list[float]] = {}
        self.phase = "before"
        self.errors: list[BaseException] = []
        self._task: asyncio.Task[None] | None = None

    async def calls(self, n: int) -> None:
        """Make ``n`` calls now (all must succeed)."""
        loop = asyncio.get_running_loop()
        for i in range(n):
            t0 = loop.time()
            reply = await self.stub.say(EchoRequest(text=f"b{i}"), timeout=10.0)
            assert reply.text == f"b{i}"
            self.latencies.setdefault(self.phase, []).append(loop.time() - t0)

    def start(self) -> None:
        """Keep calling in the background (phase "during") until `stop`."""
        self.phase = "during"

        async def loop_calls() -> None:
            while True:
                try:
                    await self.calls(1)
                except asyncio.CancelledError:
                    raise
                except BaseException as exc:
                    self.errors.append(exc)
                    return
                await asyncio.sleep(0)

        self._task = asyncio.ensure_future(loop_calls())

    async def stop(self) -> None:
        """Stop calling; assert every call during the attack succeeded, and some were made."""
        assert self._task is not None
        # At least a few calls complete while the attack runs, or the server was starved.
        for _ in range(1000):  # up to ~10 s
            if len(self.latencies.get("during", [])) >= 3 or self.errors:
                break
            await asyncio.sleep(0.01)
        self._task.cancel()
        with suppress(asyncio.CancelledError):
            await self._task
        assert not self.errors, f"bystander call failed: {self.errors[0]!r}"
        assert len(self.latencies.get("during", [])) >= 3, "bystander starved during the attack"

    def report(self, name: str, figures: Figures | None = None) -> str:
        """Bystander p50/p99 before and during the attack: recorded as a figure (the
        ``figures`` fixture, for make chaos's table) or printed."""
        parts = []
        for phase in ("before", "during"):
            got = sorted(self.latencies.get(phase, []))
            if got:
                p50 = statistics.median(got) * 1000
                p99 = got[min(len(got) - 1, int(len(got) * 0.99))] * 1000
                parts.append(f"{phase} p50 {p50:.2f} / p99 {p99:.2f} (n={len(got)})")
        line = ", ".join(parts)
        if figures is not None:
            figures.add(f"{name}: bystander latency", line, "ms")
        else:
            print(f"{name}: bystander {line} ms")
        return line


@asynccontextmanager
async def attack_setup(
    service: Echo | None = None,
    **server_options: Any,
) -> AsyncIterator[tuple[ClientFor, Bystander, HostilePeer]]:
    """A server, a bystander client (20 calls made before the attack), and a connected
    hostile peer (handshake only). At exit: server state is back to the baseline taken
    before the peer connected."""
    harness = ClientFor([service or Echo()], server_options=server_options)
    async with harness as client:
        bystander = Bystander(client)
        await bystander.calls(20)
        baseline = await settled_state(harness.server)
        peer = HostilePeer("127.0.0.1", harness.server.port, str(harness.certs.ca_file))
        await peer.connect()
        try:
            yield harness, bystander, peer
        finally:
            await peer.aclose()
        await wait_state(harness.server, baseline)
