"""Virtual-time tests for the pending-ack table: exact deadlines, order, capacity, no leaks."""

from __future__ import annotations

import math
import uuid

import pytest

from quicflow.errors import PromiseCapacityFull, RpcError
from quicflow.protocol import PendingTable as ExportedPendingTable
from quicflow.protocol.pending import DEFAULT_CAPACITY, PendingTable, PromiseTimedOut
from quicflow.status import StatusCode


def mid(n: int) -> bytes:
    """A deterministic 16-byte message id."""
    return n.to_bytes(16, "big")


def timer(table: PendingTable) -> float | None:
    """``table.get_timer()`` through a call, so mypy does not narrow it between steps."""
    return table.get_timer()


def test_exact_deadline_from_add() -> None:
    """Check that an entry added at 0 with 30 s is due at exactly 30.0 and not a hair before."""
    table = PendingTable()
    table.add(mid(1), now=0.0, timeout=30.0)
    assert timer(table) == 30.0
    assert table.poll(29.999) == []
    assert mid(1) in table
    assert table.poll(30.0) == [PromiseTimedOut(mid(1), 30.0)]
    assert mid(1) not in table
    assert len(table) == 0
    assert timer(table) is None
    assert table.poll(1e9) == []


def test_empty_table_has_no_timer() -> None:
    """Check that a new table is empty, has the default capacity and wants no timer."""
    table = PendingTable()
    assert len(table) == 0
    assert table.capacity == DEFAULT_CAPACITY == 50_000
    assert timer(table) is None
    assert table.poll(0.0) == []
    assert ExportedPendingTable is PendingTable


def test_poll_returns_in_deadline_order_with_ties_in_add_order() -> None:
    """Check that poll yields expired entries earliest deadline first, ties in add order."""
    table = PendingTable()
    table.add(mid(1), now=0.0, timeout=10.0)  # due 10
    table.add(mid(2), now=1.0, timeout=3.0)  # due 4
    table.add(mid(3), now=2.0, timeout=5.0)  # due 7
    table.add(mid(4), now=3.0, timeout=1.0)  # due 4, after mid(2)
    table.add(mid(5), now=4.0, timeout=0.0)  # due 4, at once
    assert timer(table) == 4.0
    assert table.poll(7.0) == [
        PromiseTimedOut(mid(2), 4.0),
        PromiseTimedOut(mid(4), 4.0),
        PromiseTimedOut(mid(5), 4.0),
        PromiseTimedOut(mid(3), 7.0),
    ]
    assert timer(table) == 10.0
    assert len(table) == 1


def test_timer_moves_past_resolved_entries() -> None:
    """Check that resolving the earliest entry makes get_timer report the next live deadline."""
    table = PendingTable()
    table.add(mid(1), now=0.0, timeout=5.0)
    table.add(mid(2), now=0.0, timeout=8.0)
    table.add(mid(3), now=0.0, timeout=9.0)
    assert table.resolve(mid(1)) is True
    assert timer(table) == 8.0
    assert table.fail(mid(2)) is True
    assert timer(table) == 9.0
    assert table.poll(8.5) == []
    assert table.poll(9.0) == [PromiseTimedOut(mid(3), 9.0)]


def test_capacity_full_raises_and_leaves_the_table_unchanged() -> None:
    """Check that a 4th add to a 3-slot table raises PromiseCapacityFull and changes nothing."""
    table = PendingTable(capacity=3)
    for n in range(3):
        table.add(mid(n), now=0.0, timeout=10.0 + n)
    with pytest.raises(PromiseCapacityFull) as info:
        table.add(mid(99), now=1.0, timeout=1.0)
    error = info.value
    assert isinstance(error, RpcError)
    assert error.code is StatusCode.RESOURCE_EXHAUSTED
    assert "3" in error.message and "capacity" in error.message
    assert len(table) == 3
    assert mid(99) not in table
    assert timer(table) == 10.0  # the refused entry left no deadline behind
    assert table.poll(2.0) == []
    # A freed slot can be used again.
    assert table.resolve(mid(1)) is True
    table.add(mid(99), now=1.0, timeout=1.0)
    assert timer(table) == 2.0


def test_resolve_and_fail_after_timeout_return_false() -> None:
    """Check that an entry leaves once: resolve and fail after its timeout return False."""
    table = PendingTable()
    table.add(mid(1), now=0.0, timeout=1.0)
    table.add(mid(2), now=0.0, timeout=1.0)
    assert [e.message_id for e in table.poll(1.0)] == [mid(1), mid(2)]
    assert table.resolve(mid(1)) is False
    assert table.fail(mid(2)) is False
    assert table.resolve(mid(3)) is False  # never added


def test_resolve_and_fail_are_idempotent() -> None:
    """Check that a second resolve or fail of the same id returns False and changes nothing."""
    table = PendingTable()
    table.add(mid(1), now=0.0, timeout=1.0)
    table.add(mid(2), now=0.0, timeout=2.0)
    assert table.resolve(mid(1)) is True
    assert table.resolve(mid(1)) is False
    assert table.fail(mid(1)) is False
    assert table.fail(mid(2)) is True
    assert table.resolve(mid(2)) is False
    assert len(table) == 0
    assert table.poll(5.0) == []


def test_readding_a_removed_id_uses_only_the_new_deadline() -> None:
    """Check that an id resolved and added again times out at its new deadline only."""
    table = PendingTable()
    table.add(mid(1), now=0.0, timeout=100.0)
    table.add(mid(2), now=0.0, timeout=5.0)  # keeps the old mid(1) entry off the top
    assert table.resolve(mid(1)) is True
    table.add(mid(1), now=1.0, timeout=20.0)
    assert table.poll(5.0) == [PromiseTimedOut(mid(2), 5.0)]
    assert table.poll(21.0) == [PromiseTimedOut(mid(1), 21.0)]
    assert table.poll(100.0) == []  # the stale 100.0 entry is dead


def test_add_rejects_bad_arguments() -> None:
    """Check that add refuses a duplicate id, a bad timeout or now, and a non-bytes id."""
    table = PendingTable()
    table.add(mid(1), now=0.0, timeout=1.0)
    with pytest.raises(ValueError, match="already pending"):
        table.add(mid(1), now=0.5, timeout=5.0)
    for timeout in (-0.1, math.inf, math.nan):
        with pytest.raises(ValueError, match="timeout"):
            table.add(mid(2), now=0.0, timeout=timeout)
    with pytest.raises(ValueError, match="now"):
        table.add(mid(2), now=math.nan, timeout=1.0)
    with pytest.raises(TypeError, match="bytes"):
        table.add("not-bytes", now=0.0, timeout=1.0)  # type: ignore[arg-type]
    assert len(table) == 1
    assert timer(table) == 1.0


def test_duplicate_is_refused_before_capacity() -> None:
    """Check that a duplicate id in a full table is a ValueError, not PromiseCapacityFull."""
    table = PendingTable(capacity=1)
    table.add(mid(1), now=0.0, timeout=1.0)
    with pytest.raises(ValueError, match="already pending"):
        table.add(mid(1), now=0.0, timeout=1.0)


@pytest.mark.parametrize("capacity", [0, -1, 1.5, True, "10"])
def test_capacity_must_be_a_positive_int(capacity: object) -> None:
    """Check that the constructor refuses a capacity that is not an int of at least 1."""
    with pytest.raises(ValueError, match="capacity"):
        PendingTable(capacity=capacity)  # type: ignore[arg-type]


def test_add_resolve_cycles_leave_nothing_behind() -> None:
    """Check that 10,000 add+resolve cycles leave the table empty and the heap small."""
    table = PendingTable()
    ids = [uuid.UUID(int=n).bytes for n in range(10_000)]
    for n, message_id in enumerate(ids):
        table.add(message_id, now=float(n), timeout=30.0)
        assert table.resolve(message_id) is True
    assert len(table) == 0
    assert timer(table) is None
    assert len(table._heap) == 0


def test_dead_entries_are_compacted_while_the_earliest_stays_live() -> None:
    """Check that resolving entries behind a long-lived earliest one never lets the heap grow."""
    table = PendingTable()
    table.add(mid(0), now=0.0, timeout=1.0)  # stays pending: its entry keeps the top live
    peak = 0
    for n in range(1, 10_001):
        table.add(mid(n), now=0.0, timeout=100.0 + n)
        if n % 2 == 0:
            # Keep a few entries live, resolve the rest (never the top).
            assert table.resolve(mid(n)) is True
        if n % 10 == 9:
            assert table.fail(mid(n)) is True
        peak = max(peak, len(table._heap))
        assert len(table._heap) <= 2 * len(table) + 1
    assert len(table) == 1 + 10_000 // 2 - 10_000 // 10
    assert peak <= 2 * len(table) + 1
    # Drop all but the first: the heap shrinks with the table.
    for n in range(1, 10_001):
        table.resolve(mid(n))
    assert len(table) == 1
    assert len(table._heap) <= 3
    assert timer(table) == 1.0


def test_many_timeouts_then_empty() -> None:
    """Check that entries that all time out are returned once each and leave an empty heap."""
    table = PendingTable()
    for n in range(1000):
        table.add(mid(n), now=0.0, timeout=float(n % 7))
    expired = table.poll(6.0)
    assert len(expired) == 1000
    assert [e.deadline for e in expired] == sorted(e.deadline for e in expired)
    assert len({e.message_id for e in expired}) == 1000
    assert len(table) == 0
    assert table._heap == []


def test_clear_returns_pending_ids_in_add_order() -> None:
    """Check that clear removes every pending entry, returns their ids, and leaves no timer."""
    table = PendingTable()
    for n in (3, 1, 2):
        table.add(mid(n), now=0.0, timeout=float(n))
    table.resolve(mid(1))
    assert table.clear() == [mid(3), mid(2)]
    assert len(table) == 0
    assert timer(table) is None
    assert table.resolve(mid(3)) is False
    assert table.poll(100.0) == []
    assert table.clear() == []
    table.add(mid(3), now=0.0, timeout=1.0)  # usable again after a reconnect
    assert timer(table) == 1.0
