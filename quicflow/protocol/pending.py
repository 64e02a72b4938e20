"""The pending-ack table, sans-IO: which acked sends are waiting, and which timed out.

An acked send (``server.async_send``, ``send_message(wait_ack=True)``) is
tracked by its message id (16 bytes, a UUID) from the moment it is sent until
its ack or error reply arrives, its timeout passes, or the connection is lost.
`PendingTable` is that bookkeeping and nothing else: the runtime owns the
futures and callbacks, and this object only answers "is it still pending?",
"what timed out by ``now``?" and "when is the next deadline?" (aioquic's
``get_timer``/``handle_timer`` pattern).

The rules:

- ``add(message_id, now, timeout)`` starts tracking; the deadline is
  ``now + timeout``. The table holds at most ``capacity`` entries (50 000 by
  default): one more raises `PromiseCapacityFull` and changes nothing, so
  the runtime refuses the send *before* writing anything.
- ``resolve`` (an ack or reply came) and ``fail`` (an error came) remove an
  entry and say whether it was still there. An entry leaves exactly once:
  after a timeout, ``resolve`` returns False, so a late ack cannot complete a
  promise that already failed.
- ``poll(now)`` removes and returns a `PromiseTimedOut` for every entry whose
  deadline is at or before ``now`` (``now >= added + timeout``), earliest
  deadline first, ties in the order they were added.
- ``clear()`` removes everything (connection loss: every waiter fails at once
  with UNAVAILABLE) and returns the ids it removed.

Cost. Deadlines sit in a binary heap. ``resolve`` and ``fail`` do not search
it: they drop the id from a dict and leave a dead heap entry behind (lazy
deletion). Dead entries at the top are popped at once, so `get_timer` is
exact, and the heap is rebuilt whenever dead entries outnumber live ones, so
it never holds more than about twice the live count. ``add``, ``resolve``,
``fail`` and each timed-out entry of ``poll`` cost O(log n) amortized; a
table that is full and then drained returns to an empty heap.

Example::

    table = PendingTable(capacity=50_000)
    table.add(message_id, now=0.0, timeout=30.0)
    table.get_timer()            # 30.0
    table.resolve(message_id)    # True: the ack arrived in time
    table.poll(30.0)             # []: nothing left to time out
"""

from __future__ import annotations

import heapq
import itertools
import math
from dataclasses import dataclass

from ..errors import PromiseCapacityFull
from .numbers import finite

__all__ = ["DEFAULT_CAPACITY", "PendingTable", "PromiseTimedOut"]

DEFAULT_CAPACITY = 50_000
"""Acked sends a table holds by default (the issue's promise-manager limit)."""


@dataclass(frozen=True, slots=True)
class PromiseTimedOut:
    """An acked send reached its deadline with no ack; it is no longer pending."""

    message_id: bytes
    """The id given to `PendingTable.add`."""
    deadline: float
    """When it timed out: ``now + timeout`` as passed to `PendingTable.add` (seconds)."""


class PendingTable:
    """Acked sends awaiting their ack, by message id, with deadlines and a capacity.

    See the module docstring for the rules. Times are seconds on any
    monotonic clock, passed in as ``now``; the table never reads a clock.

    Args:
        capacity: most entries held at once (an int of at least 1).

    Raises:
        ValueError: ``capacity`` is not an int of at least 1.

    Example::

        table = PendingTable(capacity=3)
        table.add(b"a" * 16, now=0.0, timeout=30.0)
        table.add(b"b" * 16, now=1.0, timeout=5.0)
        table.get_timer()    # 6.0
        table.poll(6.0)      # [PromiseTimedOut(message_id=b"bbbb...", deadline=6.0)]
        len(table)           # 1
    """

    __slots__ = ("_capacity", "_heap", "_live", "_order")

    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1:
            raise ValueError(f"capacity must be an int of at least 1, got {capacity!r}")
        self._capacity = capacity
        # message id -> sequence number of its live heap entry. A heap entry whose
        # sequence is not the one recorded here is dead (resolved, failed, cleared,
        # or superseded by a later add of the same id).
        self._live: dict[bytes, int] = {}
        self._heap: list[tuple[float, int, bytes]] = []
        self._order = itertools.count()

    def __repr__(self) -> str:
        return f"<PendingTable {len(self._live)}/{self._capacity} pending>"

    def __len__(self) -> int:
        """Entries still pending."""
        return len(self._live)

    def __contains__(self, message_id: object) -> bool:
        """True while ``message_id`` is pending (added, and not yet removed)."""
        return message_id in self._live

    @property
    def capacity(self) -> int:
        """Most entries held at once."""
        return self._capacity

    def add(self, message_id: bytes, now: float, timeout: float) -> None:
        """Start tracking ``message_id``; it times out at ``now + timeout``.

        Call it before the send is written, so a full table refuses the send
        and nothing reaches the peer.

        Args:
            message_id: the send's id (16 bytes, a UUID, in QuicFlow's use).
            now: the current time, seconds.
            timeout: seconds until it times out (finite, >= 0; 0 is due at once).

        Raises:
            PromiseCapacityFull: ``capacity`` entries are already pending (the
                table is unchanged).
            ValueError: ``message_id`` is already pending, or ``now`` or
                ``timeout`` is not a finite number (``timeout`` also must not be
                negative).
            TypeError: ``message_id`` is not ``bytes``.
        """
        if not isinstance(message_id, bytes):
            raise TypeError(f"message_id must be bytes, got {type(message_id).__name__}")
        finite("now", now)
        if not math.isfinite(timeout) or timeout < 0:
            raise ValueError(f"timeout must be a finite number >= 0, got {timeout!r}")
        if message_id in self._live:
            raise ValueError(f"message id {message_id.hex()} is already pending")
        if len(self._live) >= self._capacity:
            raise PromiseCapacityFull(
                message=f"{len(self._live)} acked sends pending: capacity {self._capacity} reached"
            )
        sequence = next(self._order)
        self._live[message_id] = sequence
        heapq.heappush(self._heap, (float(now) + float(timeout), sequence, message_id))

    def resolve(self, message_id: bytes) -> bool:
        """Remove ``message_id`` because its ack or reply arrived.

        Returns:
            True if it was pending; False if unknown or already gone (resolved,
            failed, timed out or cleared). Idempotent.
        """
        return self._remove(message_id)

    def fail(self, message_id: bytes) -> bool:
        """Remove ``message_id`` because the peer reported an error for it.

        Returns:
            True if it was pending; False if unknown or already gone. Idempotent.
        """
        return self._remove(message_id)

    def get_timer(self) -> float | None:
        """The earliest pending deadline (seconds), or None when nothing is pending."""
        # _prune keeps the top of the heap live, so this is exact.
        return self._heap[0][0] if self._heap else None

    def poll(self, now: float) -> list[PromiseTimedOut]:
        """Remove and return every entry whose deadline is at or before ``now``.

        Returns:
            One `PromiseTimedOut` per expired entry, earliest deadline first
            (ties in the order they were added); ``[]`` when nothing is due.
        """
        heap = self._heap
        live = self._live
        expired: list[PromiseTimedOut] = []
        while heap and heap[0][0] <= now:
            deadline, sequence, message_id = heapq.heappop(heap)
            if live.get(message_id) == sequence:
                del live[message_id]
                expired.append(PromiseTimedOut(message_id, deadline))
        self._prune()
        return expired

    def clear(self) -> list[bytes]:
        """Remove every entry (the connection was lost).

        Returns:
            The ids that were pending, in the order they were added; the
            runtime fails each one's waiter with UNAVAILABLE.
        """
        removed = list(self._live)
        self._live.clear()
        self._heap.clear()
        return removed

    def _remove(self, message_id: bytes) -> bool:
        if self._live.pop(message_id, None) is None:
            return False
        self._prune()
        return True

    def _prune(self) -> None:
        """Drop dead entries from the top; rebuild when the dead outnumber the live."""
        heap = self._heap
        live = self._live
        while heap and live.get(heap[0][2]) != heap[0][1]:
            heapq.heappop(heap)
        if len(heap) > 2 * len(live):
            # Amortized O(1) per removal: at least len(live) removals happened since
            # the heap last had no dead entries.
            self._heap = [entry for entry in heap if live.get(entry[2]) == entry[1]]
            heapq.heapify(self._heap)
