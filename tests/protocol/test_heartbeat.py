"""Virtual-time tests for the heartbeat policy: exact ping, timeout, miss and eviction times."""

from __future__ import annotations

import functools
from collections.abc import Callable

import pytest

from quicflow.clock import FakeClock, FakeTimerHandle
from quicflow.errors import LocalProtocolError
from quicflow.protocol.heartbeat import (
    HeartbeatEvent,
    HeartbeatMissed,
    HeartbeatMonitor,
    HeartbeatSender,
    HeartbeatTimedOut,
    PingDue,
    QuietWatch,
    SessionExpired,
    negotiate_interval,
)

# -- helpers -------------------------------------------------------------------


def timer(obj: HeartbeatSender | HeartbeatMonitor) -> float | None:
    """``obj.get_timer()`` through a call, so mypy does not narrow it between steps."""
    return obj.get_timer()


def drive(
    obj: HeartbeatSender | HeartbeatMonitor, until: float, *, on_ping: bool = True
) -> list[tuple[float, HeartbeatEvent]]:
    """Poll ``obj`` at each of its timers up to ``until``; send each due ping when ``on_ping``.

    Returns every event with the time it was reported, like a runtime's one re-armed timer.
    """
    out: list[tuple[float, HeartbeatEvent]] = []
    while (when := obj.get_timer()) is not None and when <= until:
        for event in obj.poll(when):
            out.append((when, event))
            if on_ping and isinstance(event, PingDue) and isinstance(obj, HeartbeatSender):
                obj.ping_sent(event.sequence, when)
    return out


def run_monitor_on_clock(
    monitor: HeartbeatMonitor, clock: FakeClock, events: list[tuple[float, HeartbeatEvent]]
) -> None:
    """Arm ``monitor``'s timer on ``clock`` the way the runtime does: poll, record, re-arm."""

    def fire() -> None:
        now = clock.time()
        events.extend((now, e) for e in monitor.poll(now))
        arm()

    def arm() -> None:
        when = monitor.get_timer()
        if when is not None:
            clock.call_at(when, fire)

    arm()


# -- HeartbeatSender -----------------------------------------------------------


def test_sender_first_ping_is_due_one_interval_after_connecting() -> None:
    """Check that the first ping is due exactly at connected_at + interval, not before."""
    sender = HeartbeatSender(interval=15.0, timeout=5.0, now=100.0)
    assert sender.get_timer() == 115.0
    assert sender.poll(100.0) == []
    assert sender.poll(114.999) == []
    assert sender.poll(115.0) == [PingDue(1)]


def test_sender_pings_at_exactly_15_30_45_when_pongs_come_back() -> None:
    """Check that with prompt pongs the pings go out at exactly 15, 30 and 45, sequences 1, 2, 3."""
    sender = HeartbeatSender(interval=15.0, timeout=5.0, now=0.0)
    for sequence, at in enumerate((15.0, 30.0, 45.0), start=1):
        assert timer(sender) == at
        assert sender.poll(at) == [PingDue(sequence)]
        sender.ping_sent(sequence, at)
        assert timer(sender) == at + 5.0  # the pong deadline
        sender.pong_received(sequence, at + 0.25)
        assert sender.last_rtt == 0.25
        assert sender.outstanding is None
    assert timer(sender) == 60.0


def test_sender_missing_pong_times_out_exactly_at_ping_plus_timeout() -> None:
    """Check that an unanswered ping yields HeartbeatTimedOut exactly at 15 + timeout, once."""
    sender = HeartbeatSender(interval=15.0, timeout=5.0, now=0.0)
    [due] = sender.poll(15.0)
    assert due == PingDue(1)
    sender.ping_sent(1, 15.0)
    assert sender.get_timer() == 20.0
    assert sender.poll(19.999) == []
    assert sender.poll(20.0) == [HeartbeatTimedOut(sequence=1, sent_at=15.0)]
    assert sender.timed_out
    assert sender.get_timer() is None
    assert sender.poll(100.0) == []
    sender.pong_received(1, 21.0)  # too late: ignored
    assert sender.last_rtt is None


def test_sender_schedule_on_a_fake_clock() -> None:
    """Check that driven by FakeClock the pings land at 15, 30, 45 and a lost pong at 45 + 5."""
    clock = FakeClock()
    sender = HeartbeatSender(interval=15.0, timeout=5.0, now=clock.time())
    sent: list[float] = []
    timed_out: list[tuple[float, HeartbeatTimedOut]] = []

    def pong(sequence: int) -> Callable[[], None]:
        return lambda: sender.pong_received(sequence, clock.time())

    def fire() -> None:
        now = clock.time()
        for event in sender.poll(now):
            if isinstance(event, PingDue):
                sender.ping_sent(event.sequence, now)
                sent.append(now)
                if event.sequence < 3:  # the peer answers the first two only
                    clock.call_later(0.1, pong(event.sequence))
            elif isinstance(event, HeartbeatTimedOut):
                timed_out.append((now, event))
        when = sender.get_timer()
        if when is not None:
            clock.call_at(when, fire)

    clock.call_at(15.0, fire)
    clock.advance(3600.0)
    assert sent == [15.0, 30.0, 45.0]
    assert timed_out == [(50.0, HeartbeatTimedOut(3, 45.0))]
    assert clock.pending == 0


def test_sender_waits_for_the_pong_deadline_when_a_ping_is_due_while_one_is_outstanding() -> None:
    """Check that at most one ping is outstanding and a late pong releases the overdue ping."""
    sender = HeartbeatSender(interval=2.0, timeout=5.0, now=0.0)
    assert sender.poll(2.0) == [PingDue(1)]
    sender.ping_sent(1, 2.0)
    assert sender.get_timer() == 4.0  # the next ping's time: the pong is likely back by then
    assert sender.poll(4.0) == []  # ping 1 is still outstanding: ping 2 waits
    assert sender.get_timer() == 7.0  # now only ping 1's deadline matters
    assert sender.poll(6.0) == []
    sender.pong_received(1, 6.0)
    assert sender.last_rtt == 4.0
    assert sender.get_timer() == 4.0  # overdue since 4.0: poll at once
    assert sender.poll(6.0) == [PingDue(2)]
    sender.ping_sent(2, 6.0)
    assert sender.get_timer() == 8.0
    sender.pong_received(2, 6.5)
    assert sender.get_timer() == 8.0


def test_sender_timer_while_a_pong_is_outstanding_is_the_next_ping_then_the_deadline() -> None:
    """Check that with an interval shorter than the timeout the timer is the next ping's time
    while a pong is outstanding, and the deadline once a poll has passed that time."""
    sender = HeartbeatSender(interval=1.0, timeout=5.0, now=0.0)
    assert timer(sender) == 1.0
    assert sender.poll(1.0) == [PingDue(1)]
    assert timer(sender) == 6.0  # announced, not yet sent: only its deadline
    sender.ping_sent(1, 1.0)
    assert timer(sender) == 2.0
    assert sender.poll(1.5) == []
    assert timer(sender) == 2.0
    sender.pong_received(1, 1.02)  # a prompt pong leaves the timer where it was
    assert timer(sender) == 2.0
    assert sender.poll(2.0) == [PingDue(2)]
    sender.ping_sent(2, 2.0)
    assert sender.poll(3.0) == []  # pong 2 is late
    assert timer(sender) == 7.0
    assert sender.poll(7.0) == [HeartbeatTimedOut(2, 2.0)]


def test_sender_timer_with_an_interval_past_the_timeout_is_the_deadline() -> None:
    """Check that with an interval longer than the timeout an outstanding ping's timer is its
    deadline, and the next ping comes one interval after the last one."""
    sender = HeartbeatSender(interval=15.0, timeout=5.0, now=0.0)
    assert sender.poll(15.0) == [PingDue(1)]
    sender.ping_sent(1, 15.0)
    assert timer(sender) == 20.0
    sender.pong_received(1, 15.1)
    assert timer(sender) == 30.0


def _granted_intervals() -> list[float]:
    """Every interval a default server grants in 50 ms steps, from what clients may ask."""
    asked = [0.001, 0.5, 0.999] + [1.0 + step * 0.05 for step in range(281)] + [15.001, 60.0]
    return sorted({negotiate_interval(request, 15.0, 1.0) for request in asked})


def _pings_and_evictions(
    interval: float, timeout: float, rtt: float, until: float, *, rearm_on_pong: bool
) -> tuple[list[float], list[tuple[float, HeartbeatEvent]]]:
    """Run a client's `HeartbeatSender` against a server's `HeartbeatMonitor` on one
    `FakeClock` over a link with ``rtt``: the server starts the session at 0.0 as it sends
    WELCOME, which reaches the client at rtt / 2; each PING reaches the server after
    rtt / 2 and its PONG is back after rtt. The client's runtime re-arms its one timer
    after each poll and, when ``rearm_on_pong``, after each pong; the server as the Python
    server does (default ServerConfig: checks every min(5 s, interval), 3 misses).

    Returns the times pings were sent and every event the server's monitor reported.
    """
    clock = FakeClock()
    sender = HeartbeatSender(interval=interval, timeout=timeout, now=rtt / 2)
    monitor = HeartbeatMonitor(interval, min(5.0, interval), 3, now=0.0)
    server_events: list[tuple[float, HeartbeatEvent]] = []
    run_monitor_on_clock(monitor, clock, server_events)
    pings: list[float] = []
    handle: list[FakeTimerHandle] = []

    def arm() -> None:
        for old in handle:
            old.cancel()
        handle.clear()
        when = sender.get_timer()
        if when is not None:
            handle.append(clock.call_at(when, fire))

    def pong(sequence: int) -> None:
        sender.pong_received(sequence, clock.time())
        if rearm_on_pong:
            arm()

    def fire() -> None:
        now = clock.time()
        for event in sender.poll(now):
            assert isinstance(event, PingDue), (now, event)
            sender.ping_sent(event.sequence, now)
            pings.append(now)
            clock.call_at(now + rtt / 2, lambda: monitor.ping_received(clock.time()))
            clock.call_at(now + rtt, functools.partial(pong, event.sequence))
        arm()

    arm()
    clock.advance(until)
    return pings, server_events


@pytest.mark.parametrize("rearm_on_pong", [False, True], ids=["rearm-after-poll", "and-pong"])
def test_client_is_never_evicted_at_any_interval_the_server_grants(rearm_on_pong: bool) -> None:
    """Check that for every interval a default server grants (1 s to 15 s) a client with the
    default 5 s pong timeout pings exactly one interval after each ping (§9.3) and the
    server never counts two misses in a row, whether its runtime re-arms after pongs or only
    after polls. (The Python client once pinged only every max(interval, timeout), and a
    default server evicted it 4 s after connecting at a 1 s interval.)"""
    intervals = _granted_intervals()
    assert intervals[0] == 1.0 and intervals[-1] == 15.0 and len(intervals) == 281
    for interval in intervals:
        until = 12 * interval
        pings, server_events = _pings_and_evictions(
            interval, 5.0, 0.02, until, rearm_on_pong=rearm_on_pong
        )
        expected = [0.01 + interval]
        while expected[-1] + interval <= until:
            expected.append(expected[-1] + interval)
        assert pings == expected, interval
        # The first PING lands one interval + one RTT after WELCOME left: a check at
        # exactly one interval may count that one miss, never a second.
        assert all(event == HeartbeatMissed(1, 0.0) for _, event in server_events), interval


def test_a_late_pong_releases_the_overdue_ping_at_once() -> None:
    """Check that when pongs take longer than the interval each ping goes out the moment the
    previous pong arrives (§9.3: a due PING waits for the answer) and the server, with
    1.5 s between pings at a 1 s interval, counts misses but never evicts."""
    pings, server_events = _pings_and_evictions(1.0, 5.0, 1.5, 10.0, rearm_on_pong=True)
    assert pings == [1.75, 3.25, 4.75, 6.25, 7.75, 9.25]
    assert not any(isinstance(event, SessionExpired) for _, event in server_events)


def test_sender_ignores_stale_and_unknown_pongs() -> None:
    """Check that a pong for another sequence neither clears the ping nor sets the RTT."""
    sender = HeartbeatSender(interval=15.0, timeout=5.0, now=0.0)
    sender.pong_received(1, 1.0)  # nothing outstanding
    assert sender.poll(15.0) == [PingDue(1)]
    sender.ping_sent(1, 15.0)
    sender.pong_received(7, 15.5)
    sender.pong_received(0, 15.5)
    assert sender.outstanding == 1
    assert sender.last_rtt is None
    sender.pong_received(1, 16.0)
    sender.pong_received(1, 16.5)  # duplicate
    assert sender.last_rtt == 1.0
    assert sender.outstanding is None


def test_sender_reports_ping_due_once_per_sequence() -> None:
    """Check that polling again before ping_sent does not announce the same ping twice."""
    sender = HeartbeatSender(interval=15.0, timeout=5.0, now=0.0)
    assert sender.poll(15.0) == [PingDue(1)]
    assert sender.poll(15.0) == []
    assert sender.get_timer() == 20.0  # the deadline runs from the announcement
    sender.ping_sent(1, 15.5)
    assert sender.get_timer() == 20.5
    sender.pong_received(1, 15.6)
    assert sender.get_timer() == 30.5


def test_sender_times_out_when_the_runtime_never_sends_the_announced_ping() -> None:
    """Check that an announced but never-sent ping still times out, so the sender cannot stall."""
    sender = HeartbeatSender(interval=15.0, timeout=5.0, now=0.0)
    assert sender.poll(15.0) == [PingDue(1)]
    assert sender.poll(20.0) == [HeartbeatTimedOut(1, 15.0)]


def test_sender_accepts_a_pong_that_beats_ping_sent() -> None:
    """Check that a pong arriving before ping_sent is recorded and the schedule continues."""
    sender = HeartbeatSender(interval=15.0, timeout=5.0, now=0.0)
    assert sender.poll(15.0) == [PingDue(1)]
    sender.pong_received(1, 15.25)
    assert sender.last_rtt == 0.25
    assert sender.get_timer() == 30.0
    with pytest.raises(LocalProtocolError, match="cannot send ping 1 with no ping due"):
        sender.ping_sent(1, 15.3)


def test_sender_refuses_ping_sent_for_a_ping_that_was_not_announced() -> None:
    """Check that ping_sent with no ping due, or the wrong sequence, is local misuse."""
    sender = HeartbeatSender(interval=15.0, timeout=5.0, now=0.0)
    with pytest.raises(LocalProtocolError, match="cannot send ping 1 with no ping due"):
        sender.ping_sent(1, 1.0)
    assert sender.poll(15.0) == [PingDue(1)]
    with pytest.raises(LocalProtocolError, match="cannot send ping 2 with ping 1 due"):
        sender.ping_sent(2, 15.0)
    sender.ping_sent(1, 15.0)
    with pytest.raises(LocalProtocolError):
        sender.ping_sent(1, 15.0)


def test_sender_set_interval_reschedules_from_the_last_ping() -> None:
    """Check that the server's interval replaces the local one from the last ping (or start)."""
    sender = HeartbeatSender(interval=15.0, timeout=5.0, now=10.0)
    sender.set_interval(30.0)  # WELCOME right after connecting
    assert sender.interval == 30.0
    assert sender.get_timer() == 40.0
    assert sender.poll(40.0) == [PingDue(1)]
    sender.ping_sent(1, 40.0)
    sender.pong_received(1, 40.1)
    sender.set_interval(10.0)
    assert sender.get_timer() == 50.0
    assert sender.next_ping_at == 50.0


@pytest.mark.parametrize("name", ["interval", "timeout"])
@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf")])
def test_sender_validates_its_arguments(name: str, bad: float) -> None:
    """Check that a non-positive or non-finite interval or timeout raises ValueError naming it."""
    kwargs = {"interval": 15.0, "timeout": 5.0, name: bad}
    with pytest.raises(ValueError, match=name):
        HeartbeatSender(kwargs["interval"], kwargs["timeout"], now=0.0)
    with pytest.raises(ValueError, match="interval"):
        HeartbeatSender(15.0, 5.0, now=0.0).set_interval(bad)


# -- negotiate_interval ----------------------------------------------------------


@pytest.mark.parametrize(
    ("requested", "expected"),
    [(None, 15.0), (0.0, 15.0), (5.0, 5.0), (15.0, 15.0), (60.0, 15.0), (0.5, 1.0), (1.0, 1.0)],
)
def test_negotiate_interval_lets_the_client_only_ask_for_shorter(
    requested: float | None, expected: float
) -> None:
    """Check that None/0 give the server's interval and a request is clamped to [min, server]."""
    assert negotiate_interval(requested, server_interval=15.0, server_minimum=1.0) == expected


def test_negotiate_interval_validates_the_server_side() -> None:
    """Check that a minimum above the interval, or a bad request, raises ValueError naming it."""
    with pytest.raises(ValueError, match="server_minimum"):
        negotiate_interval(None, server_interval=5.0, server_minimum=10.0)
    with pytest.raises(ValueError, match="server_interval"):
        negotiate_interval(None, server_interval=0.0, server_minimum=0.0)
    with pytest.raises(ValueError, match="client_requested"):
        negotiate_interval(-1.0, server_interval=15.0, server_minimum=1.0)


# -- HeartbeatMonitor -------------------------------------------------------------


def test_monitor_pins_the_schedule_after_pings_stop_at_7() -> None:
    """Check that pings stopping at 7 give misses at checks 25 and 40 and eviction exactly at 52."""
    monitor = HeartbeatMonitor(interval=15.0, check_interval=5.0, max_missed=3, now=0.0)
    assert monitor.get_timer() == 5.0
    assert monitor.poll(5.0) == []
    monitor.ping_received(7.0)
    assert monitor.expires_at == 52.0
    events = drive(monitor, until=3600.0)
    assert events == [
        (25.0, HeartbeatMissed(count=1, last_ping=7.0)),  # first check >= 22
        (40.0, HeartbeatMissed(count=2, last_ping=7.0)),  # first check >= 37
        (52.0, SessionExpired(last_ping=7.0, missed=3)),  # exactly 7 + 45, not a check
    ]
    assert monitor.expired
    assert monitor.get_timer() is None
    assert monitor.poll(60.0) == []


def test_monitor_timers_are_the_checks_then_the_eviction_deadline() -> None:
    """Check that get_timer walks the 5 s checks and returns 52 (not 55) before eviction."""
    monitor = HeartbeatMonitor(15.0, 5.0, 3, now=0.0)
    monitor.ping_received(7.0)
    seen: list[float] = []
    while (when := monitor.get_timer()) is not None:
        seen.append(when)
        monitor.poll(when)
    assert seen == [5.0 * k for k in range(1, 11)] + [52.0]


def test_monitor_evicts_exactly_45_s_after_session_start_without_pings() -> None:
    """Check that a session that never pings is evicted exactly at 45 with misses at 15 and 30."""
    monitor = HeartbeatMonitor(15.0, 5.0, 3, now=0.0)
    assert drive(monitor, until=100.0) == [
        (15.0, HeartbeatMissed(1, 0.0)),
        (30.0, HeartbeatMissed(2, 0.0)),
        (45.0, SessionExpired(0.0, 3)),
    ]


def test_monitor_on_a_fake_clock_after_the_last_ping() -> None:
    """Check that on a FakeClock the eviction comes exactly 45 s after the last ping at 1000."""
    clock = FakeClock(start=1000.0)
    monitor = HeartbeatMonitor(15.0, 5.0, 3, now=clock.time())
    events: list[tuple[float, HeartbeatEvent]] = []
    run_monitor_on_clock(monitor, clock, events)
    clock.advance(12.5)
    monitor.ping_received(clock.time())
    clock.advance(600.0)
    assert events == [
        (1030.0, HeartbeatMissed(1, 1012.5)),
        (1045.0, HeartbeatMissed(2, 1012.5)),
        (1057.5, SessionExpired(1012.5, 3)),
    ]


def test_monitor_pings_every_15_s_never_miss_over_an_hour() -> None:
    """Check that a client pinging every 15 s (the interval itself) is never reported missing."""
    clock = FakeClock()
    monitor = HeartbeatMonitor(15.0, 5.0, 3, now=clock.time())
    events: list[tuple[float, HeartbeatEvent]] = []
    run_monitor_on_clock(monitor, clock, events)

    def ping() -> None:
        monitor.ping_received(clock.time())
        clock.call_later(15.0, ping)

    # At a shared instant the ping lands first (it was scheduled earlier), as a
    # PING read before the timer fires would.
    clock.call_at(15.0, ping)
    for _ in range(3600):
        clock.advance(1.0)
    assert events == []
    assert monitor.missed_count == 0
    assert not monitor.expired


def test_monitor_pings_just_under_the_interval_never_miss_at_any_phase() -> None:
    """Check that pings every 14.9 s never count a miss, whatever their phase against the checks."""
    for phase in (0.0, 0.1, 2.5, 4.9):
        monitor = HeartbeatMonitor(15.0, 5.0, 3, now=0.0)
        events: list[HeartbeatEvent] = []
        next_ping = phase  # the first ping comes within one interval of the start
        while next_ping < 3600.0:
            while (when := timer(monitor)) is not None and when <= next_ping:
                events += monitor.poll(when)
            monitor.ping_received(next_ping)
            next_ping += 14.9
        assert events == [], phase


def test_monitor_ping_after_one_miss_resets_the_count() -> None:
    """Check that a ping after a miss resets the count and moves the eviction deadline."""
    monitor = HeartbeatMonitor(15.0, 5.0, 3, now=0.0)
    assert drive(monitor, until=15.0) == [(15.0, HeartbeatMissed(1, 0.0))]
    assert monitor.missed_count == 1
    monitor.ping_received(17.0)
    assert monitor.missed_count == 0
    assert monitor.expires_at == 62.0
    assert drive(monitor, until=3600.0) == [
        (35.0, HeartbeatMissed(1, 17.0)),  # the count starts again at 1
        (50.0, HeartbeatMissed(2, 17.0)),
        (62.0, SessionExpired(17.0, 3)),
    ]


def test_monitor_missed_counts_whole_intervals_despite_float_error() -> None:
    """Check that exactly one interval counts as a miss even when float division falls short."""
    monitor = HeartbeatMonitor(15.0, 5.0, 3, now=0.0)
    assert monitor.missed(14.999) == 0
    assert monitor.missed(15.0) == 1
    assert monitor.missed(44.9) == 2
    assert monitor.missed(45.0) == 3
    tenths = HeartbeatMonitor(0.1, 0.05, 3, now=0.0)
    assert 0.3 / 0.1 < 3  # the float error the epsilon absorbs
    assert tenths.missed(0.3) == 3
    assert tenths.missed(0.1 + 0.2) == 3


def test_monitor_with_short_intervals_evicts_at_the_deadline() -> None:
    """Check that tenths-of-a-second settings keep the same shape: misses 1, 2, then eviction."""
    monitor = HeartbeatMonitor(0.1, 0.05, 3, now=0.0)
    events = drive(monitor, until=10.0)
    assert [type(e) for _, e in events] == [HeartbeatMissed, HeartbeatMissed, SessionExpired]
    assert events[-1][0] == pytest.approx(0.3)
    assert events[0][0] == pytest.approx(0.1)


def test_monitor_late_poll_reports_the_skipped_misses_before_expiring() -> None:
    """Check that a poll long after the deadline reports misses 1 and 2, then the real count."""
    monitor = HeartbeatMonitor(15.0, 5.0, 3, now=0.0)
    assert monitor.poll(61.0) == [
        HeartbeatMissed(1, 0.0),
        HeartbeatMissed(2, 0.0),
        SessionExpired(0.0, 4),
    ]
    assert monitor.get_timer() is None


def test_monitor_early_and_repeated_polls_are_harmless() -> None:
    """Check that polling before a check, or twice at one check, reports nothing extra."""
    monitor = HeartbeatMonitor(15.0, 5.0, 3, now=0.0)
    assert monitor.poll(3.0) == []  # before the first check
    assert monitor.get_timer() == 5.0
    assert monitor.poll(14.0) == []  # a late check at 14: no whole interval yet
    assert monitor.get_timer() == 15.0
    assert monitor.poll(15.0) == [HeartbeatMissed(1, 0.0)]
    assert monitor.poll(15.0) == []
    assert monitor.get_timer() == 20.0


def test_monitor_checks_do_not_drift() -> None:
    """Check that the thousandth check is at exactly start + 1000 * check_interval."""
    monitor = HeartbeatMonitor(0.3, 0.1, 3, now=0.0)
    for _ in range(1000):
        monitor.ping_received(monitor.next_check_at)
        monitor.poll(monitor.next_check_at)
    assert monitor.next_check_at == 1001 * 0.1


def test_monitor_ignores_pings_after_expiry_and_out_of_order_times() -> None:
    """Check that a ping after eviction changes nothing and an older timestamp never moves back."""
    monitor = HeartbeatMonitor(15.0, 5.0, 3, now=0.0)
    monitor.ping_received(10.0)
    monitor.ping_received(8.0)
    assert monitor.last_ping == 10.0
    monitor.poll(55.0)
    assert monitor.expired
    monitor.ping_received(56.0)
    assert monitor.last_ping == 10.0
    assert monitor.get_timer() is None


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"interval": 0.0}, "interval"),
        ({"check_interval": -5.0}, "check_interval"),
        ({"check_interval": float("nan")}, "check_interval"),
        ({"max_missed": 0}, "max_missed"),
        ({"max_missed": 2.5}, "max_missed"),
        ({"max_missed": True}, "max_missed"),
    ],
)
def test_monitor_validates_its_arguments(kwargs: dict[str, float], name: str) -> None:
    """Check that a bad interval, check interval or miss limit raises ValueError naming it."""
    args: dict[str, float] = {"interval": 15.0, "check_interval": 5.0, "max_missed": 3}
    args.update(kwargs)
    with pytest.raises(ValueError, match=name):
        HeartbeatMonitor(
            args["interval"],
            args["check_interval"],
            args["max_missed"],  # type: ignore[arg-type]
            now=0.0,
        )


# -- QuietWatch: the client's nudge ------------------------------------------------------


def test_quiet_watch_backs_off_while_the_server_sends_no_data() -> None:
    """A call waiting since 0.0 on a server silent since 0.0: nudges at exactly 1, 3, 7,
    15 s, then every 15 s (``longest``)."""
    watch = QuietWatch(after=1.0, longest=15.0)
    nudges = []
    for _ in range(6):
        now = watch.next_check(last_heard=0.0, last_data=0.0)
        assert not watch.poll(now - 0.001, last_heard=0.0, last_data=0.0, waiting=True)
        assert watch.poll(now, last_heard=0.0, last_data=0.0, waiting=True)
        nudges.append(now)
    assert nudges == [1.0, 3.0, 7.0, 15.0, 30.0, 45.0]


def test_quiet_watch_counts_silence_from_the_last_datagram_or_nudge() -> None:
    watch = QuietWatch(after=1.0, longest=15.0)
    assert not watch.poll(0.999, last_heard=0.0, last_data=0.0, waiting=True)
    assert watch.poll(1.0, last_heard=0.0, last_data=0.0, waiting=True)
    assert watch.next_check(0.0, 0.0) == 3.0
    # The nudge's ACK at 1.5 (no data) moves the next one to 1.5 + 2.
    assert watch.next_check(1.5, 0.0) == 3.5
    assert not watch.poll(3.499, last_heard=1.5, last_data=0.0, waiting=True)
    assert watch.poll(3.5, last_heard=1.5, last_data=0.0, waiting=True)
    # Data at 4.0 ends the streak: the next nudge is 1 s after it.
    assert watch.next_check(4.0, 4.0) == 5.0
    assert watch.poll(5.0, last_heard=4.0, last_data=4.0, waiting=True)
    assert watch.next_check(4.0, 4.0) == 7.0  # and the series starts again: 2 s


def test_quiet_watch_never_nudges_when_nothing_is_awaited() -> None:
    watch = QuietWatch(after=0.5)
    assert not watch.poll(100.0, last_heard=0.0, last_data=0.0, waiting=False)
    # ... and not waiting left no trace: the first poll while waiting nudges at once.
    assert watch.poll(100.0, last_heard=0.0, last_data=0.0, waiting=True)


def test_quiet_watch_drives_on_a_virtual_clock() -> None:
    """The runtime's loop: arm at next_check, poll, re-arm only while waiting."""
    clock = FakeClock()
    watch = QuietWatch(after=0.2, longest=3.0)
    state = {"heard": 0.0, "data": 0.0, "waiting": True}
    nudged: list[float] = []

    def tick() -> None:
        if not state["waiting"]:
            return
        if watch.poll(clock.time(), state["heard"], state["data"], True):
            nudged.append(round(clock.time(), 9))
        clock.call_at(watch.next_check(state["heard"], state["data"]), tick)

    clock.call_at(watch.next_check(0.0, 0.0), tick)
    clock.advance(0.7)
    assert nudged == [0.2, 0.6]  # gaps 0.2, then 0.4 (no data)
    state["heard"] = state["data"] = 0.7  # the server answered at 0.7
    clock.advance(0.5)  # 1.2: the check armed for 1.4 has not fired yet
    assert nudged == [0.2, 0.6]
    clock.advance(0.25)  # its poll at 1.4 sees data after the last nudge: due at 0.9, sent
    assert nudged == [0.2, 0.6, 1.4]
    state["waiting"] = False
    clock.advance(5.0)
    assert nudged == [0.2, 0.6, 1.4]


@pytest.mark.parametrize(
    ("after", "longest"),
    [(0, None), (-1.0, None), (float("inf"), None), (float("nan"), None), (1.0, 0.5)],
)
def test_quiet_watch_validates_its_arguments(after: float, longest: float | None) -> None:
    with pytest.raises(ValueError, match=r"after|longest"):
        QuietWatch(after, longest)


def test_quiet_watch_a_wait_of_days_keeps_the_longest_gap() -> None:
    """Thousands of nudges without data (a quiet subscription): the gap stays ``longest``."""
    watch = QuietWatch(after=1.0, longest=15.0)
    heard = 0.0  # each nudge's ACK arrives at once: no data
    for _ in range(5_000):
        now = watch.next_check(last_heard=heard, last_data=0.0)
        assert watch.poll(now, last_heard=heard, last_data=0.0, waiting=True)
        heard = now
    assert watch.next_check(last_heard=heard, last_data=0.0) == heard + 15.0


def _drive_with(
    monitor: HeartbeatMonitor,
    deadline: Callable[[], float | None],
    pings: list[float],
    until: float,
) -> tuple[list[tuple[float, HeartbeatEvent]], int]:
    """Poll ``monitor`` at each ``deadline()`` up to ``until``, with a ping at each of
    ``pings`` (a ping at a poll's time comes first); the events and the number of polls."""
    events: list[tuple[float, HeartbeatEvent]] = []
    polls = 0
    pending = sorted(pings)
    while True:
        when = deadline()
        if pending and (when is None or pending[0] <= when):
            monitor.ping_received(pending.pop(0))
            continue
        if when is None or when > until:
            return events, polls
        polls += 1
        events.extend((when, e) for e in monitor.poll(when))


@pytest.mark.parametrize(
    ("check_interval", "pings"),
    [
        (5.0, [15.0 * k for k in range(1, 11)]),  # on time, then silent from 150
        (5.0, [7.0]),
        (5.0, []),
        (5.0, [3.0, 14.9, 31.0, 44.5, 59.99, 61.0]),
        (4.0, [15.0 * k for k in range(1, 11)]),  # checks that do not divide the interval
        (4.0, [2.5, 20.0, 33.3]),
        (0.1, [0.3 * k for k in range(1, 40)]),
    ],
)
def test_monitor_next_report_at_polls_less_and_reports_the_same(
    check_interval: float, pings: list[float]
) -> None:
    """Check that a timer at next_report_at gets exactly the events, at exactly the times,
    that one at get_timer (every check) gets, whatever the pings, with fewer polls."""
    interval = 0.3 if check_interval == 0.1 else 15.0
    every_check = HeartbeatMonitor(interval, check_interval, 3, now=0.0)
    expected, checks = _drive_with(every_check, every_check.get_timer, pings, 1000.0)
    monitor = HeartbeatMonitor(interval, check_interval, 3, now=0.0)
    events, polls = _drive_with(monitor, monitor.next_report_at, pings, 1000.0)
    assert events == expected
    assert isinstance(events[-1][1], SessionExpired)
    assert polls < checks
    assert monitor.next_report_at() is None


def test_monitor_next_report_at_pins_one_poll_per_interval_of_a_punctual_client() -> None:
    """Check that a client pinging every 15 s (checks every 5 s) is polled at 15, 30, 45
    (the first check at or after each ping + 15 s), not at every check, and that once it
    stops (last ping at 45) misses come at 60 and 75 and eviction at exactly 90."""
    monitor = HeartbeatMonitor(15.0, 5.0, 3, now=0.0)
    assert monitor.next_report_at() == 15.0
    monitor.ping_received(14.0)
    assert monitor.poll(15.0) == []
    assert monitor.next_report_at() == 30.0  # first check >= 14 + 15
    monitor.ping_received(29.5)
    assert monitor.poll(30.0) == []
    assert monitor.next_report_at() == 45.0
    monitor.ping_received(45.0)
    assert monitor.poll(45.0) == []
    assert monitor.next_report_at() == 60.0
    assert monitor.poll(60.0) == [HeartbeatMissed(1, 45.0)]
    assert monitor.next_report_at() == 75.0
    assert monitor.poll(75.0) == [HeartbeatMissed(2, 45.0)]
    assert monitor.next_report_at() == 90.0
    assert monitor.poll(90.0) == [SessionExpired(45.0, 3)]
    assert monitor.next_report_at() is None
