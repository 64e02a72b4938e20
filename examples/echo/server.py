"""Run the example Echo server until Ctrl-C (or SIGTERM), then stop gracefully.

PYTHONPATH=generated python -m examples.echo.server --port 4433 --certs certs

Settings come as for any QuicFlow server (`ServerConfig.load`): QUICFLOW_SERVER_<FIELD>
environment variables (QUICFLOW_SERVER_PORT=5000, QUICFLOW_SERVER_MAX_MESSAGE_SIZE=...),
then the flags given here, which win. Without a certificate from either
(QUICFLOW_SERVER_CERT_FILE or --certs), development certificates in ./certs are used
(written if missing).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
from pathlib import Path
from typing import Any

import quicflow
from quicflow import Server, ServerConfig
from quicflow.certs import write_dev_certs
from quicflow.logs import configure_logging

from .service import Echo


async def serve(
    host: str | None = None,
    port: int | None = None,
    certs: Path | None = None,
    ready_file: Path | None = None,
) -> None:
    """Serve Echo with ``ServerConfig.load``'s settings (QUICFLOW_SERVER_* variables), the
    arguments given overriding them; ``certs``: a directory with server.pem/server.key
    (made if missing), by default ./certs unless QUICFLOW_SERVER_CERT_FILE names one."""
    overrides: dict[str, Any] = {}
    if host is not None:
        overrides["host"] = host
    if port is not None:
        overrides["port"] = port
    if certs is None and "QUICFLOW_SERVER_CERT_FILE" not in os.environ:
        certs = Path("certs")
    if certs is not None:
        if not (certs / "server.pem").exists():
            write_dev_certs(certs)
        overrides["cert_file"] = str(certs / "server.pem")
        overrides["key_file"] = str(certs / "server.key")
    config = ServerConfig.load(**overrides)
    server = Server(config)
    server.add_service(Echo())
    await server.start()
    print(f"echo server listening on {config.host}:{server.port}", flush=True)
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
    parser.add_argument("--host", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="UDP port (default 4433; 0: a free one)")
    parser.add_argument(
        "--certs", type=Path, help="directory of server.pem and server.key (default ./certs)"
    )
    parser.add_argument("--ready-file", type=Path, help="write the bound port here once serving")
    args = parser.parse_args()
    configure_logging()  # LOG_LEVEL (default INFO); QUICFLOW_LOG_FORMAT=json for JSON lines
    quicflow.run(serve(args.host, args.port, args.certs, args.ready_file))


if __name__ == "__main__":
    main()
