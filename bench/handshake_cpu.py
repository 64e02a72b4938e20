"""Server CPU per connection setup, fresh and resumed (issue 16, docs/scale.md).

``python -m bench.handshake_cpu [--count 500] [--engine aioquic] [--profile DIR]`` starts
one QuicFlow `Server` in a child process (Echo, the scale run's settings), then in this
process connects ``--count`` clients one after another (each a `Client` with a push
service, as the scale fleets make them; connected = HELLO/WELCOME done), first with full
handshakes (``tls_resumption=False``), then the same count resuming TLS sessions (the
tickets the first round left), then again fresh and resumed once more: every round's
server CPU (its own ``getrusage`` before and after, read over stdin) divided by the
connects. The clients of a round stay connected until the round's figure is taken, then
close; their teardown is measured apart. ``--restart`` kills the server (SIGKILL) between
the fresh and the resumed rounds and starts it again with the same key files, so the
resumed round measures tickets surviving a restart. ``--profile DIR`` runs the server
under cProfile during each round and writes ``DIR/<round>.prof``. ``--ab VAR=VALUE`` runs
two servers, B with that environment variable, fresh rounds alternating. ``--breakdown
fresh|resumed`` runs server and clients in this process and prints the server side's CPU
per step of a connect (thread time around the transport's and aioquic's calls).

Compare CPU time, not wall time: the machine is shared.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from echo.echo_pb2 import EchoReply, EchoRequest
from echo.echo_quicflow import EchoBase

from .common import HOST, encode


class Echo(EchoBase):
    """The service both sides offer (the client's is what a push would reach)."""

    async def say(self, request: EchoRequest, context: Any) -> EchoReply:
        return EchoReply(text=request.text)


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def serve(args: argparse.Namespace) -> None:
    """The child: a Server answering ``cpu`` / ``profile`` / ``dump`` commands on stdin."""
    from quicflow import Server, ServerConfig

    settings: dict[str, Any] = {"stateless_reset_key_file": str(args.certs / "reset.key")}
    if args.ticket_key:
        settings["tls_ticket_key_file"] = str(args.certs / "ticket.key")
    server = Server(
        ServerConfig(
            host=HOST,
            port=args.port,
            cert_file=str(args.certs / "server.pem"),
            key_file=str(args.certs / "server.key"),
            quic_engine=args.engine,
            **settings,
        )
    )
    server.add_service(Echo())
    await server.start()
    prof: cProfile.Profile | None = None
    print(f"ready {server.port}", flush=True)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := await reader.readline():
        cmd = json.loads(line)
        answer: dict[str, Any] = {"cpu_s": _cpu(), "sessions": len(server.list_clients())}
        listener = server._listener
        tickets = getattr(listener, "tickets", None)
        answer["resumed"] = getattr(tickets, "resumed", 0)
        if cmd.get("op") == "profile":
            prof = cProfile.Profile(time.process_time)
            prof.enable()
        elif cmd.get("op") == "dump" and prof is not None:
            prof.disable()
            prof.dump_stats(cmd["path"])
            prof = None
        print(encode(answer), flush=True)
    await server.stop(grace=0.5)


class Child:
    """The server process, driven over stdin."""

    def __init__(
        self,
        args: argparse.Namespace,
        certs: Path,
        port: int = 0,
        env: dict[str, str] | None = None,
    ) -> None:
        argv = [sys.executable, "-m", "bench.handshake_cpu", "--serve", "--certs", str(certs)]
        argv += ["--port", str(port), "--engine", args.engine]
        if args.ticket_key:
            argv.append("--ticket-key")
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
            env={**os.environ, **(env or {})},
        )
        assert self.proc.stdout is not None
        ready = self.proc.stdout.readline().split()
        if not ready or ready[0] != "ready":
            raise RuntimeError(f"server did not start: {ready}")
        self.port = int(ready[1])

    def ask(self, **cmd: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        answer: dict[str, Any] = json.loads(self.proc.stdout.readline())
        return answer

    def kill(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.kill()


async def one_round(
    child: Child, base: Any, count: int, name: str, profile: Path | None
) -> dict[str, Any]:
    """``count`` sequential connects; the server's CPU for them and for their closes."""
    from quicflow import Client

    if profile is not None:
        child.ask(op="profile")
    before = child.ask()
    mine = _cpu()
    clients = []
    for i in range(count):
        client = Client(replace(base, client_id=f"{name}-{i}"))
        client.add_service(Echo())
        await client.connect()
        clients.append(client)
    await asyncio.sleep(0.3)  # the last connects' acks and first pings settle
    after = child.ask()
    mine = _cpu() - mine
    if profile is not None:
        child.ask(op="dump", path=str(profile / f"{name}.prof"))
    await asyncio.gather(*(client.close() for client in clients))
    await asyncio.sleep(0.5)
    closed = child.ask()
    return {
        "round": name,
        "connects": count,
        "resumed": after["resumed"] - before["resumed"],
        "server_ms_per_connect": (after["cpu_s"] - before["cpu_s"]) * 1000 / count,
        "server_ms_per_close": (closed["cpu_s"] - after["cpu_s"]) * 1000 / count,
        "client_ms_per_connect": mine * 1000 / count,
    }


async def run(args: argparse.Namespace) -> None:
    from quicflow import ClientConfig
    from quicflow.certs import write_dev_certs
    from quicflow.transport.tls import CLIENT_TICKETS

    with tempfile.TemporaryDirectory(prefix="qf-hs-") as scratch:
        certs = Path(scratch)
        write_dev_certs(certs)
        if args.ab:
            await ab(args, certs)
            return
        child = Child(args, certs)
        try:
            base = ClientConfig(
                host=HOST,
                port=child.port,
                ca_file=str(certs / "ca.pem"),
                server_name="localhost",
                quic_engine=args.engine,
            )
            fresh = replace(base, tls_resumption=False)
            rounds = []
            CLIENT_TICKETS.clear()
            await one_round(child, base, 1, "warm", None)  # a ticket for the first resume
            for n in range(args.repeat):
                rounds.append(await one_round(child, fresh, args.count, f"fresh{n}", args.profile))
                if args.restart:
                    child.kill()
                    child = Child(args, certs, child.port)
                rounds.append(await one_round(child, base, args.count, f"resumed{n}", args.profile))
            for r in rounds:
                print(encode(r), flush=True)
        finally:
            child.stop()


async def ab(args: argparse.Namespace, certs: Path) -> None:
    """``--ab VAR=VALUE``: two servers, B with VAR set (and this process's clients too while
    they connect to B), fresh rounds alternating A, B, A, B...; each round's figures."""
    from quicflow import ClientConfig

    name, _, value = args.ab.partition("=")
    servers = {"A": Child(args, certs), "B": Child(args, certs, env={name: value})}
    try:
        figures: dict[str, list[float]] = {"A": [], "B": []}
        for n in range(args.repeat):
            for side, child in servers.items():
                if side == "B":
                    os.environ[name] = value
                config = ClientConfig(
                    host=HOST,
                    port=child.port,
                    ca_file=str(certs / "ca.pem"),
                    server_name="localhost",
                    quic_engine=args.engine,
                    tls_resumption=args.ab_resumed,
                )
                if args.ab_resumed:
                    await one_round(child, config, 1, f"warm{side}{n}", None)
                r = await one_round(child, config, args.count, f"{side}{n}", None)
                os.environ.pop(name, None)
                figures[side].append(r["server_ms_per_connect"])
                print(encode(r), flush=True)
        for side, values in figures.items():
            values.sort()
            print(f"# {side}: median {values[len(values) // 2]:.3f} ms, all {values}", flush=True)
    finally:
        for child in servers.values():
            child.stop()


async def breakdown(args: argparse.Namespace) -> None:
    """``--breakdown``: server and clients in this process; the server side's CPU time
    (``time.thread_time``) in each step of a connect, per connect, inclusive (a step's
    figure contains the steps it calls). Only calls made for the server's connections
    count; asyncio's own loop work and the clients are left out."""
    import functools

    from aioquic import tls
    from aioquic.quic.connection import QuicConnection

    from quicflow import Client, ClientConfig, Server, ServerConfig
    from quicflow import server as server_module
    from quicflow.testing import dev_certs
    from quicflow.transport import quic, server_endpoint

    spent: dict[str, float] = {}
    clock = time.thread_time

    def watch(owner: Any, name: str, label: str, server_side: Any = None) -> None:
        original = getattr(owner, name)

        @functools.wraps(original)
        def timed(self: Any, *a: Any, **k: Any) -> Any:
            if server_side is not None and not server_side(self):
                return original(self, *a, **k)
            start = clock()
            try:
                return original(self, *a, **k)
            finally:
                spent[label] = spent.get(label, 0.0) + clock() - start

        setattr(owner, name, timed)

    def server_conn(conn: Any) -> bool:
        return not conn._is_client

    def server_proto(proto: Any) -> bool:
        return not proto._quic._is_client

    endpoint = server_endpoint.QuicFlowServer
    watch(endpoint, "datagram_received", "a endpoint: every datagram the server reads")
    watch(endpoint, "_accept", "b   endpoint: a new connection (engine objects, protocol)")
    watch(quic.QuicFlowProtocol, "datagram_received", "c   protocol: a datagram", server_proto)
    if args.engine == "qh3":
        from qh3 import tls as qh3_tls  # type: ignore[import-untyped,unused-ignore]
        from qh3.quic.connection import (  # type: ignore[import-untyped,unused-ignore]
            QuicConnection as Qh3Connection,
        )

        engine_conn: Any = Qh3Connection
        engine_tls: Any = qh3_tls
    else:
        engine_conn, engine_tls = QuicConnection, tls
    watch(engine_conn, "receive_datagram", "d     engine: receive_datagram", server_conn)
    watch(engine_tls.Context, "_server_handle_hello", "e       TLS: ClientHello -> server flight")
    watch(engine_tls.Context, "_server_handle_finished", "f       TLS: client Finished (ticket)")
    watch(quic.QuicFlowProtocol, "_process_events", "g     protocol: events", server_proto)
    watch(quic.QuicFlowProtocol, "transmit", "h   protocol: transmit", server_proto)
    watch(engine_conn, "datagrams_to_send", "i     engine: datagrams_to_send", server_conn)
    watch(server_module._ServerConnection, "_open_session", "j QuicFlow: open session, WELCOME")
    watch(server_module.Server, "_admit", "k QuicFlow: admit session")
    certs = dev_certs()
    scratch = tempfile.TemporaryDirectory(prefix="qf-hs-")
    server = Server(
        ServerConfig(
            host=HOST,
            port=0,
            cert_file=str(certs.cert_file),
            key_file=str(certs.key_file),
            gc_walk_limit=0,
            quic_engine=args.engine,
            tls_ticket_key_file=f"{scratch.name}/ticket.key" if args.ticket_key else None,
        )
    )
    server.add_service(Echo())
    await server.start()
    base = ClientConfig(
        host=HOST,
        port=server.port,
        ca_file=str(certs.ca_file),
        server_name="localhost",
        quic_engine=args.engine,
        tls_resumption=args.breakdown == "resumed",
    )
    warm = Client(replace(base, client_id="warm"))
    await warm.connect()
    await warm.close()
    spent.clear()
    clients = []
    for i in range(args.count):
        client = Client(replace(base, client_id=f"c{i}"))
        client.add_service(Echo())
        await client.connect()
        clients.append(client)
    await asyncio.sleep(0.3)
    print(f"# {args.breakdown}: server CPU per connect (us), inclusive, {args.count} connects")
    for label in sorted(spent):
        print(f"{spent[label] * 1e6 / args.count:8.1f}  {label[2:]}")
    await asyncio.gather(*(client.close() for client in clients))
    await server.stop(grace=0.2)
    scratch.cleanup()


def main() -> None:
    """Parse arguments; run the rounds, or (``--serve``) be the server child."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--certs", type=Path)
    parser.add_argument("--count", type=int, default=500)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--engine", default="aioquic")
    parser.add_argument("--ticket-key", action="store_true", help="tls_ticket_key_file")
    parser.add_argument("--restart", action="store_true")
    parser.add_argument("--profile", type=Path)
    parser.add_argument("--ab", help="VAR=VALUE: A/B two servers, B with VAR set (fresh rounds)")
    parser.add_argument("--ab-resumed", action="store_true", help="A/B resumed rounds")
    parser.add_argument(
        "--breakdown", choices=["fresh", "resumed"], help="in-process: CPU per step of a connect"
    )
    args = parser.parse_args()
    if args.serve:
        asyncio.run(serve(args))
    elif args.breakdown:
        asyncio.run(breakdown(args))
    else:
        start = time.time()
        asyncio.run(run(args))
        print(f"# {time.time() - start:.1f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
