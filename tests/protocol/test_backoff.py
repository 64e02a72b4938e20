"""Tests for `Backoff`: the 1, 2, 4 ... 60 s schedule, its jitter bounds, reset and spread."""

from __future__ import annotations

import random
import statistics

import pytest

from quicflow.clock import FakeClock
from quicflow.protocol.backoff import Backoff

BASES = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0]


def test_first_eight_delays_lie_within_their_jitter_bounds() -> None:
    """Check that with a seeded rng delay n lies in [b_n * 0.8, b_n] for b = 1, 2, 4 ... 60, 60."""
    backoff = Backoff(rng=random.Random(1234))
    for n, base in enumerate(BASES):
        assert backoff.attempts == n
        assert backoff.base_delay(n) == base
        delay = backoff.next_delay()
        assert base * 0.8 <= delay <= base, (n, delay)
    assert backoff.attempts == 8


def test_delays_are_exactly_reproducible_from_the_seed() -> None:
    """Check that the same seed gives the same delays, each base times 1 - 0.2 * rng.random()."""
    expected_rng = random.Random(42)
    backoff = Backoff(rng=random.Random(42))
    for base in BASES:
        assert backoff.next_delay() == base * (1.0 - 0.2 * expected_rng.random())


def test_zero_jitter_gives_the_exact_bases() -> None:
    """Check that jitter=0 yields exactly 1, 2, 4, 8, 16, 32, 60, 60."""
    backoff = Backoff(jitter=0.0)
    assert [backoff.next_delay() for _ in BASES] == BASES


def test_delays_stay_capped_at_60_forever_without_overflow() -> None:
    """Check that after thousands of attempts the base is still exactly 60 and nothing overflows."""
    backoff = Backoff(rng=random.Random(0))
    delays = [backoff.next_delay() for _ in range(5000)]
    assert all(d <= 60.0 for d in delays)
    assert all(d >= 48.0 for d in delays[6:])
    assert backoff.base_delay(10**9) == 60.0
    huge = Backoff(initial=1.0, multiplier=1e300, maximum=1e308, jitter=0.0)
    assert [huge.next_delay() for _ in range(3)] == [1.0, 1e300, 1e308]


def test_reset_returns_to_about_one_second() -> None:
    """Check that reset after a healthy connection starts again from attempt 0 (about 1 s)."""
    backoff = Backoff(rng=random.Random(7))
    for _ in range(10):
        backoff.next_delay()
    backoff.reset()
    assert backoff.attempts == 0
    assert 0.8 <= backoff.next_delay() <= 1.0
    assert 1.6 <= backoff.next_delay() <= 2.0
    backoff.reset()
    backoff.reset()  # idempotent
    assert backoff.attempts == 0


def test_a_thousand_clients_do_not_return_in_lockstep() -> None:
    """Check that 1000 clients' first delays are all distinct and spread (stdev > 0.05 s)."""
    seeds = random.Random(99)
    firsts = [Backoff(rng=random.Random(seeds.getrandbits(64))).next_delay() for _ in range(1000)]
    assert len(set(firsts)) == 1000
    assert statistics.stdev(firsts) > 0.05
    assert min(firsts) >= 0.8 and max(firsts) <= 1.0
    assert max(firsts) - min(firsts) > 0.19  # they use the whole jitter band


def test_unseeded_backoffs_differ() -> None:
    """Check that the default rng is an independent, unseeded source per object."""
    firsts = {Backoff().next_delay() for _ in range(50)}
    assert len(firsts) > 1


def test_reconnect_schedule_on_a_fake_clock() -> None:
    """Check that a client retrying on a FakeClock attempts at the cumulative jittered delays."""
    clock = FakeClock()
    backoff = Backoff(jitter=0.0)
    attempts: list[float] = []

    def attempt() -> None:
        attempts.append(clock.time())
        if len(attempts) < 9:
            clock.call_later(backoff.next_delay(), attempt)

    clock.call_later(backoff.next_delay(), attempt)
    clock.advance(1000.0)
    assert attempts == [1.0, 3.0, 7.0, 15.0, 31.0, 63.0, 123.0, 183.0, 243.0]


def test_multiplier_one_is_a_constant_delay() -> None:
    """Check that multiplier=1 gives a constant base and initial == maximum caps at once."""
    flat = Backoff(initial=5.0, multiplier=1.0, maximum=60.0, jitter=0.0)
    assert [flat.next_delay() for _ in range(4)] == [5.0] * 4
    capped = Backoff(initial=3.0, multiplier=2.0, maximum=3.0, jitter=0.0)
    assert [capped.next_delay() for _ in range(3)] == [3.0] * 3


def test_repr_is_readable() -> None:
    """Check that the repr names every parameter and the attempt count."""
    backoff = Backoff()
    backoff.next_delay()
    assert repr(backoff) == (
        "Backoff(initial=1.0, multiplier=2.0, maximum=60.0, jitter=0.2, attempts=1)"
    )


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"initial": 0.0}, "initial"),
        ({"initial": -1.0}, "initial"),
        ({"initial": float("nan")}, "initial"),
        ({"multiplier": 0.5}, "multiplier"),
        ({"multiplier": float("inf")}, "multiplier"),
        ({"maximum": 0.5}, "maximum"),
        ({"maximum": float("inf")}, "maximum"),
        ({"jitter": -0.1}, "jitter"),
        ({"jitter": 1.0}, "jitter"),
        ({"jitter": float("nan")}, "jitter"),
    ],
)
def test_arguments_are_validated(kwargs: dict[str, float], name: str) -> None:
    """Check that each out-of-range argument raises ValueError naming that argument."""
    args = {"initial": 1.0, "multiplier": 2.0, "maximum": 60.0, "jitter": 0.2, **kwargs}
    with pytest.raises(ValueError, match=name):
        Backoff(args["initial"], args["multiplier"], args["maximum"], args["jitter"])


def test_base_delay_refuses_a_negative_attempt() -> None:
    """Check that base_delay(-1) raises ValueError naming the attempt."""
    with pytest.raises(ValueError, match="attempt"):
        Backoff().base_delay(-1)


def test_a_busy_answer_sets_the_next_delay_without_growing_the_backoff() -> None:
    """Check that after "server busy, retry in 3 s" the delay is 3 s plus up to the jitter
    of it more (exactly 3 * (1 + 0.2 * rng.random())), that the attempt count does not
    grow, and that the next ordinary delay is still the first one (~1 s)."""
    expected = random.Random(5)
    backoff = Backoff(rng=random.Random(5))
    assert backoff.busy_delay(3.0) == 3.0 * (1.0 + 0.2 * expected.random())
    assert backoff.attempts == 0
    assert backoff.next_delay() == 1.0 * (1.0 - 0.2 * expected.random())


def test_a_busy_answer_is_clamped_to_a_tenth_of_initial_and_to_the_cap() -> None:
    """Check that a server cannot make a client spin (0 ms: a tenth of ``initial``) nor wait
    beyond ``maximum`` (an hour: 60 s), jitter included."""
    backoff = Backoff(jitter=0.0)
    assert backoff.busy_delay(0.0) == 0.1
    assert backoff.busy_delay(3600.0) == 60.0
    assert Backoff(rng=random.Random(1)).busy_delay(59.0) <= 60.0
    with pytest.raises(ValueError, match="asked"):
        backoff.busy_delay(float("nan"))
