"""A QuicFlow server process for the process-fault tests (killed with SIGKILL).

``python tests/faults/proc_server.py --port P --certs DIR`` serves the counting
Echo with a scaled heartbeat and prints ``listening <port>`` once ready.
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

from quicflow import Server, ServerConfig
from tests.faults.harness import CountingEcho


async def serve(args: argparse.Namespace) -> None:
    server = Server(
        ServerConfig(
            host="127.0.0.1",
            port=args.port,
            cert_file=str(args.certs / "server.pem"),
            key_file=str(args.certs / "server.key"),
            heartbeat_interval=args.hb_interval,
            heartbeat_check_interval=args.hb_interval / 4,
            min_heartbeat_interval=0.05,
            max_missed_heartbeats=3,
            stateless_reset_key_file=args.reset_key_file,
            tls_ticket_key_file=args.ticket_key_file,
        )
    )
    server.add_service(CountingEcho())
    await server.start()
    tickets = getattr(server._listener, "tickets", None)
    # How many offered session tickets this process opened (test_stateless_reset.py).
    server.register_handler(
        "tickets.resumed", lambda message: b"%d" % getattr(tickets, "resumed", 0)
    )
    print(f"listening {server.port}", flush=True)
    await asyncio.Event().wait()  # until killed


def main() -> None:
    """Parse arguments and serve until killed."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--certs", type=Path, required=True)
    parser.add_argument("--hb-interval", type=float, default=1.0)
    parser.add_argument("--reset-key-file", default=None)
    parser.add_argument("--ticket-key-file", default=None)
    asyncio.run(serve(parser.parse_args()))


if __name__ == "__main__":
    main()
