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
