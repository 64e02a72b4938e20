"""`ResetBudget` on a virtual clock: exact levels, when it trips, who it spares."""

from __future__ import annotations

from quicflow.config import ServerConfig
from quicflow.protocol.budget import ResetBudget
from quicflow.testing import FakeClock


def _spend_every(budget: ResetBudget, clock: FakeClock, step: float, count: int) -> int | None:
    """Spend ``count`` resets ``step`` seconds apart; the 1-based index of the first that
    exceeds the budget, or None."""
    for n in range(1, count + 1):
        if not budget.spend(clock.time()):
            return n
        clock.advance(step)
    return None


def test_level_drains_at_the_rate_and_trips_past_the_burst() -> None:
    """Check the exact level: 1 per reset, minus rate x elapsed, never below 0; the reset
    that takes it past ``burst`` is the first refused."""
    clock = FakeClock()
    budget = ResetBudget(rate=64, burst=100, now=clock.time())
    # One reset every 1/128 s drains 0.5 between resets: level 1 + (n - 1) / 2 after n.
    assert _spend_every(budget, clock, 1 / 128, 199) is None
    assert budget.level == 100.0  # exactly at the burst: still allowed
    assert not budget.spend(clock.time())  # the 200th: 100.5 > 100
    assert budget.level == 100.5
    # Two quiet seconds drain 128, more than everything (the level stops at zero).
    clock.advance(2.0)
    assert budget.spend(clock.time())
    assert budget.level == 1.0


def test_a_burst_of_one_seconds_worth_is_allowed_and_no_more() -> None:
    """Check that ``burst`` resets at one instant pass and the next one does not."""
    clock = FakeClock(1000.0)
    budget = ResetBudget(rate=2000, burst=2000, now=clock.time())
    assert all(budget.spend(clock.time()) for _ in range(2000))
    assert not budget.spend(clock.time())


def test_default_spares_a_client_cancelling_1000_calls_a_second() -> None:
    """Check that the default budget (max_reset_rate) never trips for a client resetting
    1,000 calls a second for a minute, even in bursts of 100 every 0.1 s; and that it
    trips within a second for a peer resetting 4,000 a second."""
    rate = ServerConfig(cert_file="x.pem").max_reset_rate
    clock = FakeClock()
    budget = ResetBudget(rate, rate, clock.time())
    assert _spend_every(budget, clock, 1 / 1024, 60 * 1024) is None  # 1,024 a second
    for _ in range(600):  # bursts: 100 at once, ten times a second
        assert all(budget.spend(clock.time()) for _ in range(100))
        clock.advance(0.1)
    assert budget.level <= 100.0
    # An attacker at 4,096 a second: level grows by 1 - rate/4096 per reset.
    attacker = ResetBudget(rate, rate, clock.time())
    tripped = _spend_every(attacker, clock, 1 / 4096, 10_000)
    assert tripped is not None and tripped < 4096  # within its first second


# -- ByteBudget and PartialFrame: unfinished frames (docs/limits.md) --------------------


def test_byte_budget_serves_its_line_in_order_and_waits_for_its_parent() -> None:
    """Check exact counts: a reservation must fit the connection's budget and then the
    server's; one that does not waits in line (counted where it already fits), and each
    cancel serves the lines first come first served, outermost first."""
    from quicflow.protocol.budget import ByteBudget, Reservation

    granted: list[str] = []

    def ask(name: str, size: int) -> Reservation:
        return Reservation(size, lambda: granted.append(name))

    server = ByteBudget(10)
    conn_a = ByteBudget(6, parent=server)
    conn_b = ByteBudget(6, parent=server)
    a1, a2, b1, b2 = ask("a1", 6), ask("a2", 3), ask("b1", 4), ask("b2", 2)
    assert conn_a.reserve(a1)  # a: 6/6, server 6/10
    assert not conn_a.reserve(a2)  # a is full: waits in a's line
    assert conn_b.reserve(b1)  # b: 4/6, server 10/10
    assert not conn_b.reserve(b2)  # fits b (6/6) but not the server: waits there
    assert (conn_a.used, conn_b.used, server.used) == (6, 6, 10)
    assert (conn_a.waiting, conn_b.waiting, server.waiting) == (1, 0, 1)
    assert not b2.granted and granted == []
    conn_a.cancel(a1)  # server 4/10: b2 first (it was in the server's line), then a2
    assert granted == ["b2", "a2"]
    assert (conn_a.used, conn_b.used, server.used) == (3, 6, 9)
    conn_b.cancel(b2)
    conn_b.cancel(b2)  # idempotent
    conn_a.cancel(a2)
    conn_b.cancel(b1)
    assert (conn_a.used, conn_b.used, server.used) == (0, 0, 0)
    # Cancelling one still in line only takes it out of the line.
    big = ask("big", 5)
    assert conn_a.reserve(ask("x", 6)) and not conn_b.reserve(big)
    assert (server.waiting, conn_b.used, server.used) == (1, 5, 6)
    conn_b.cancel(big)
    assert (server.waiting, conn_b.used, server.used) == (0, 0, 6)
    assert "big" not in granted


def test_partial_frame_reserves_only_frames_over_the_threshold_and_times_each_frame() -> None:
    """Check on a virtual clock: a small unfinished frame withholds its bytes and has a
    deadline timeout after its first byte; a completed frame and a new one in the same
    chunk restart it; a large frame reserves its size (withholds nothing); one that
    must wait withholds its bytes and its time starts again when granted."""
    from quicflow.protocol.budget import ByteBudget, PartialFrame

    clock = FakeClock(100.0)
    budget = ByteBudget(1000)
    grants: list[float] = []
    first = PartialFrame(budget, threshold=100, timeout=30.0, on_grant=lambda: None)
    first.update(clock.time(), buffered=3, size=0, completed=False)  # a prefix in pieces
    assert (first.withheld, first.deadline, first.reserved) == (3, 130.0, False)
    clock.advance(10.0)
    first.update(clock.time(), buffered=50, size=80, completed=False)  # small: no reservation
    assert (first.withheld, first.deadline, budget.used) == (50, 130.0, 0)
    clock.advance(10.0)
    first.update(clock.time(), buffered=20, size=900, completed=True)  # next frame, large
    assert (first.withheld, first.deadline, first.reserved, budget.used) == (0, 150.0, True, 900)

    second = PartialFrame(budget, threshold=100, timeout=30.0, on_grant=lambda: None)

    def on_grant() -> None:
        grants.append(clock.time())
        second.granted(clock.time())

    second.on_grant = on_grant
    clock.advance(5.0)
    second.update(clock.time(), buffered=40, size=500, completed=False)  # 900 + 500 > 1000
    assert (second.waiting, second.withheld, second.deadline) == (True, 40, 155.0)
    clock.advance(3.0)
    first.update(clock.time(), buffered=0, size=0, completed=True)  # the large frame is done
    assert first.deadline is None and grants == [128.0]
    assert (second.reserved, second.withheld, second.deadline, budget.used) == (
        True,
        0,
        158.0,
        500,
    )
    second.close()
    assert budget.used == 0 and second.deadline is None


def test_a_frame_larger_than_the_budget_takes_all_of_it_alone() -> None:
    """Check that a frame over the smallest limit up the chain reserves exactly that limit
    (so it can be granted at all) and the next large frame waits for it."""
    from quicflow.protocol.budget import ByteBudget, PartialFrame

    server = ByteBudget(3000)
    conn = ByteBudget(5000, parent=server)
    assert conn.capacity == 3000
    huge = PartialFrame(conn, threshold=10, timeout=1.0, on_grant=lambda: None)
    huge.update(0.0, buffered=5, size=10_000, completed=False)
    assert huge.reserved and (conn.used, server.used) == (3000, 3000)
    other = PartialFrame(conn, threshold=10, timeout=1.0, on_grant=lambda: None)
    other.update(0.0, buffered=5, size=20, completed=False)
    assert other.waiting and other.withheld == 5
    huge.close()
    assert other.reserved and server.used == 20
