"""Per-process counters of transport events, for ``bench/profile.py --count``.

Counts datagrams received and sent, transmits (calls into aioquic's packet
builder) and timer wake-ups of every QuicFlow connection in the process, by
wrapping `QuicFlowProtocol` methods. Only the profiler installs it.
"""

from __future__ import annotations

from typing import Any

COUNTS: dict[str, int] = {"received": 0, "sent": 0, "transmits": 0, "timers": 0}


def install() -> None:
    """Wrap the transport's methods so `COUNTS` follows every connection."""
    from quicflow.transport.quic import QuicFlowProtocol

    received = QuicFlowProtocol.datagram_received
    transmit = QuicFlowProtocol.transmit
    timer = QuicFlowProtocol._handle_timer

    def datagram_received(self: Any, data: Any, addr: Any) -> None:
        COUNTS["received"] += 1
        received(self, data, addr)

    def counted_transmit(self: Any) -> None:
        COUNTS["transmits"] += 1
        before = self._quic._packet_number
        transmit(self)
        COUNTS["sent"] += self._quic._packet_number - before

    def handle_timer(self: Any) -> None:
        COUNTS["timers"] += 1
        timer(self)

    QuicFlowProtocol.datagram_received = datagram_received  # type: ignore[method-assign]
    QuicFlowProtocol.transmit = counted_transmit  # type: ignore[method-assign]
    QuicFlowProtocol._handle_timer = handle_timer  # type: ignore[method-assign]


def snapshot() -> dict[str, int]:
    """A copy of the counters now."""
    return dict(COUNTS)


def per_unit(before: dict[str, int], after: dict[str, int], n: int) -> str:
    """The counters' growth per unit of work, as one line of text."""
    return " ".join(f"{key}={(after[key] - before[key]) / n:.2f}" for key in COUNTS)
