"""Call the example Echo server with each of the four call kinds.

PYTHONPATH=generated python -m examples.echo.client --port 4433 --certs certs
"""

from __future__ import annotations

import argparse
import time
from collections.abc import AsyncIterator
from pathlib import Path

from echo.echo_pb2 import EchoRequest
from echo.echo_quicflow import EchoStub

import quicflow
from quicflow import Client, ClientConfig, RpcError, StatusCode


async def run(host: str, port: int, certs: Path) -> None:
    """Connect, make one call of each kind, and show an error status."""
    config = ClientConfig(
        host=host, port=port, ca_file=str(certs / "ca.pem"), server_name="localhost"
    )
    started = time.perf_counter()
    async with Client(config) as client:
        print(f"connected in {(time.perf_counter() - started) * 1000:.1f} ms (QUIC + TLS 1.3)")
        stub = EchoStub(client)

        call = stub.say(EchoRequest(text="hello"), timeout=2.0, metadata=[("user", "demo")])
        reply = await call
        code = (await call.code()).name
        print(f"unary          say('hello') -> {reply.text!r}, status {code}")

        ticks = stub.stream(EchoRequest(text="tick", repeat=3))
        texts = [f"{r.text}#{r.index}" async for r in ticks]
        print(f"server stream  stream(repeat=3) -> {texts}")

        reply = await stub.collect([EchoRequest(text=t) for t in ("one", "two", "three")])
        print(f"client stream  collect(one, two, three) -> {reply.text!r}")

        async def words() -> AsyncIterator[EchoRequest]:
            for word in ("quic", "flow"):
                yield EchoRequest(text=word)

        replies = [r.text async for r in stub.chat(words())]
        print(f"bidi           chat(quic, flow) -> {replies}")

        try:
            await stub.say(EchoRequest(text="slow"), timeout=0.000_001)
        except RpcError as exc:
            assert exc.code is StatusCode.DEADLINE_EXCEEDED
            print(f"deadline       say(timeout=1 µs) -> RpcError {exc.code.name}")


def main() -> None:
    """Parse arguments and run."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=4433)
    parser.add_argument("--certs", type=Path, default=Path("certs"))
    args = parser.parse_args()
    quicflow.run(run(args.host, args.port, args.certs))


if __name__ == "__main__":
    main()
