"""The chaos proxy: its sans-IO decisions, and its IO over real UDP sockets."""

from __future__ import annotations

import asyncio
import itertools
import socket
from collections.abc import AsyncIterator
from typing import cast

import pytest

from quicflow.chaos import ChaosProxy, Faults, GilbertElliott, Link

# -- sans-IO: Link.decide --


def _run(link: Link, n: int, size: int = 100) -> list[list[tuple[float, bytes]]]:
    return [link.decide(i.to_bytes(4, "big") * (size // 4), now=i * 0.001) for i in range(n)]


def test_a_plain_link_forwards_everything_at_once_unchanged() -> None:
    """Check that with no faults every datagram leaves at once and unchanged."""
    link = Link(1)
    out = link.decide(b"abc", now=5.0)
    assert out == [(5.0, b"abc")]
    assert link.stats.as_dict() == {
        "received": 1, "forwarded": 1, "dropped": 0, "blackholed": 0, "clamped": 0,
        "duplicated": 0, "corrupted": 0, "delayed": 0, "reordered": 0, "rebinds": 0,
    }  # fmt: skip


def test_same_seed_same_decisions_other_seed_other_decisions() -> None:
    """Check that decisions depend only on the seed, settings and datagrams."""
    faults = Faults(loss=0.2, duplicate=0.1, corrupt=0.1, delay=0.01, jitter=0.02)
    a, b, c = Link(7, faults), Link(7, faults), Link(8, faults)
    assert _run(a, 500) == _run(b, 500)
    assert _run(c, 500) != _run(Link(7, faults), 500)


def test_random_loss_rate_is_close_to_the_setting() -> None:
    """Check that 20 % loss drops about a fifth of 10,000 datagrams."""
    link = Link(3, Faults(loss=0.2))
    _run(link, 10_000)
    assert 1800 < link.stats.dropped < 2200
    assert link.stats.forwarded + link.stats.dropped == 10_000


def test_burst_loss_comes_in_runs() -> None:
    """Check that Gilbert-Elliott loss matches its stationary rate and comes in runs
    (mean run length near 1/r), unlike independent loss at the same rate."""
    burst = GilbertElliott(p=0.02, r=0.25)
    link = Link(5, Faults(burst=burst))
    lost = [not out for out in _run(link, 20_000)]
    rate = sum(lost) / len(lost)
    assert abs(rate - burst.mean_loss) < 0.02
    runs: list[int] = []
    length = 0
    for x in [*lost, False]:
        if x:
            length += 1
        elif length:
            runs.append(length)
            length = 0
    assert 3.0 < sum(runs) / len(runs) < 5.0  # 1/r = 4; independent loss would give ~1.1


def test_jitter_reorders_and_delay_holds() -> None:
    """Check that delay holds every datagram and jitter makes later ones overtake."""
    link = Link(9, Faults(delay=0.05, jitter=0.02))
    outs = _run(link, 1000)
    assert all(at >= i * 0.001 + 0.05 for i, [(at, _)] in enumerate(outs))
    assert link.stats.delayed == 1000
    order = sorted(range(1000), key=lambda i: outs[i][0][0])
    inversions = sum(1 for i, j in itertools.pairwise(order) if j < i)
    assert inversions > 0 and link.stats.reordered > 0


def test_duplicate_and_corrupt() -> None:
    """Check that duplicates are extra copies and corruption changes exactly one byte."""
    link = Link(11, Faults(duplicate=0.3, corrupt=0.3))
    data = bytes(range(200))
    outs = [link.decide(data, now=0.0) for _ in range(1000)]
    assert link.stats.duplicated == sum(len(o) - 1 for o in outs) > 200
    assert link.stats.forwarded == 1000 + link.stats.duplicated
    changed = [o[0][1] for o in outs if o[0][1] != data]
    assert len(changed) == link.stats.corrupted > 200
    assert all(sum(x != y for x, y in zip(c, data, strict=True)) == 1 for c in changed)


def test_clamp_and_blackhole_drop_and_count() -> None:
    """Check that oversize, blackholed and drop_next datagrams are dropped and counted."""
    link = Link(1, Faults(max_datagram=100))
    assert link.decide(b"x" * 100, 0.0) and not link.decide(b"x" * 101, 0.0)
    link.blackholed = True
    assert link.decide(b"x", 0.0) == []
    assert (link.stats.clamped, link.stats.blackholed, link.stats.forwarded) == (1, 1, 1)
    link.blackholed = False
    link.drop_next = 2  # a one-shot loss of exactly the next two
    assert [bool(link.decide(b"x", 0.0)) for _ in range(3)] == [False, False, True]
    assert link.stats.dropped == 2


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [({"loss": 1.5}, "loss"), ({"delay": -1}, "delay"), ({"max_datagram": 0}, "max_datagram")],
)
def test_bad_settings_name_the_field(kwargs: dict[str, float], field: str) -> None:
    """Check that an out-of-range setting raises ValueError naming the field."""
    with pytest.raises(ValueError, match=f"Faults.{field}"):
        Faults(**kwargs)  # type: ignore[arg-type]


# -- IO: a real UDP echo server behind the proxy --


class _Echo(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.sources: set[tuple[str, int]] = set()
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.sources.add(addr)
        assert self.transport is not None
        self.transport.sendto(data, addr)


@pytest.fixture
async def echo() -> AsyncIterator[tuple[_Echo, int]]:
    loop = asyncio.get_running_loop()
    transport, proto = await loop.create_datagram_endpoint(_Echo, local_addr=("127.0.0.1", 0))
    yield proto, transport.get_extra_info("sockname")[1]
    transport.close()


async def _exchange(sock: socket.socket, payloads: list[bytes], wait: float = 0.3) -> list[bytes]:
    loop = asyncio.get_running_loop()
    for p in payloads:
        sock.send(p)
    got: list[bytes] = []
    while True:
        try:
            async with asyncio.timeout(wait):
                got.append(await loop.sock_recv(sock, 65535))
        except TimeoutError:
            return got


def _client(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setblocking(False)
    sock.connect(("127.0.0.1", port))
    return sock


async def test_proxy_relays_both_ways_and_counts(echo: tuple[_Echo, int]) -> None:
    """Check that a plain proxy relays an exchange both ways and counts it."""
    _server, port = echo
    async with ChaosProxy(("127.0.0.1", port), seed=1) as proxy:
        with _client(proxy.port) as sock:
            got = await _exchange(sock, [b"a", b"b", b"c"], wait=0.2)
    assert sorted(got) == [b"a", b"b", b"c"]
    assert proxy.stats.client_to_server.forwarded == 3
    assert proxy.stats.server_to_client.forwarded == 3


async def test_blackhole_window_and_per_direction_loss(echo: tuple[_Echo, int]) -> None:
    """Check that a blackhole drops everything while on, and that loss set on one
    direction leaves the other alone."""
    _, port = echo
    async with ChaosProxy(("127.0.0.1", port), seed=2) as proxy:
        with _client(proxy.port) as sock:
            with proxy.blackhole():
                assert await _exchange(sock, [b"x"] * 5, wait=0.1) == []
            assert proxy.stats.client_to_server.blackholed == 5
            proxy.set_faults(Faults(loss=1.0), direction="server_to_client")
            assert await _exchange(sock, [b"y"] * 5, wait=0.1) == []
            assert proxy.stats.client_to_server.forwarded == 5
            assert proxy.stats.server_to_client.dropped == 5
            proxy.set_faults(Faults(), direction="both")
            assert await _exchange(sock, [b"z"], wait=0.2) == [b"z"]


async def test_rebind_changes_the_source_address_the_server_sees(
    echo: tuple[_Echo, int],
) -> None:
    """Check that after rebind() the server sees the same client from a new port,
    and replies to the new port still reach the client."""
    server, port = echo
    async with ChaosProxy(("127.0.0.1", port), seed=3) as proxy:
        with _client(proxy.port) as sock:
            assert await _exchange(sock, [b"1"], wait=0.2) == [b"1"]
            first = set(server.sources)
            assert proxy.rebind() == 1
            assert await _exchange(sock, [b"2"], wait=0.2) == [b"2"]
    assert len(first) == 1 and len(server.sources) == 2
    assert proxy.stats.client_to_server.rebinds == 1


async def test_delay_and_jitter_reorder_on_the_wire(echo: tuple[_Echo, int]) -> None:
    """Check that jitter larger than the send spacing delivers out of order."""
    _, port = echo
    faults = Faults(delay=0.01, jitter=0.05)
    async with ChaosProxy(("127.0.0.1", port), seed=4) as proxy:
        proxy.set_faults(faults, direction="client_to_server")
        with _client(proxy.port) as sock:
            payloads = [i.to_bytes(2, "big") for i in range(50)]
            got = await _exchange(sock, payloads, wait=0.3)
    assert sorted(got) == payloads and got != payloads
    assert proxy.stats.client_to_server.reordered > 0


async def test_the_documented_example_runs() -> None:
    """Check that the example in docs/reliability.md works as written (with Echo)."""
    from echo.echo_pb2 import EchoRequest
    from echo.echo_quicflow import EchoStub

    from quicflow import Client
    from quicflow.testing import ClientFor

    from .harness import CountingEcho

    wan = {"max_datagram_size": 1200}
    harness = ClientFor([CountingEcho()], server_options=wan)
    async with harness, ChaosProxy(("127.0.0.1", harness.server.port), seed=7) as proxy:
        proxy.set_faults(Faults(loss=0.2))
        proxy.set_faults(Faults(loss=0.2, delay=0.02, jitter=0.01), direction="server_to_client")
        async with Client(harness.client_config(port=proxy.port, **wan)) as client:
            stub = EchoStub(client)
            replies = [await stub.say(EchoRequest(text=str(i)), timeout=30.0) for i in range(10)]
            proxy.rebind()
            after = await stub.say(EchoRequest(text="after"), timeout=30.0)
        assert proxy.stats.client_to_server.dropped > 0
    assert [r.text for r in replies] == [str(i) for i in range(10)] and after.text == "after"


async def test_periodic_rebinding(echo: tuple[_Echo, int]) -> None:
    """Check that rebind_every re-binds on its own: the server sees new source ports
    and replies still reach the client."""
    server, port = echo
    async with ChaosProxy(("127.0.0.1", port), seed=5, rebind_every=0.05) as proxy:
        with _client(proxy.port) as sock:
            got = []
            for i in range(4):
                got += await _exchange(sock, [bytes([i])], wait=0.1)
    assert got == [b"\x00", b"\x01", b"\x02", b"\x03"]
    assert proxy.stats.client_to_server.rebinds >= 2 and len(server.sources) >= 3
