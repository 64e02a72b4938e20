"""A userspace UDP proxy that damages traffic on purpose, for tests (no root needed).

Put `ChaosProxy` between a client and a server on loopback and it forwards
datagrams both ways while applying `Faults`: random loss, burst loss
(Gilbert-Elliott), delay with jitter (hence reordering), duplication, byte
corruption, blackhole windows, a datagram size clamp, and re-binding of its
upstream socket (the server sees the client move to a new address, like a NAT
rebinding)::

    from quicflow.chaos import ChaosProxy, Faults

    async with ChaosProxy(("127.0.0.1", server.port), seed=7) as proxy:
        proxy.set_faults(Faults(loss=0.2))                 # both directions
        client = Client(replace(config, port=proxy.port))  # the client talks to the proxy
        ...
        with proxy.blackhole():                            # a partition, both ways
            await asyncio.sleep(1.0)
        proxy.rebind()                                     # NAT rebinding
        assert proxy.stats.client_to_server.dropped > 0    # the faults really happened

What to do with one datagram is decided by `Link`, a sans-IO object holding
one direction's settings, its own `random.Random` and its counters: given
the same seed, settings and sequence of datagrams it makes the same
decisions, whatever the timing. The proxy only does the IO.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, fields
from typing import Literal

__all__ = [
    "ChaosProxy",
    "Direction",
    "Faults",
    "GilbertElliott",
    "Link",
    "LinkStats",
    "ProxyStats",
]

Direction = Literal["client_to_server", "server_to_client", "both"]
"""Which way a setting applies: ``client_to_server``, ``server_to_client`` or ``both``."""


@dataclass(frozen=True, slots=True)
class GilbertElliott:
    """Burst loss: a two-state Markov chain stepped once per datagram.

    In the good state a datagram is lost with probability ``loss_good``, in the
    bad state with ``loss_bad``; ``p`` is the chance to go good → bad, ``r`` bad
    → good. The mean burst length is ``1 / r`` datagrams and the long-run loss
    rate ``(p * loss_bad + r * loss_good) / (p + r)``.
    """

    p: float = 0.01
    r: float = 0.3
    loss_good: float = 0.0
    loss_bad: float = 1.0

    @property
    def mean_loss(self) -> float:
        """The stationary loss rate of the chain."""
        return (self.p * self.loss_bad + self.r * self.loss_good) / (self.p + self.r)


@dataclass(frozen=True, slots=True)
class Faults:
    """What one direction does to datagrams (all off by default: a plain relay)."""

    loss: float = 0.0
    """Probability that a datagram is dropped (independently of the others)."""
    burst: GilbertElliott | None = None
    """Burst loss on top of ``loss`` (None: no bursts)."""
    delay: float = 0.0
    """Seconds every datagram is held before it is forwarded."""
    jitter: float = 0.0
    """Extra delay drawn uniformly from [0, jitter) per datagram: datagrams reorder."""
    duplicate: float = 0.0
    """Probability that a datagram is forwarded twice (each copy with its own delay)."""
    corrupt: float = 0.0
    """Probability that one byte of a datagram is changed (XOR with a non-zero byte)."""
    max_datagram: int | None = None
    """Datagrams longer than this many bytes are dropped (a small path MTU)."""

    def __post_init__(self) -> None:
        for name in ("loss", "duplicate", "corrupt"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"Faults.{name} must be within [0, 1], got {value!r}")
        for name in ("delay", "jitter"):
            if getattr(self, name) < 0:
                raise ValueError(f"Faults.{name} must be >= 0, got {getattr(self, name)!r}")
        if self.max_datagram is not None and self.max_datagram < 1:
            raise ValueError(f"Faults.max_datagram must be >= 1, got {self.max_datagram!r}")


@dataclass(slots=True)
class LinkStats:
    """What one direction did, in datagrams (so a test can assert faults happened)."""

    received: int = 0
    """Datagrams that arrived at the proxy."""
    forwarded: int = 0
    """Datagrams sent on (duplicates included)."""
    dropped: int = 0
    """Lost to ``loss`` or ``burst``."""
    blackholed: int = 0
    """Dropped because a blackhole was on."""
    clamped: int = 0
    """Dropped for being longer than ``max_datagram``."""
    duplicated: int = 0
    """Extra copies sent."""
    corrupted: int = 0
    """Datagrams with a byte changed."""
    delayed: int = 0
    """Datagrams held for a non-zero delay."""
    reordered: int = 0
    """Datagrams scheduled to leave before one that arrived earlier."""
    rebinds: int = 0
    """Times the upstream socket was replaced (counted on ``client_to_server``)."""

    def as_dict(self) -> dict[str, int]:
        """The counters by name."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(slots=True)
class ProxyStats:
    """Counters for both directions."""

    client_to_server: LinkStats = field(default_factory=LinkStats)
    server_to_client: LinkStats = field(default_factory=LinkStats)


class Link:
    """The sans-IO core of one direction: decides the fate of each datagram.

    `decide` returns the copies to send as ``(send_at, payload)`` pairs (none:
    dropped) and updates `stats`. It draws only from its own seeded generator,
    so the same seed, settings and datagrams give the same decisions.
    """

    def __init__(self, seed: int | str, faults: Faults | None = None) -> None:
        self.rng = random.Random(seed)
        self.faults = faults or Faults()
        self.blackholed = False
        self.drop_next = 0
        """Drop this many of the next datagrams, then forward as usual (a one-shot loss)."""
        self.stats = LinkStats()
        self._bad = False  # Gilbert-Elliott state
        self._latest = float("-inf")  # latest send time scheduled so far

    def decide(self, data: bytes, now: float) -> list[tuple[float, bytes]]:
        """What to send for ``data`` arriving at ``now``: ``[(send_at, payload), ...]``."""
        faults, stats, rng = self.faults, self.stats, self.rng
        stats.received += 1
        if self.blackholed:
            stats.blackholed += 1
            return []
        if self.drop_next > 0:
            self.drop_next -= 1
            stats.dropped += 1
            return []
        if faults.max_datagram is not None and len(data) > faults.max_datagram:
            stats.clamped += 1
            return []
        lost = faults.loss > 0 and rng.random() < faults.loss
        burst = faults.burst
        if burst is not None:
            self._bad = rng.random() >= burst.r if self._bad else rng.random() < burst.p
            chance = burst.loss_bad if self._bad else burst.loss_good
            lost = (chance > 0 and rng.random() < chance) or lost
        if lost:
            stats.dropped += 1
            return []
        if faults.corrupt > 0 and rng.random() < faults.corrupt and data:
            i = rng.randrange(len(data))
            damaged = bytearray(data)
            damaged[i] ^= rng.randrange(1, 256)
            data = bytes(damaged)
            stats.corrupted += 1
        copies = 2 if faults.duplicate > 0 and rng.random() < faults.duplicate else 1
        stats.duplicated += copies - 1
        out: list[tuple[float, bytes]] = []
        for _ in range(copies):
            hold = faults.delay + (rng.random() * faults.jitter if faults.jitter > 0 else 0.0)
            if hold > 0:
                stats.delayed += 1
            at = now + hold
            if at < self._latest:
                stats.reordered += 1
            self._latest = max(self._latest, at)
            out.append((at, data))
        stats.forwarded += len(out)
        return out


Address = tuple[str, int]

_READ_BATCH = 64  # datagrams read per wake-up before letting the loop run others


class _Upstream:
    """One client's socket towards the server (replaced on rebind)."""

    __slots__ = ("client", "sock")

    def __init__(self, client: Address, sock: socket.socket) -> None:
        self.client = client
        self.sock = sock


class ChaosProxy:
    """A seeded UDP proxy between clients and one server; see the module docstring.

    Clients send to ``(host, proxy.port)``; each client address gets its own
    upstream socket, so the server sees one address per client. Settings are
    per direction and may change at any time (`set_faults`, `set_blackhole`,
    `blackhole`); `stats` counts what was done. Use as ``async with`` or call
    `start` and `close`. ``rebind_every`` (seconds) re-binds every upstream
    socket periodically; `rebind` does it on demand.
    """

    def __init__(
        self,
        target: Address,
        *,
        seed: int = 0,
        faults: Faults | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        rebind_every: float | None = None,
    ) -> None:
        self.target = target
        self.host = host
        self._port = port
        self.client_to_server = Link(f"{seed}:client_to_server", faults)
        """The client → server direction (settings, counters)."""
        self.server_to_client = Link(f"{seed}:server_to_client", faults)
        """The server → client direction (settings, counters)."""
        self._rebind_every = rebind_every
        self._loop: asyncio.AbstractEventLoop | None = None
        self._down: socket.socket | None = None
        self._upstreams: dict[Address, _Upstream] = {}
        self._rebind_task: asyncio.Task[None] | None = None
        self._timers: set[asyncio.TimerHandle] = set()

    # -- lifecycle --

    async def start(self) -> ChaosProxy:
        """Bind the client-facing socket (and start periodic rebinding if asked)."""
        self._loop = loop = asyncio.get_running_loop()
        self._down = down = _udp_socket(self.host, self._port)
        loop.add_reader(down.fileno(), self._read_down)
        if self._rebind_every is not None:
            self._rebind_task = asyncio.ensure_future(self._rebind_loop(self._rebind_every))
        return self

    async def close(self) -> None:
        """Close every socket and forget datagrams still being delayed."""
        if self._rebind_task is not None:
            self._rebind_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._rebind_task
            self._rebind_task = None
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()
        for upstream in list(self._upstreams.values()):
            self._close_upstream(upstream)
        self._upstreams.clear()
        if self._down is not None and self._loop is not None:
            self._loop.remove_reader(self._down.fileno())
            self._down.close()
            self._down = None

    async def __aenter__(self) -> ChaosProxy:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def port(self) -> int:
        """The UDP port clients should send to."""
        assert self._down is not None, "start the proxy first"
        return int(self._down.getsockname()[1])

    @property
    def stats(self) -> ProxyStats:
        """The counters of both directions (live objects, not a copy)."""
        return ProxyStats(self.client_to_server.stats, self.server_to_client.stats)

    # -- runtime controls --

    def _links(self, direction: Direction) -> list[Link]:
        if direction == "both":
            return [self.client_to_server, self.server_to_client]
        if direction == "client_to_server":
            return [self.client_to_server]
        if direction == "server_to_client":
            return [self.server_to_client]
        raise ValueError(
            f"direction must be client_to_server, server_to_client or both, got {direction!r}"
        )

    def set_faults(self, faults: Faults, direction: Direction = "both") -> None:
        """Apply ``faults`` from now on, to one direction or both."""
        for link in self._links(direction):
            link.faults = faults

    def set_blackhole(self, on: bool, direction: Direction = "both") -> None:
        """Drop everything (``on``) or stop doing so (not ``on``) from now on."""
        for link in self._links(direction):
            link.blackholed = on

    @contextlib.contextmanager
    def blackhole(self, direction: Direction = "both") -> Iterator[None]:
        """A blackhole window: everything is dropped while the block runs."""
        self.set_blackhole(True, direction)
        try:
            yield
        finally:
            self.set_blackhole(False, direction)

    partition = blackhole
    """Alias of `blackhole`: a network partition between the clients and the server."""

    def rebind(self) -> int:
        """Give every client a new upstream socket (a new source port at the server).

        The old socket is closed at once, as a NAT forgets an old mapping:
        what the server still sends to the old address is lost, and the
        client's next datagram reaches the server from the new port. Returns
        how many sockets were replaced.
        """
        old = list(self._upstreams.values())
        for upstream in old:
            self._close_upstream(upstream)
            self._open_upstream(upstream.client)
        self.client_to_server.stats.rebinds += len(old)
        return len(old)

    async def _rebind_loop(self, every: float) -> None:
        while True:
            await asyncio.sleep(every)
            self.rebind()

    # -- the data path --

    def _read_down(self) -> None:
        assert self._down is not None and self._loop is not None
        link, now = self.client_to_server, self._loop.time()
        for _ in range(_READ_BATCH):
            try:
                data, addr = self._down.recvfrom(65535)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                continue  # e.g. ICMP port unreachable reported on this socket
            client = (str(addr[0]), int(addr[1]))
            for at, payload in link.decide(data, now):
                self._schedule(at, now, self._send_up, payload, client)

    def _read_up(self, upstream: _Upstream) -> None:
        assert self._loop is not None
        link, now = self.server_to_client, self._loop.time()
        for _ in range(_READ_BATCH):
            try:
                data = upstream.sock.recv(65535)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                continue
            for at, payload in link.decide(data, now):
                self._schedule(at, now, self._send_down, payload, upstream.client)

    def _schedule(
        self,
        at: float,
        now: float,
        send: Callable[[bytes, Address], None],
        payload: bytes,
        client: Address,
    ) -> None:
        if at <= now:
            send(payload, client)
            return
        assert self._loop is not None
        timer: asyncio.TimerHandle

        def fire() -> None:
            self._timers.discard(timer)
            send(payload, client)

        timer = self._loop.call_at(at, fire)
        self._timers.add(timer)

    def _send_down(self, payload: bytes, client: Address) -> None:
        if self._down is not None:
            with contextlib.suppress(OSError):  # full buffer: lost, as on a real path
                self._down.sendto(payload, client)

    def _send_up(self, payload: bytes, client: Address) -> None:
        if self._down is None or self._loop is None:
            return
        upstream = self._upstreams.get(client) or self._open_upstream(client)
        with contextlib.suppress(OSError):
            upstream.sock.sendto(payload, self.target)

    def _open_upstream(self, client: Address) -> _Upstream:
        assert self._loop is not None
        upstream = _Upstream(client, _udp_socket(self.host, 0))
        self._upstreams[client] = upstream
        self._loop.add_reader(upstream.sock.fileno(), self._read_up, upstream)
        return upstream

    def _close_upstream(self, upstream: _Upstream) -> None:
        if self._loop is not None:
            self._loop.remove_reader(upstream.sock.fileno())
        upstream.sock.close()


def _udp_socket(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, option, 4 << 20)
        sock.setblocking(False)
        sock.bind((host, port))
    except BaseException:
        sock.close()
        raise
    return sock
