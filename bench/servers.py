"""One benchmark server per process: ``python -m bench.servers SYSTEM --port N``.

SYSTEM is ``quicflow``, ``grpcaio`` or ``grpclib``; each serves the same Echo
service (proto/echo/echo.proto) on 127.0.0.1 with TLS from ``--certs`` and
prints ``ready <port>`` once it accepts calls. Say echoes the request's
payload; Stream sends ``repeat`` replies whose payload size is the request's
``text`` (bytes, built once per size), so 1 MiB messages cost no per-message
allocation in any of the three.

Control: one JSON command per line on stdin, one JSON answer per line on
stdout. Every server stops when stdin closes, so a benchmark that dies takes
its servers with it. The QuicFlow server also does the server-side work of
the push measurements (``arm``/``oneway_wait``, ``acked``, ``broadcast``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import json
import logging
import ssl
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, cast

from echo.echo_pb2 import EchoReply, EchoRequest

from .common import (
    COMPRESS_TEXT,
    HOST,
    IDLE_CLIENT_PREFIX,
    MAX_MESSAGE,
    ONEWAY_TYPE,
    SMALL,
    SYSTEMS,
    datagram_size,
    encode,
    is_quicflow,
    payload,
    raise_fd_limit,
    size_of,
)

Command = dict[str, Any]
Answer = dict[str, Any]
Control = Callable[[Command], Awaitable[Answer]]

_payloads: dict[int, bytes] = {}


def _payload_for(text: str) -> bytes:
    size = size_of(text)
    cached = _payloads.get(size)
    if cached is None:
        cached = _payloads[size] = payload(size)
    return cached


def _say(request: EchoRequest) -> EchoReply:
    return EchoReply(text=request.text, payload=request.payload)


def _replies(request: EchoRequest) -> list[EchoReply]:
    """The replies of a Stream call (the same message object each time: no copies)."""
    reply = EchoReply(payload=_payload_for(request.text))
    return [reply] * min(request.repeat, 1_000_000)


async def _stdin_lines() -> AsyncIterator[str]:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 20)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := await reader.readline():
        yield line.decode()


def _say_line(message: Answer) -> None:
    sys.stdout.write(encode(message) + "\n")
    sys.stdout.flush()


async def _control_loop(control: Control | None) -> None:
    """Answer commands until stdin closes (or a ``quit`` command)."""
    async for line in _stdin_lines():
        try:
            command: Command = json.loads(line)
        except ValueError:
            continue
        op = command.get("op")
        if op == "quit":
            return
        if control is None:
            _say_line({"error": f"unknown op {op!r}"})
            continue
        try:
            _say_line(await control(command))
        except Exception as exc:  # reported to the benchmark, which shows it
            _say_line({"error": f"{type(exc).__name__}: {exc}"})


# -- QuicFlow --


async def serve_quicflow(port: int, certs: Path) -> None:
    """Serve Echo with QuicFlow and do the push measurements' server side."""
    from echo.echo_quicflow import EchoBase, EchoStub

    from quicflow import Server, ServerConfig, ServicerContext
    from quicflow.dispatch import Message
    from quicflow.push import ClientChannel

    class Echo(EchoBase):
        async def say(self, request: EchoRequest, context: ServicerContext) -> EchoReply:
            if request.text == COMPRESS_TEXT:
                context.set_compression("gzip")
            return _say(request)

        async def stream(
            self, request: EchoRequest, context: ServicerContext
        ) -> AsyncIterator[EchoReply]:
            for reply in _replies(request):
                yield reply

    server = Server(
        ServerConfig(
            host=HOST,
            port=port,
            cert_file=str(certs / "server.pem"),
            key_file=str(certs / "server.key"),
            max_message_size=MAX_MESSAGE,
            max_datagram_size=datagram_size(),
            # One-way sends are not acked: a full queue would drop them silently.
            dispatcher_queue_size=100_000,
        )
    )
    server.add_service(Echo())

    class OneWay:
        target = 0
        count = 0
        first = 0.0
        last = 0.0
        reached = asyncio.Event()

    def on_oneway(message: Message) -> None:
        now = time.monotonic()
        if OneWay.count == 0:
            OneWay.first = now
        OneWay.count += 1
        OneWay.last = now
        if OneWay.count >= OneWay.target:
            OneWay.reached.set()

    server.register_handler(ONEWAY_TYPE, on_oneway)
    request = EchoRequest(payload=payload(SMALL))

    async def say(channel: ClientChannel) -> EchoReply:
        return await EchoStub(channel).say(request)

    async def control(command: Command) -> Answer:
        op = command["op"]
        if op == "arm":
            OneWay.target, OneWay.count = int(command["n"]), 0
            OneWay.reached = asyncio.Event()
            return {"armed": True}
        if op == "oneway_wait":
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(OneWay.reached.wait(), float(command["timeout"]))
            return {"first": OneWay.first, "last": OneWay.last, "count": OneWay.count}
        if op == "acked":
            n, timeout = int(command["n"]), float(command["timeout"])
            start = time.perf_counter()
            promises = [
                server.async_send(str(command["client_id"]), say, timeout=timeout) for _ in range(n)
            ]
            results = await asyncio.gather(*(_awaited(p) for p in promises), return_exceptions=True)
            elapsed = time.perf_counter() - start
            ok = sum(1 for r in results if isinstance(r, EchoReply))
            return {"elapsed": elapsed, "ok": ok}
        if op == "broadcast":
            start = time.perf_counter()
            result = await server.broadcast(
                say, labels={"role": "idle"}, client_timeout=float(command["timeout"])
            )
            return {
                "elapsed": time.perf_counter() - start,
                "clients": len(result),
                "delivered": result.delivered,
                "failed": result.failed,
                "timed_out": result.timed_out,
            }
        if op == "clients":
            ids = [info.client_id for info in server.list_clients()]
            return {"idle": sum(1 for i in ids if i.startswith(IDLE_CLIENT_PREFIX))}
        return {"error": f"unknown op {op!r}"}

    await server.start()
    try:
        print(f"ready {server.port}", flush=True)
        await _control_loop(control)
    finally:
        await server.stop(grace=1.0)


async def _awaited(awaitable: Awaitable[EchoReply]) -> EchoReply:
    return await awaitable


# -- grpc.aio --


async def serve_grpcaio(port: int, certs: Path | None) -> None:
    """Serve Echo with grpc.aio (servicer generated by grpc_tools at run time)."""
    import grpc  # type: ignore[import-untyped]

    pb2_grpc: Any = importlib.import_module("echo.echo_pb2_grpc")

    class Echo(pb2_grpc.EchoServicer):  # type: ignore[misc]
        async def Say(self, request: EchoRequest, context: Any) -> EchoReply:
            if request.text == COMPRESS_TEXT:
                context.set_compression(grpc.Compression.Gzip)
            return _say(request)

        async def Stream(self, request: EchoRequest, context: Any) -> AsyncIterator[EchoReply]:
            for reply in _replies(request):
                yield reply

    options = [
        ("grpc.max_receive_message_length", MAX_MESSAGE),
        ("grpc.max_send_message_length", MAX_MESSAGE),
    ]
    server: Any = grpc.aio.server(options=options)
    pb2_grpc.add_EchoServicer_to_server(Echo(), server)
    address = f"{HOST}:{port}"
    if certs is None:
        bound = server.add_insecure_port(address)
    else:
        credentials = grpc.ssl_server_credentials(
            [((certs / "server.key").read_bytes(), (certs / "server.pem").read_bytes())]
        )
        bound = server.add_secure_port(address, credentials)
    await server.start()
    try:
        print(f"ready {bound}", flush=True)
        await _control_loop(None)
    finally:
        await server.stop(grace=1.0)


# -- grpclib --


async def serve_grpclib(port: int, certs: Path | None) -> None:
    """Serve Echo with grpclib (handwritten handler, bench/grpclib_echo.py)."""
    import grpclib.server

    from .grpclib_echo import EchoGrpclibBase

    class Echo(EchoGrpclibBase):
        async def say(self, stream: grpclib.server.Stream[EchoRequest, EchoReply]) -> None:
            request = await stream.recv_message()
            assert request is not None
            await stream.send_message(_say(request))

        async def stream(self, stream: grpclib.server.Stream[EchoRequest, EchoReply]) -> None:
            request = await stream.recv_message()
            assert request is not None
            for reply in _replies(request):
                await stream.send_message(reply)

    context: ssl.SSLContext | None = None
    if certs is not None:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(certs / "server.pem", certs / "server.key")
        context.set_alpn_protocols(["h2"])
    server = grpclib.server.Server([Echo()])
    await server.start(HOST, port, ssl=context)
    try:
        listening = cast(asyncio.Server, server._server)
        print(f"ready {listening.sockets[0].getsockname()[1]}", flush=True)
        await _control_loop(None)
    finally:
        server.close()
        await server.wait_closed()


def main() -> None:
    """Parse arguments and serve until stdin closes."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("system", choices=SYSTEMS)
    parser.add_argument("--port", type=int, default=0, help="0: any free port")
    parser.add_argument("--certs", type=Path, required=True, help="from write_dev_certs")
    parser.add_argument("--plaintext", action="store_true", help="grpc peers without TLS")
    parser.add_argument("--grpc-gen", type=Path, help="where echo/echo_pb2_grpc.py was generated")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    raise_fd_limit()
    if args.grpc_gen is not None:
        sys.path.insert(0, str(args.grpc_gen))
    certs = None if args.plaintext else args.certs
    if is_quicflow(args.system):
        asyncio.run(serve_quicflow(args.port, args.certs))
    elif args.system == "grpcaio":
        asyncio.run(serve_grpcaio(args.port, certs))
    else:
        asyncio.run(serve_grpclib(args.port, certs))


if __name__ == "__main__":
    main()
