"""Run the example Echo server until Ctrl-C (or SIGTERM), then stop gracefully.

PYTHONPATH=generated python -m examples.echo.server --port 4433 --certs certs
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from pathlib import Path

import quicflow
from quicflow import Server, ServerConfig
from quicflow.certs import write_dev_certs
from quicflow.logs import configure_logging

from .service import Echo


async def serve(host: str, port: int, certs: Path, ready_file: Path | None = None) -> None:
    """Serve Echo on ``host:port`` with certificates from ``certs`` (made if missing)."""
    if not (certs / "server.pem").exists():
        write_dev_certs(certs)
    server = Server(
        ServerConfig(
            host=host,
            port=port,
            cert_file=str(certs / "server.pem"),
            key_file=str(certs / "server.key"),
        )
    )
    server.add_service(Echo())
    await server.start()
    print(f"echo server listening on {host}:{server.port}", flush=True)
    if ready_file is not None:
        ready_file.write_text(str(server.port))  # noqa: ASYNC240 (tiny, once)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    print("echo server stopping (5 s grace for calls in flight)", flush=True)
    await server.stop(grace=5.0)


def main() -> None:
    """Parse arguments and serve."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=4433)
    parser.add_argument("--certs", type=Path, default=Path("certs"))
    parser.add_argument("--ready-file", type=Path, help="write the bound port here once serving")
    args = parser.parse_args()
    configure_logging()  # LOG_LEVEL (default INFO); QUICFLOW_LOG_FORMAT=json for JSON lines
    quicflow.run(serve(args.host, args.port, args.certs, args.ready_file))


if __name__ == "__main__":
    main()
