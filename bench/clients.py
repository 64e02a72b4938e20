"""One benchmark client per process: ``python -m bench.clients SYSTEM --port N``.

A worker that holds one long-lived connection to SYSTEM's server and runs
measurements on command: one JSON object per line on stdin, one JSON answer
per line on stdout (see ``Worker.handle``). It exits when stdin closes.
Every measurement is bounded in count and in time; an answer always says how
many operations it timed, so a time-bounded run is visible.
"""

from __future__ import annotations

import abc
import argparse
import asyncio
import contextlib
import importlib
import json
import logging
import ssl
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from echo.echo_pb2 import EchoReply, EchoRequest

from .common import (
    COMPRESS_TEXT,
    HOST,
    IDLE_CLIENT_PREFIX,
    MAIN_ID,
    MAX_MESSAGE,
    MIB,
    ONEWAY_TYPE,
    SERVER_NAME,
    SMALL,
    VARIANTS,
    compressible,
    datagram_size,
    encode,
    is_quicflow,
    payload,
    percentile,
    raise_fd_limit,
)

Command = dict[str, Any]
Answer = dict[str, Any]

SMALL_REQUEST = EchoRequest(payload=payload(SMALL))


class Driver(abc.ABC):
    """What each system does for the measurements: connect, call, stream, close."""

    def __init__(self, port: int, certs: Path, plaintext: bool) -> None:
        self.port = port
        self.certs = certs
        self.plaintext = plaintext

    @abc.abstractmethod
    async def open(self, *, index: int | None = None, resume: bool = False) -> Any:
        """A new connection, ready for calls (``index``: an idle client's number;
        ``resume``: resume the TLS session of the connection before, if the system can)."""

    @abc.abstractmethod
    async def say(self, conn: Any, request: EchoRequest) -> EchoReply:
        """One unary call."""

    async def say_gzip(self, conn: Any, request: EchoRequest) -> EchoReply:
        """One unary call whose request and reply are gzip-compressed."""
        raise NotImplementedError(f"{type(self).__name__} has no compressed calls")

    @abc.abstractmethod
    def stream(self, conn: Any, request: EchoRequest) -> AsyncIterator[EchoReply]:
        """One server-streaming call's replies."""

    @abc.abstractmethod
    async def close(self, conn: Any) -> None:
        """Close a connection."""

    async def open_ready(self, *, index: int | None = None, resume: bool = False) -> Any:
        """A connection that has carried one call (the peers connect lazily)."""
        conn = await self.open(index=index, resume=resume)
        await self.say(conn, SMALL_REQUEST)
        return conn


class QuicFlowDriver(Driver):
    """QuicFlow: one `Client` per connection, serving Echo for the server's pushes."""

    async def open(self, *, index: int | None = None, resume: bool = False) -> Any:
        from echo.echo_quicflow import EchoBase

        from quicflow import Client, ClientConfig, ServicerContext

        class Echo(EchoBase):
            async def say(self, request: EchoRequest, context: ServicerContext) -> EchoReply:
                return EchoReply(payload=request.payload)

        client_id = MAIN_ID if index is None else f"{IDLE_CLIENT_PREFIX}{index}"
        labels = {} if index is None or index < 0 else {"role": "idle"}
        client = Client(
            ClientConfig(
                host=HOST,
                port=self.port,
                ca_file=str(self.certs / "ca.pem"),
                server_name=SERVER_NAME,
                max_message_size=MAX_MESSAGE,
                max_datagram_size=datagram_size(),
                client_id=None if index is not None and index < 0 else client_id,
                labels=labels,
                # Setup rows: a full handshake each, or each resuming the one before.
                tls_resumption=resume,
            )
        )
        client.add_service(Echo())
        await client.connect()
        return client

    async def say(self, conn: Any, request: EchoRequest) -> EchoReply:
        from echo.echo_quicflow import EchoStub

        return await EchoStub(conn).say(request)

    async def say_gzip(self, conn: Any, request: EchoRequest) -> EchoReply:
        from echo.echo_quicflow import EchoStub

        return await EchoStub(conn).say(request, compression="gzip")

    async def stream(self, conn: Any, request: EchoRequest) -> AsyncIterator[EchoReply]:
        from echo.echo_quicflow import EchoStub

        async for reply in EchoStub(conn).stream(request):
            yield reply

    async def close(self, conn: Any) -> None:
        await conn.close()


class GrpcAioDriver(Driver):
    """grpc.aio: one channel per connection, stub generated at run time."""

    def __init__(self, port: int, certs: Path, plaintext: bool) -> None:
        super().__init__(port, certs, plaintext)
        import grpc  # type: ignore[import-untyped]

        self.grpc: Any = grpc
        self.pb2_grpc: Any = importlib.import_module("echo.echo_pb2_grpc")
        self.credentials: Any = grpc.ssl_channel_credentials(
            root_certificates=(certs / "ca.pem").read_bytes()
        )
        self.stubs: dict[int, Any] = {}
        from grpc.experimental import session_cache  # type: ignore[import-untyped]

        self.session_cache: Any = session_cache.ssl_session_cache_lru(16)

    async def open(self, *, index: int | None = None, resume: bool = False) -> Any:
        options = [
            ("grpc.max_receive_message_length", MAX_MESSAGE),
            ("grpc.max_send_message_length", MAX_MESSAGE),
            ("grpc.ssl_target_name_override", SERVER_NAME),
            # A fresh connection per channel, as a separate client would have.
            ("grpc.use_local_subchannel_pool", 1),
        ]
        if resume:  # gRPC's TLS session cache, shared by the channels that name it
            options.append(("grpc.ssl_session_cache", self.session_cache))
        target = f"{HOST}:{self.port}"
        if self.plaintext:
            channel = self.grpc.aio.insecure_channel(target, options=options)
        else:
            channel = self.grpc.aio.secure_channel(target, self.credentials, options=options)
        self.stubs[id(channel)] = self.pb2_grpc.EchoStub(channel)
        return channel

    async def say(self, conn: Any, request: EchoRequest) -> EchoReply:
        reply: EchoReply = await self.stubs[id(conn)].Say(request)
        return reply

    async def say_gzip(self, conn: Any, request: EchoRequest) -> EchoReply:
        call = self.stubs[id(conn)].Say(request, compression=self.grpc.Compression.Gzip)
        reply: EchoReply = await call
        return reply

    async def stream(self, conn: Any, request: EchoRequest) -> AsyncIterator[EchoReply]:
        async for reply in self.stubs[id(conn)].Stream(request):
            yield reply

    async def close(self, conn: Any) -> None:
        self.stubs.pop(id(conn), None)
        await conn.close()


class GrpclibDriver(Driver):
    """grpclib: one `Channel` per connection, handwritten stub (bench/grpclib_echo.py)."""

    async def open(self, *, index: int | None = None, resume: bool = False) -> Any:
        import grpclib.client
        import grpclib.config

        context: ssl.SSLContext | None = None
        if not self.plaintext:
            context = ssl.create_default_context(cafile=str(self.certs / "ca.pem"))
            context.set_alpn_protocols(["h2"])
        config = grpclib.config.Configuration(ssl_target_name_override=SERVER_NAME)
        return grpclib.client.Channel(HOST, self.port, ssl=context, config=config)

    async def say(self, conn: Any, request: EchoRequest) -> EchoReply:
        from .grpclib_echo import EchoGrpclibStub

        reply = await EchoGrpclibStub(conn).say(request)
        assert reply is not None
        return reply

    async def stream(self, conn: Any, request: EchoRequest) -> AsyncIterator[EchoReply]:
        from .grpclib_echo import EchoGrpclibStub

        async with EchoGrpclibStub(conn).stream.open() as call:
            await call.send_message(request, end=True)
            async for reply in call:
                yield reply

    async def close(self, conn: Any) -> None:
        conn.close()


DRIVERS: dict[str, type[Driver]] = {
    "quicflow": QuicFlowDriver,
    **{variant: QuicFlowDriver for variant in VARIANTS},
    "grpcaio": GrpcAioDriver,
    "grpclib": GrpclibDriver,
}


class Worker:
    """Runs the measurements on one system's driver."""

    def __init__(self, system: str, driver: Driver) -> None:
        self.system = system
        self.driver = driver
        self.main: Any = None
        self.idle: list[Any] = []

    async def start(self) -> None:
        self.main = await self.driver.open_ready()

    async def stop(self) -> None:
        await self.close_idle()
        if self.main is not None:
            await self.driver.close(self.main)

    async def handle(self, command: Command) -> Answer:
        """Run one command; every count is capped and every loop has a time limit."""
        op = command["op"]
        limit = float(command.get("time", 5.0))
        deadline = time.perf_counter() + limit
        n = int(command.get("n", 1))
        if op == "latency":
            return await self.latency(n, deadline)
        if op == "rate":
            return await self.rate(int(command["c"]), n, deadline)
        if op == "stream":
            return await self.stream(int(command["size"]), n, int(command["chunk"]), deadline)
        if op == "compressed":
            return await self.compressed(int(command["size"]), n, deadline)
        if op == "connect":
            return await self.connect(n, deadline, bool(command.get("resume", False)))
        if op == "idle":
            return await self.open_idle(n, limit)
        if op == "close_idle":
            return {"closed": await self.close_idle()}
        if op == "oneway" and is_quicflow(self.system):
            return await self.oneway(n, int(command["c"]), deadline)
        return {"error": f"{op!r} does not apply to {self.system}"}

    async def latency(self, n: int, deadline: float) -> Answer:
        samples: list[float] = []
        for _ in range(min(n, 1_000_000)):
            start = time.perf_counter()
            await self.driver.say(self.main, SMALL_REQUEST)
            end = time.perf_counter()
            samples.append(end - start)
            if end > deadline:
                break
        return {
            "n": len(samples),
            "p50_us": percentile(samples, 0.50) * 1e6,
            "p99_us": percentile(samples, 0.99) * 1e6,
        }

    async def rate(self, concurrency: int, n: int, deadline: float) -> Answer:
        done = 0

        async def one_lane() -> None:
            nonlocal done
            while done < n and time.perf_counter() < deadline:
                done += 1
                await self.driver.say(self.main, SMALL_REQUEST)

        start = time.perf_counter()
        await asyncio.gather(*(one_lane() for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
        return {"n": done, "calls_per_s": done / elapsed}

    async def stream(self, size: int, n: int, chunk: int, deadline: float) -> Answer:
        request = EchoRequest(text=str(size), repeat=chunk)
        received = 0
        start = time.perf_counter()
        while received < n and time.perf_counter() < deadline:
            async for reply in self.driver.stream(self.main, request):
                if len(reply.payload) != size:
                    raise RuntimeError(f"reply of {len(reply.payload)} bytes, not {size}")
                received += 1
        elapsed = time.perf_counter() - start
        return {
            "n": received,
            "msgs_per_s": received / elapsed,
            "mib_per_s": received * size / MIB / elapsed,
        }

    async def compressed(self, size: int, n: int, deadline: float) -> Answer:
        """Unary calls with a compressible ``size``-byte payload, gzip both ways."""
        request = EchoRequest(text=COMPRESS_TEXT, payload=compressible(size))
        done = 0
        start = time.perf_counter()
        while done < n and time.perf_counter() < deadline:
            reply = await self.driver.say_gzip(self.main, request)
            if len(reply.payload) != size:
                raise RuntimeError(f"reply of {len(reply.payload)} bytes, not {size}")
            done += 1
        elapsed = time.perf_counter() - start
        return {"n": done, "mib_per_s": done * size / MIB / elapsed}

    async def connect(self, n: int, deadline: float, resume: bool = False) -> Answer:
        samples: list[float] = []
        if resume:  # the first connection gets the ticket the measured ones resume with
            await self.driver.close(await self.driver.open_ready(index=-1, resume=True))
        for _ in range(min(n, 10_000)):
            start = time.perf_counter()
            conn = await self.driver.open_ready(index=-1, resume=resume)
            samples.append(time.perf_counter() - start)
            await self.driver.close(conn)
            if time.perf_counter() > deadline:
                break
        return {"n": len(samples), "p50_ms": percentile(samples, 0.5) * 1e3}

    async def open_idle(self, n: int, limit: float) -> Answer:
        """Open ``n`` more connections (16 at a time) and keep them open."""
        gate = asyncio.Semaphore(16)
        start = time.perf_counter()
        base = len(self.idle)

        async def one(index: int) -> None:
            async with gate:
                self.idle.append(await self.driver.open_ready(index=index))

        tasks = [asyncio.ensure_future(one(base + i)) for i in range(min(n, 100_000))]
        _, pending = await asyncio.wait(tasks, timeout=limit)
        for task in pending:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        failed = sum(1 for t in tasks if t.cancelled() or t.exception() is not None)
        return {"n": len(self.idle), "failed": failed, "elapsed": time.perf_counter() - start}

    async def close_idle(self) -> int:
        idle, self.idle = self.idle, []
        gate = asyncio.Semaphore(64)

        async def one(conn: Any) -> None:
            async with gate:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self.driver.close(conn), 5.0)

        await asyncio.gather(*(one(conn) for conn in idle))
        return len(idle)

    async def oneway(self, n: int, concurrency: int, deadline: float) -> Answer:
        """Send ``n`` untyped messages without acks (``concurrency`` senders at once)."""
        body = payload(SMALL)
        sent = 0

        async def one_lane() -> None:
            nonlocal sent
            while sent < n and time.perf_counter() < deadline:
                sent += 1
                await self.main.send_message(ONEWAY_TYPE, body, wait_ack=False)

        t0 = time.monotonic()
        await asyncio.gather(*(one_lane() for _ in range(concurrency)))
        return {"t0": t0, "t_sent": time.monotonic(), "sent": sent}


async def serve(system: str, port: int, certs: Path, plaintext: bool) -> None:
    """Connect, print ``ready``, then answer commands until stdin closes."""
    worker = Worker(system, DRIVERS[system](port, certs, plaintext))
    await worker.start()
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 20)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    try:
        print("ready", flush=True)
        while line := await reader.readline():
            try:
                command: Command = json.loads(line)
            except ValueError:
                continue
            if command.get("op") == "quit":
                break
            try:
                answer = await worker.handle(command)
            except Exception as exc:  # reported to the benchmark, which shows it
                answer = {"error": f"{type(exc).__name__}: {exc}"}
            sys.stdout.write(encode(answer) + "\n")
            sys.stdout.flush()
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(worker.stop(), 30.0)


def main() -> None:
    """Parse arguments and run the worker."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("system", choices=sorted(DRIVERS))
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--certs", type=Path, required=True, help="from write_dev_certs")
    parser.add_argument("--plaintext", action="store_true", help="grpc peers without TLS")
    parser.add_argument("--grpc-gen", type=Path, help="where echo/echo_pb2_grpc.py was generated")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    raise_fd_limit()
    if args.grpc_gen is not None:
        sys.path.insert(0, str(args.grpc_gen))
    plaintext = args.plaintext and not is_quicflow(args.system)
    asyncio.run(serve(args.system, args.port, args.certs, plaintext))


if __name__ == "__main__":
    main()
