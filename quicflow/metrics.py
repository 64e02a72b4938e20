"""Metrics: counts, throughput and latency, recorded where things happen.

Every `Server` and `Client` owns one `Metrics` (unless its config says
``metrics=False``). The runtime records into plain Python ints and
fixed-bucket histograms that this object owns: one attribute increment, or
one ``bisect`` into a preallocated list, per event. Nothing here takes a
lock or allocates per call, and nothing calls prometheus-client on the hot
path; the Prometheus collector (`quicflow.prometheus`) reads these numbers
at scrape time.

Calls are counted per *role*:

* ``handled``: calls this side answers (on a server, the clients' calls; on
  a client, the calls the server pushes to it);
* ``made``: calls this side starts (on a client, its calls; on a server, its
  pushes to clients).

and per method. Method labels stay bounded: on the answering side, a route
nobody serves is counted as ``"unknown"``; on the calling side, routes past
the first `MAX_METHODS` distinct ones are counted as ``"unknown"`` too.

`Metrics.snapshot` returns a `MetricsSnapshot`: totals, p50/p90/p99
latency per method and overall (estimated inside the histogram's buckets),
and throughput over the last `WINDOW` seconds, sampled once a second by a
timer on the injectable clock (`quicflow.clock`), so tests drive it with a
`FakeClock` and get exact numbers.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field

from .clock import Clock, TimerHandleLike
from .status import StatusCode

__all__ = [
    "LATENCY_BUCKETS",
    "LatencySummary",
    "MethodMetrics",
    "Metrics",
    "MetricsSnapshot",
    "Throughput",
]

LATENCY_BUCKETS: tuple[float, ...] = (
    0.00005,
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)
"""Upper bounds (seconds) of the latency histograms' buckets; one more bucket holds the rest."""

WINDOW = 10
"""Seconds of history behind the throughput figures."""

MAX_METHODS = 256
"""Distinct method labels per role; later ones are counted as ``"unknown"``."""

UNKNOWN_METHOD = "unknown"
"""The method label of routes nobody serves (and of routes past `MAX_METHODS`)."""

_CODES = len(StatusCode)


class Histogram:
    """Fixed buckets (`LATENCY_BUCKETS`), observed with one bisect; not thread-safe by design
    (everything runs on one event loop)."""

    __slots__ = ("bounds", "count", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...] = LATENCY_BUCKETS) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        """Observations per bucket (not cumulative); the last is above every bound."""
        self.count = 0
        self.sum = 0.0

    def observe(self, value: float) -> None:
        """Record one observation (seconds)."""
        self.counts[bisect_left(self.bounds, value)] += 1
        self.count += 1
        self.sum += value

    def merge(self, other: Histogram) -> None:
        """Add ``other``'s observations to this one (same bounds)."""
        for i, n in enumerate(other.counts):
            self.counts[i] += n
        self.count += other.count
        self.sum += other.sum

    def quantile(self, q: float) -> float | None:
        """The ``q`` quantile (0..1), interpolated inside its bucket; None when empty.

        Like Prometheus' ``histogram_quantile``: a value in the last (open)
        bucket is reported as the highest bound.
        """
        if self.count == 0:
            return None
        rank = q * self.count
        seen = 0
        for i, n in enumerate(self.counts):
            if n and seen + n >= rank:
                if i >= len(self.bounds):
                    return self.bounds[-1]
                low = self.bounds[i - 1] if i > 0 else 0.0
                high = self.bounds[i]
                return low + (high - low) * ((rank - seen) / n)
            seen += n
        return self.bounds[-1]

    def summary(self) -> LatencySummary:
        """Count, sum and p50/p90/p99 of what was observed."""
        return LatencySummary(
            count=self.count,
            sum=self.sum,
            p50=self.quantile(0.5),
            p90=self.quantile(0.9),
            p99=self.quantile(0.99),
        )


class MethodStats:
    """Live counters of one method in one role (internal; read `MethodMetrics`)."""

    __slots__ = (
        "bytes_received",
        "bytes_sent",
        "codes",
        "latency",
        "messages_received",
        "messages_sent",
        "method",
        "retries",
        "started",
    )

    def __init__(self, method: str) -> None:
        self.method = method
        self.started = 0
        self.codes = [0] * _CODES
        """Finished calls by status code (index: the code's number)."""
        self.messages_sent = 0
        self.messages_received = 0
        self.bytes_sent = 0
        self.bytes_received = 0
        self.retries = 0
        """Attempts after the first (calls made only; quicflow/retry.py)."""
        self.latency = Histogram()

    def finished(self, code: int, seconds: float) -> None:
        """One call ended with ``code`` after ``seconds``."""
        self.codes[code] += 1
        self.latency.observe(seconds)

    def snapshot(self) -> MethodMetrics:
        """A frozen copy."""
        return MethodMetrics(
            method=self.method,
            started=self.started,
            finished={StatusCode(i).name: n for i, n in enumerate(self.codes) if n},
            messages_sent=self.messages_sent,
            messages_received=self.messages_received,
            bytes_sent=self.bytes_sent,
            bytes_received=self.bytes_received,
            latency=self.latency.summary(),
            retries=self.retries,
        )


class RoleStats:
    """The methods of one role (``handled`` or ``made``), with bounded labels."""

    __slots__ = ("methods", "unknown")

    def __init__(self) -> None:
        self.methods: dict[str, MethodStats] = {}
        self.unknown = MethodStats(UNKNOWN_METHOD)

    def method(self, route: str) -> MethodStats:
        """The stats of ``route`` (created on first use; past `MAX_METHODS`: ``unknown``)."""
        stats = self.methods.get(route)
        if stats is None:
            if len(self.methods) >= MAX_METHODS:
                return self.unknown
            stats = self.methods[route] = MethodStats(route)
        return stats

    def all(self) -> list[MethodStats]:
        """Every method's stats, ``unknown`` last when it has seen anything."""
        out = list(self.methods.values())
        if self.unknown.started or any(self.unknown.codes):
            out.append(self.unknown)
        return out

    def totals(self) -> tuple[int, int, int, int, int, int]:
        """(started, finished, messages sent, received, bytes sent, received) of every method."""
        started = finished = ms = mr = bs = br = 0
        for s in self.all():
            started += s.started
            finished += sum(s.codes)
            ms += s.messages_sent
            mr += s.messages_received
            bs += s.bytes_sent
            br += s.bytes_received
        return started, finished, ms, mr, bs, br

    def latency(self) -> Histogram:
        """Every method's latency in one histogram."""
        merged = Histogram()
        for s in self.all():
            merged.merge(s.latency)
        return merged


@dataclass(frozen=True, slots=True)
class LatencySummary:
    """Latency of finished calls, in seconds (percentiles estimated within buckets)."""

    count: int
    """Calls observed."""
    sum: float
    """Their total latency."""
    p50: float | None
    """Median; None before the first call."""
    p90: float | None
    """90th percentile; None before the first call."""
    p99: float | None
    """99th percentile; None before the first call."""


@dataclass(frozen=True, slots=True)
class MethodMetrics:
    """One method's counts in one role."""

    method: str
    """The route, or ``"unknown"``."""
    started: int
    """Calls started."""
    finished: Mapping[str, int]
    """Calls ended, by status code name (``{"OK": 10, "NOT_FOUND": 2}``)."""
    messages_sent: int
    """Messages this side sent on these calls (requests when calling, responses when
    answering)."""
    messages_received: int
    """Messages this side received on these calls."""
    bytes_sent: int
    """Serialized size of the messages sent."""
    bytes_received: int
    """Serialized size of the messages received."""
    latency: LatencySummary
    """Time from start to end of finished calls."""
    retries: int = 0
    """Attempts after the first (calls made with a retry policy; quicflow/retry.py)."""


@dataclass(frozen=True, slots=True)
class Throughput:
    """Rates over the recent window (per second)."""

    window: float
    """Seconds actually covered (up to `WINDOW`; 0 right after start)."""
    calls_handled: float
    """Calls answered per second."""
    calls_made: float
    """Calls made per second."""
    messages_sent: float
    """Messages sent per second (both roles)."""
    messages_received: float
    """Messages received per second (both roles)."""
    bytes_sent: float
    """Message bytes sent per second."""
    bytes_received: float
    """Message bytes received per second."""


@dataclass(frozen=True, slots=True)
class MetricsSnapshot:
    """What `Server.get_metrics` / `Client.get_metrics` return: a consistent copy."""

    enabled: bool
    """False when the config turned metrics off (then every count is 0)."""
    uptime: float
    """Seconds since recording started."""
    connected_clients: int
    """Clients connected now (a client: 1 while connected, else 0)."""
    connects: int
    """Sessions established (a client: successful connects, first or re-)."""
    disconnects: int
    """Sessions ended, for any reason (a client: connections lost or drained)."""
    reconnects: int
    """A server: sessions replaced by a newer connection under the same client id.
    A client: reconnect attempts scheduled after losing its connection."""
    heartbeat_timeouts: int
    """A server: sessions evicted for missing heartbeats. A client: pongs that never came."""
    rapid_reset_closes: int
    """A server: connections closed for resetting calls beyond ``max_reset_rate``."""
    nudges: int
    """A client: QUIC PINGs sent because the server was silent while a reply or pong was
    awaited (``heartbeat_timeout / 5``; each shows the server the client's address)."""
    connections_refused: int
    """A server: new connections refused at ``max_connections``."""
    handled: Mapping[str, MethodMetrics]
    """Calls this side answered, by method."""
    made: Mapping[str, MethodMetrics]
    """Calls this side made, by method (a server's are its pushes)."""
    handled_latency: LatencySummary
    """Every answered call's handling time."""
    made_latency: LatencySummary
    """Every made call's latency as the caller saw it."""
    messages_sent: int
    """Messages sent, both roles."""
    messages_received: int
    """Messages received, both roles."""
    bytes_sent: int
    """Message bytes sent, both roles."""
    bytes_received: int
    """Message bytes received, both roles."""
    broadcasts: int
    """`Server.broadcast` runs."""
    broadcast_deliveries: Mapping[str, int]
    """Outcomes of broadcast sends: ``delivered``, ``failed``, ``timed_out``."""
    promises_pending: int
    """Acked sends (`Server.async_send`) waiting for their ack now."""
    promises_resolved: int
    """Acked sends that got their ack."""
    promises_failed: int
    """Acked sends that failed (status from the client, or the client was gone)."""
    promises_timed_out: int
    """Acked sends that got no ack within their timeout."""
    dispatcher_queue_depth: int
    """Untyped messages waiting for a dispatcher worker now."""
    dispatcher_busy_workers: int
    """Dispatcher workers running a handler now."""
    throughput: Throughput = field(
        default_factory=lambda: Throughput(0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
    )
    """Recent rates."""


_NO_THROUGHPUT = Throughput(0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)


class Metrics:
    """The live counters of one server or client.

    The runtime increments the attributes directly; read them through
    `snapshot`. `start` begins sampling throughput on ``clock``; `stop` ends it.

    Example::

        metrics = Metrics()
        metrics.start(FakeClock())
        stats = metrics.handled.method("/pkg.Echo/Say")
        stats.started += 1
        stats.finished(StatusCode.OK, 0.002)
        print(metrics.snapshot().handled_latency.p50)
    """

    def __init__(self) -> None:
        self.handled = RoleStats()
        """Calls this side answers."""
        self.made = RoleStats()
        """Calls this side makes."""
        self.connects = 0
        self.disconnects = 0
        self.reconnects = 0
        self.heartbeat_timeouts = 0
        self.rapid_reset_closes = 0
        self.nudges = 0
        self.connections_refused = 0
        self.broadcasts = 0
        self.broadcast_deliveries = {"delivered": 0, "failed": 0, "timed_out": 0}
        self.promises_resolved = 0
        self.promises_failed = 0
        self.promises_timed_out = 0
        self._clock: Clock | None = None
        self._started_at = 0.0
        self._timer: TimerHandleLike | None = None
        self._samples: deque[tuple[float, tuple[int, ...]]] = deque(maxlen=WINDOW + 1)

    # -- throughput sampling --

    def start(self, clock: Clock) -> None:
        """Start the once-a-second throughput sampling on ``clock`` (idempotent; after
        `stop`, starts it again)."""
        if self._timer is not None:
            return
        if self._clock is None:
            self._started_at = clock.time()
        self._clock = clock
        self._sample()

    def stop(self) -> None:
        """Stop sampling (the counts stay readable)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _sample(self) -> None:
        clock = self._clock
        assert clock is not None
        now = clock.time()
        self._samples.append((now, self._rates_totals()))
        self._timer = clock.call_at(now + 1.0, self._sample)

    def _rates_totals(self) -> tuple[int, ...]:
        _, handled, hms, hmr, hbs, hbr = self.handled.totals()
        _, made, mms, mmr, mbs, mbr = self.made.totals()
        return (handled, made, hms + mms, hmr + mmr, hbs + mbs, hbr + mbr)

    def throughput(self) -> Throughput:
        """Rates between the oldest sample in the window and now."""
        clock = self._clock
        if clock is None or not self._samples:
            return _NO_THROUGHPUT
        now = clock.time()
        then, old = self._samples[0]
        span = now - then
        if span <= 0:
            return _NO_THROUGHPUT
        new = self._rates_totals()
        rates = [(b - a) / span for a, b in zip(old, new, strict=True)]
        return Throughput(span, *rates)

    # -- reading --

    def snapshot(
        self,
        *,
        connected_clients: int = 0,
        promises_pending: int = 0,
        dispatcher_queue_depth: int = 0,
        dispatcher_busy_workers: int = 0,
    ) -> MetricsSnapshot:
        """A frozen copy of every count; the gauges come from the owner (who knows them)."""
        _, _, hms, hmr, hbs, hbr = self.handled.totals()
        _, _, mms, mmr, mbs, mbr = self.made.totals()
        uptime = 0.0 if self._clock is None else self._clock.time() - self._started_at
        return MetricsSnapshot(
            enabled=True,
            uptime=uptime,
            connected_clients=connected_clients,
            connects=self.connects,
            disconnects=self.disconnects,
            reconnects=self.reconnects,
            heartbeat_timeouts=self.heartbeat_timeouts,
            rapid_reset_closes=self.rapid_reset_closes,
            nudges=self.nudges,
            connections_refused=self.connections_refused,
            handled={s.method: s.snapshot() for s in self.handled.all()},
            made={s.method: s.snapshot() for s in self.made.all()},
            handled_latency=self.handled.latency().summary(),
            made_latency=self.made.latency().summary(),
            messages_sent=hms + mms,
            messages_received=hmr + mmr,
            bytes_sent=hbs + mbs,
            bytes_received=hbr + mbr,
            broadcasts=self.broadcasts,
            broadcast_deliveries=dict(self.broadcast_deliveries),
            promises_pending=promises_pending,
            promises_resolved=self.promises_resolved,
            promises_failed=self.promises_failed,
            promises_timed_out=self.promises_timed_out,
            dispatcher_queue_depth=dispatcher_queue_depth,
            dispatcher_busy_workers=dispatcher_busy_workers,
            throughput=self.throughput(),
        )


def disabled_snapshot(
    *,
    connected_clients: int = 0,
    promises_pending: int = 0,
    dispatcher_queue_depth: int = 0,
    dispatcher_busy_workers: int = 0,
) -> MetricsSnapshot:
    """The snapshot of a side whose metrics are off: gauges only, every count 0."""
    empty = LatencySummary(0, 0.0, None, None, None)
    return MetricsSnapshot(
        enabled=False,
        uptime=0.0,
        connected_clients=connected_clients,
        connects=0,
        disconnects=0,
        reconnects=0,
        heartbeat_timeouts=0,
        rapid_reset_closes=0,
        nudges=0,
        connections_refused=0,
        handled={},
        made={},
        handled_latency=empty,
        made_latency=empty,
        messages_sent=0,
        messages_received=0,
        bytes_sent=0,
        bytes_received=0,
        broadcasts=0,
        broadcast_deliveries={"delivered": 0, "failed": 0, "timed_out": 0},
        promises_pending=promises_pending,
        promises_resolved=0,
        promises_failed=0,
        promises_timed_out=0,
        dispatcher_queue_depth=dispatcher_queue_depth,
        dispatcher_busy_workers=dispatcher_busy_workers,
    )
