"""Reference cycles a connection's teardown leaves, per way a connection ends.

``python -m bench.teardown_gc [--clients N] [--paths close,evict,...]`` runs a QuicFlow
server and ``N`` clients in this process over loopback, with the garbage collector off.
Each client has a session, serves a push service and makes one call of each kind (the
server pushes one call to it too); then every connection ends one way, the collector
runs once with ``gc.DEBUG_SAVEALL`` and what it found is grouped by connected component:
a component holding a server connection's objects counts for the server, one holding a
client's for the client. Printed: objects found per ended connection, per side, and the
commonest types. Reference counting frees whatever is not in a cycle, so 0 means the
teardown leaves nothing for the collector (what `quicflow.gcpause` relies on).

Paths: ``close`` (the client closes), ``evict`` (the client goes silent, as if killed;
the server evicts it by heartbeat), ``idle`` (no session: the server's hello timeout),
``handshake`` (an Initial and then silence: QUIC's idle timeout during the handshake),
``reset`` (the server is killed and restarted with the same reset key; each client hears
a stateless reset), ``stop`` (the server stops with clients connected), ``replaced`` (the
same client ids connect again), ``refused`` (``max_connections`` reached), ``failed`` (a
connect that times out). ``--churn R`` instead runs R rounds of clients that connect,
are frozen with the heap and close, printing the frozen objects and RSS after each.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import socket
import sys
import weakref
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from echo.echo_pb2 import EchoReply, EchoRequest
from echo.echo_quicflow import EchoBase, EchoStub

from quicflow import Client, ClientConfig, Server, ServerConfig, ServicerContext
from quicflow.testing import dev_certs
from quicflow.transport.engine_aioquic import AioquicFlowConnection
from quicflow.transport.quic import QuicFlowProtocol

PATHS = ("close", "evict", "idle", "handshake", "reset", "stop", "replaced", "refused", "failed")

FAST_SERVER: dict[str, Any] = {
    "heartbeat_interval": 0.2,
    "heartbeat_check_interval": 0.05,
    "max_missed_heartbeats": 3,
    "heartbeat_timeout": 0.3,
    "min_heartbeat_interval": 0.05,
    "hello_timeout": 0.3,
    "idle_timeout": 1.0,
    "gc_walk_limit": 0,
}
FAST_CLIENT: dict[str, Any] = {
    "heartbeat_interval": 0.2,
    "heartbeat_timeout": 0.3,
}


class Echo(EchoBase):
    """Every call kind, answered at once."""

    async def say(self, request: EchoRequest, context: ServicerContext) -> EchoReply:
        if request.text == "hang":
            await asyncio.sleep(3600)  # in flight when the connection ends
        return EchoReply(text=request.text)

    async def stream(
        self, request: EchoRequest, context: ServicerContext
    ) -> AsyncIterator[EchoReply]:
        for _ in range(2):
            yield EchoReply(text=request.text)

    async def collect(
        self, requests: AsyncIterator[EchoRequest], context: ServicerContext
    ) -> EchoReply:
        return EchoReply(text="".join([r.text async for r in requests]))

    async def chat(
        self, requests: AsyncIterator[EchoRequest], context: ServicerContext
    ) -> AsyncIterator[EchoReply]:
        async for request in requests:
            yield EchoReply(text=request.text)


@dataclass
class Found:
    """What one collection found, split by side."""

    ended: int
    server: Counter[str] = field(default_factory=Counter)
    client: Counter[str] = field(default_factory=Counter)
    other: Counter[str] = field(default_factory=Counter)
    killed: Counter[str] = field(default_factory=Counter)
    held: Counter[str] = field(default_factory=Counter)
    """Ended connections (`QuicFlowProtocol`) still alive after the collection, per side:
    something live holds them (0 found as garbage means nothing if they were not freed)."""

    def per_connection(self, side: str) -> float:
        counts: Counter[str] = getattr(self, side)
        return sum(counts.values()) / max(1, self.ended)


KILLED: set[int] = set()
"""Ids of the connections of a server killed in the ``reset`` path: a process that is
gone. (Not a WeakSet: the collector clears weak references to what it finds.)"""


def _engine_types() -> tuple[type, ...]:
    try:
        from quicflow.transport.engine_qh3 import Qh3FlowConnection
    except ImportError:
        return (AioquicFlowConnection,)
    return (AioquicFlowConnection, Qh3FlowConnection)


ENGINE_TYPES = _engine_types()  # imported now: an import's own garbage must not count


def _side(obj: object, engines: tuple[type, ...]) -> str | None:
    if isinstance(obj, (QuicFlowProtocol, *engines)) and id(obj) in KILLED:
        return "killed"
    if isinstance(obj, QuicFlowProtocol):
        return "client" if obj._router is None else "server"
    if isinstance(obj, engines):
        return "client" if getattr(obj, "_is_client", False) else "server"
    return None


def _edge(source: object, target: object) -> str:
    """How ``source`` refers to ``target`` (an attribute name, a key, or the type)."""
    names: dict[str, Any] = {}
    with contextlib.suppress(TypeError):
        names.update(vars(source))
    for slot in getattr(type(source), "__slots__", ()):
        with contextlib.suppress(AttributeError):
            names[slot] = getattr(source, slot)
    for attr in ("cr_frame", "f_locals", "__self__", "__func__", "func", "args", "gi_frame"):
        with contextlib.suppress(Exception):
            names[attr] = getattr(source, attr)
    if isinstance(source, dict):
        names.update({repr(k)[:30]: v for k, v in source.items()})
    for name, value in names.items():
        if value is target:
            return f".{name}"
    return ""


def explain(garbage: list[object], kind: str, limit: int = 3) -> None:
    """Print a shortest reference cycle through one object of type ``kind``."""
    index = {id(obj): obj for obj in garbage}
    shown = 0
    for start in garbage:
        if type(start).__qualname__ != kind:
            continue
        # BFS from start back to start
        parents: dict[int, int] = {}
        frontier = [start]
        found = False
        while frontier and not found:
            nxt = []
            for obj in frontier:
                for ref in gc.get_referents(obj):
                    if id(ref) not in index:
                        continue
                    if ref is start:
                        parents[id(start)] = id(obj)
                        found = True
                        break
                    if id(ref) not in parents:
                        parents[id(ref)] = id(obj)
                        nxt.append(ref)
                if found:
                    break
            frontier = nxt
        if not found:
            continue
        chain = [start]
        cur = parents[id(start)]
        while cur != id(start):
            chain.append(index[cur])
            cur = parents[cur]
        chain.reverse()
        chain = [start, *chain[:-1]] if chain[0] is not start else chain
        text = type(chain[0]).__qualname__
        for a, b in zip(chain, [*chain[1:], start], strict=True):
            text += f" -{_edge(a, b)}-> {type(b).__qualname__}"
        print("   cycle:", text)
        shown += 1
        if shown >= limit:
            return


EXPLAIN: list[str] = []


def collect_garbage(ended: int) -> Found:
    """Collect once, keeping what was found, and sort it into connected components."""
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        gc.collect()
        garbage = list(gc.garbage)
        gc.garbage.clear()
        for kind in EXPLAIN:
            explain(garbage, kind)
    finally:
        gc.set_debug(0)
    index = {id(obj): i for i, obj in enumerate(garbage)}
    parent = list(range(len(garbage)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, obj in enumerate(garbage):
        for ref in gc.get_referents(obj):
            j = index.get(id(ref))
            if j is not None:
                a, b = find(i), find(j)
                if a != b:
                    parent[a] = b
    sides: dict[int, str] = {}
    engines = ENGINE_TYPES
    for i, obj in enumerate(garbage):
        side = _side(obj, engines)
        if side is not None:
            root = find(i)
            if sides.get(root) not in ("server", "killed"):
                sides[root] = side
    found = Found(ended)
    for i, obj in enumerate(garbage):
        side = sides.get(find(i), "other")
        getattr(found, side)[type(obj).__qualname__] += 1
    del garbage
    return found


async def until(condition: Callable[[], bool], within: float = 20.0) -> None:
    """Wait (real time) until ``condition()`` holds."""
    async with asyncio.timeout(within):
        while not condition():  # noqa: ASYNC110 - a poll
            await asyncio.sleep(0.01)


class Bench:
    """A server (its settings fast) and the certificates clients need."""

    def __init__(self, **options: Any) -> None:
        self.certs = dev_certs()
        self.reset_key = Path(self.certs.cert_file).parent / "teardown-reset.key"
        self.options = options
        self.server = self.new_server(0)

    def new_server(self, port: int) -> Server:
        server = Server(
            ServerConfig(
                host="127.0.0.1",
                port=port,
                cert_file=str(self.certs.cert_file),
                key_file=str(self.certs.key_file),
                stateless_reset_key_file=str(self.reset_key),
                **{**FAST_SERVER, **self.options},
            )
        )
        server.add_service(Echo())
        server.register_handler("m", lambda message: b"ok")
        return server

    def client(self, i: int, port: int = 0, **overrides: Any) -> Client:
        client = Client(
            ClientConfig(
                host="127.0.0.1",
                port=port or self.server.port,
                ca_file=str(self.certs.ca_file),
                server_name="localhost",
                client_id=f"c{i}",
                **{**FAST_CLIENT, **overrides},
            )
        )
        client.add_service(Echo())  # what the server pushes to
        client.register_handler("m", lambda message: b"ok")
        return client


async def busy(bench: Bench, client: Client, hanging: list[asyncio.Task[Any]]) -> None:
    """One call of each kind from the client, and one push from the server; then one
    call each way left in flight (added to ``hanging``)."""
    stub = EchoStub(client)
    await stub.say(EchoRequest(text="a"), timeout=5)
    async for _ in stub.stream(EchoRequest(text="b"), timeout=5):
        pass

    async def requests() -> AsyncIterator[EchoRequest]:
        yield EchoRequest(text="c")
        yield EchoRequest(text="d")

    await stub.collect(requests(), timeout=5)
    async for _ in stub.chat(requests(), timeout=5):
        pass
    server = bench.server
    push = EchoStub(server.client(client.client_id))
    await push.say(EchoRequest(text="p"), timeout=5)
    await client.send_message("m", b"x", timeout=5)
    await client.send_message("m", b"x", wait_ack=False)
    await server.send_to(client.client_id, "m", b"y", timeout=5)
    await server.send_to(client.client_id, "m", b"y", wait_ack=False)
    await server.async_send(
        client.client_id, lambda ch: EchoStub(ch).say(EchoRequest(text="q")), timeout=5
    )
    await server.broadcast(lambda ch: EchoStub(ch).say(EchoRequest(text="b")), client_timeout=5)
    hanging.append(asyncio.ensure_future(stub.say(EchoRequest(text="hang"))))
    hanging.append(asyncio.ensure_future(push.say(EchoRequest(text="hang"))))
    promise = server.async_send(
        client.client_id, lambda ch: EchoStub(ch).say(EchoRequest(text="hang")), timeout=3600
    )
    hanging.append(asyncio.ensure_future(_wait(promise)))
    await asyncio.sleep(0.01)


async def _wait(awaitable: Awaitable[Any]) -> Any:
    return await awaitable


def silence(client: Client) -> None:
    """Make a client vanish like a killed process: no more datagrams, no timers."""
    link = client._link
    if link is not None:
        link.stop()
    conn = client.connection
    assert conn is not None
    for handle in (conn._timer, conn._transmit_task):
        if handle is not None:
            handle.cancel()
    conn._timer = conn._transmit_task = None
    conn.transmit = lambda: None  # type: ignore[method-assign]  # its socket is gone
    if conn._nudge is not None:
        conn._nudge.cancel()
    assert conn._transport is not None
    conn._transport.abort()


def kill_server(server: Server) -> int:
    """Make the server vanish like a killed process: no CONNECTION_CLOSE, socket gone."""
    port = server.port
    endpoint = server._listener
    assert endpoint is not None and endpoint._transport is not None
    for conn in list(endpoint.connections):
        if conn._timer is not None:
            conn._timer.cancel()
        conn._timer = None
        conn.transmit = lambda: None  # type: ignore[method-assign]  # its socket is gone
        KILLED.update((id(conn), id(conn._quic)))
    if server._gc is not None:
        server._gc[1].stop()
    endpoint._transport.abort()
    if endpoint._reader is not None:
        endpoint._reader.close()  # its duplicate of the socket holds the port
        endpoint._reader = None
    return port


def silent_initial(port: int) -> tuple[socket.socket, object]:
    """Send one client Initial to ``port`` from a new socket and never answer (the
    socket, and the connection to keep until the count: it is not the server's)."""
    from aioquic.quic.configuration import QuicConfiguration
    from aioquic.quic.connection import QuicConnection

    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    config = QuicConfiguration(is_client=True, alpn_protocols=["quicflow/1"])
    config.server_name = "localhost"
    config.verify_mode = 0
    quic = QuicConnection(configuration=config)
    quic.connect(("127.0.0.1", port), now=0.0)
    for data, addr in quic.datagrams_to_send(now=0.0):
        sock.sendto(data, addr)
    return sock, quic


class Tracked:
    """Every `QuicFlowProtocol` made while it is installed, by weak reference."""

    def __init__(self) -> None:
        self.refs: list[weakref.ref[QuicFlowProtocol]] = []
        self._init = QuicFlowProtocol.__init__
        tracked = self

        def init(protocol: QuicFlowProtocol, *args: Any, **kwargs: Any) -> None:
            tracked._init(protocol, *args, **kwargs)
            tracked.refs.append(weakref.ref(protocol))

        QuicFlowProtocol.__init__ = init  # type: ignore[method-assign,assignment]

    def remove(self) -> None:
        QuicFlowProtocol.__init__ = self._init  # type: ignore[method-assign]

    def held(self) -> Counter[str]:
        """Ended connections still alive, per side (those of a killed server left out)."""
        held: Counter[str] = Counter()
        for ref in self.refs:
            protocol = ref()
            if protocol is not None and protocol.is_closed and id(protocol) not in KILLED:
                held["client" if protocol._router is None else "server"] += 1
        return held


async def run_path(path: str, clients: int) -> Found:
    """Connect ``clients`` clients, end their connections by ``path``, and collect."""
    tracked = Tracked()
    try:
        return await _run_path(path, clients, tracked)
    finally:
        tracked.remove()


async def _run_path(path: str, clients: int, tracked: Tracked) -> Found:
    bench = Bench(max_connections=1) if path == "refused" else Bench()
    server = bench.server
    await server.start()
    made: list[Client] = []
    hanging: list[asyncio.Task[Any]] = []
    socks: list[tuple[socket.socket, object]] = []
    try:
        # Warm up: first-use caches (imports, compiled structs) must not count.
        warm = bench.client(-1)
        await warm.connect()
        await busy(bench, warm, hanging)
        await warm.close()
        await asyncio.gather(*hanging, return_exceptions=True)
        hanging.clear()
        await until(lambda: len(server.connections) == 0)
        del warm
        gc.collect()
        gc.disable()
        collect_garbage(1)  # whatever the warm-up left
        ended = clients
        if path == "handshake":
            socks = [silent_initial(server.port) for _ in range(clients)]
            await until(lambda: len(server.connections) == clients)
            await until(lambda: len(server.connections) == 0)
        elif path == "idle":
            from quicflow.transport import connect
            from quicflow.transport.tls import client_configuration

            config = bench.client(0).config
            conns = [
                await connect(
                    "127.0.0.1",
                    server.port,
                    client_configuration(server_name="localhost", ca_file=config.ca_file),
                    config.transport_settings(),
                    connect_timeout=5,
                )
                for _ in range(clients)
            ]
            await until(lambda: all(c.is_closed for c in conns))
            await until(lambda: len(server.connections) == 0)
            for conn in conns:
                await conn.aclose()
            del conns, conn
        elif path in ("refused", "failed"):
            silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            silent.bind(("127.0.0.1", 0))
            socks.append((silent, None))
            port = silent.getsockname()[1] if path == "failed" else 0
            for i in range(clients):
                client = bench.client(i, port, connect_timeout=0.3)
                with contextlib.suppress(Exception):
                    await client.connect()
                await client.close()
            del client
            await until(lambda: len(server.connections) == 0)
        else:
            for i in range(clients):
                client = bench.client(i)
                await client.connect()
                await busy(bench, client, hanging)
                made.append(client)
            if path == "close":
                await asyncio.gather(*(c.close() for c in made))
                await until(lambda: len(server.connections) == 0)
            elif path == "evict":
                for client in made:
                    silence(client)
                await until(lambda: len(server.sessions) == 0)
                await until(lambda: len(server.connections) == 0)
            elif path == "replaced":
                newer = [bench.client(i) for i in range(clients)]
                for client in newer:
                    await client.connect()
                replaced = [c.connection for c in made]
                await until(lambda: all(c is None or c.is_closed for c in replaced))
                await until(lambda: len(server.connections) == clients)
                for client in made:
                    await client.close()
                made = newer
                del replaced, newer
            elif path == "stop":
                await server.stop()
                await until(
                    lambda: all(c.connection is None or c.connection.is_closed for c in made)
                )
            elif path == "reset":
                port = kill_server(server)
                await asyncio.sleep(0.05)  # the socket closes at the next loop pass
                old = server
                server = bench.server = bench.new_server(port)
                await server.start()
                del old
                await until(lambda: len(server.sessions) == clients)
                ended = clients
        await asyncio.sleep(0.2)
        if path != "reset":  # after a restart, calls in flight wait for the new server
            # Calls still in flight are cancelled (a killed client's: as its death would).
            pending = [task for task in hanging if not task.done()]
            if pending and path != "evict":  # a silenced client's calls hear nothing
                await asyncio.wait(pending, timeout=2.0)
            for task in hanging:
                task.cancel()
            await asyncio.gather(*hanging, return_exceptions=True)
            hanging.clear()
        found = collect_garbage(ended)
        found.held = tracked.held()
        return found
    finally:
        gc.enable()
        for task in hanging:
            task.cancel()
        for client in made:
            last = client.connection
            if path == "evict" and last is not None:
                last.discard("killed")  # nothing to wait for: its socket is gone
        await asyncio.gather(*(client.close() for client in made))
        await server.stop()
        for sock, _ in socks:
            sock.close()


def rss_mib() -> float:
    """This process's resident set, MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def churn(rounds: int, clients: int) -> None:
    """Rounds of ``clients`` clients that connect, work, are frozen with the heap (as the
    GC governor freezes it in a storm) and close; prints the frozen objects and RSS after
    each round (a collection of what is not frozen in between). A teardown that leaves
    cycles grows both with every ended connection; one that leaves none, neither."""
    bench = Bench()
    server = bench.server
    await server.start()
    hanging: list[asyncio.Task[Any]] = []
    gc.collect()
    try:
        for r in range(rounds):
            made = []
            for i in range(clients):
                client = bench.client(r * clients + i)
                await client.connect()
                await busy(bench, client, hanging)
                made.append(client)
            gc.freeze()  # the governor froze the heap with these connections alive
            await asyncio.gather(*(c.close() for c in made))
            await asyncio.gather(*hanging, return_exceptions=True)
            hanging.clear()
            await until(lambda: len(server.connections) == 0)
            del made, client
            gc.collect()
            print(
                f"churn round {r + 1}: {(r + 1) * clients} connections ended, "
                f"frozen {gc.get_freeze_count():,}, RSS {rss_mib():.1f} MiB",
                flush=True,
            )
    finally:
        gc.unfreeze()
        await server.stop()


def report(path: str, found: Found, top: int) -> None:
    print(
        f"{path}: {found.ended} ended; objects found per ended connection: "
        f"server {found.per_connection('server'):.1f}, "
        f"client {found.per_connection('client'):.1f}, "
        f"other {found.per_connection('other'):.1f}; "
        f"ended connections still held: server {found.held['server']}, "
        f"client {found.held['client']}"
    )
    for side in ("server", "client", "other"):
        counts: Counter[str] = getattr(found, side)
        if counts:
            common = ", ".join(f"{name} {n}" for name, n in counts.most_common(top))
            print(f"  {side}: {common}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--paths", default=",".join(PATHS))
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--explain", default="", help="types to show a cycle of")
    parser.add_argument(
        "--check",
        action="store_true",
        help="exit 1 if any path leaves a connection's objects to the collector",
    )
    parser.add_argument(
        "--churn", type=int, default=0, help="instead: this many rounds with a frozen heap"
    )
    args = parser.parse_args(argv)
    if args.churn:
        asyncio.run(churn(args.churn, args.clients))
        return 0
    EXPLAIN.extend(t for t in args.explain.split(",") if t)
    failed = False
    for path in args.paths.split(","):
        found = asyncio.run(run_path(path, args.clients))
        report(path, found, args.top)
        sys.stdout.flush()
        failed = failed or bool(found.server or found.client or found.held)
    return 1 if args.check and failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
