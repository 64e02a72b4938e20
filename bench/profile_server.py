"""The server half of bench/profile.py: Echo under cProfile until stdin closes."""

from __future__ import annotations

import asyncio
import cProfile
import os
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

from echo.echo_pb2 import EchoReply, EchoRequest

from . import counters
from .common import HOST, ONEWAY_TYPE, datagram_size
from .servers import _replies, _say


async def serve(certs: Path, prof: cProfile.Profile) -> None:
    from echo.echo_quicflow import EchoBase

    from quicflow import Server, ServerConfig, ServicerContext
    from quicflow.dispatch import Message

    class Echo(EchoBase):
        async def say(self, request: EchoRequest, context: ServicerContext) -> EchoReply:
            return _say(request)

        async def stream(
            self, request: EchoRequest, context: ServicerContext
        ) -> AsyncIterator[EchoReply]:
            for reply in _replies(request):
                yield reply

    server = Server(
        ServerConfig(
            host=HOST,
            port=0,
            cert_file=str(certs / "server.pem"),
            key_file=str(certs / "server.key"),
            max_message_size=8 << 20,
            max_datagram_size=datagram_size(),
            dispatcher_queue_size=100_000,
        )
    )
    server.add_service(Echo())

    received = 0

    def on_oneway(message: Message) -> None:
        nonlocal received
        received += 1

    server.register_handler(ONEWAY_TYPE, on_oneway)
    # Acked: how many one-way messages arrived (the client's end condition).
    server.register_handler(ONEWAY_TYPE + ".count", lambda message: b"%d" % received)
    await server.start()
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    print(f"ready {server.port}", flush=True)
    prof.enable()
    cpu = time.process_time()
    await reader.readline()  # the client says "start" after its warm-up
    counted = counters.snapshot()
    cpu = time.process_time()
    await reader.read()
    cpu = time.process_time() - cpu
    prof.disable()
    print(f"cpu {cpu}", flush=True)
    if os.environ.get("BENCH_COUNT"):
        print(f"counts {counters.per_unit(counted, counters.snapshot(), 1)}", flush=True)
    await server.stop(grace=1.0)


class _NoProfile(cProfile.Profile):
    def enable(self, *args: object, **kwargs: object) -> None:
        pass

    def disable(self) -> None:
        pass


def main() -> None:
    out = os.environ["QUICFLOW_PROFILE_OUT"]
    if os.environ.get("BENCH_UVLOOP"):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    if os.environ.get("BENCH_COUNT"):
        counters.install()
    cpu = os.environ.get("BENCH_PROFILE_CPU")
    prof = (
        (cProfile.Profile(time.process_time) if cpu else cProfile.Profile())
        if out
        else _NoProfile()
    )
    asyncio.run(serve(Path(sys.argv[1]), prof))
    if out:
        prof.dump_stats(out)


if __name__ == "__main__":
    main()
