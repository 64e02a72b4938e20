"""The metrics core: histograms, bounded labels, throughput on a virtual clock, config."""

from __future__ import annotations

from typing import Any

import pytest

from quicflow import ConfigError, ServerConfig
from quicflow.config import ClientConfig
from quicflow.metrics import (
    LATENCY_BUCKETS,
    MAX_METHODS,
    UNKNOWN_METHOD,
    WINDOW,
    Histogram,
    Metrics,
)
from quicflow.status import StatusCode
from quicflow.testing import FakeClock


def test_histogram_buckets_sum_and_quantiles() -> None:
    """Check that observations land in the right bucket and quantiles interpolate inside it."""
    hist = Histogram()
    for _ in range(100):
        hist.observe(0.003)  # bucket (0.0025, 0.005]
    assert hist.count == 100
    assert hist.sum == pytest.approx(0.3)
    index = LATENCY_BUCKETS.index(0.005)
    assert hist.counts[index] == 100 and sum(hist.counts) == 100
    assert hist.quantile(0.5) == pytest.approx(0.0025 + 0.0025 * 0.5)
    assert hist.quantile(1.0) == pytest.approx(0.005)
    hist.observe(1000.0)  # beyond every bound: reported as the highest bound
    assert hist.counts[-1] == 1
    assert hist.quantile(1.0) == LATENCY_BUCKETS[-1]
    assert Histogram().quantile(0.5) is None


def test_quantiles_of_two_populations() -> None:
    """Check that p50 falls in the lower population and p99 in the upper one."""
    hist = Histogram()
    for _ in range(90):
        hist.observe(0.0008)  # (0.0005, 0.001]
    for _ in range(10):
        hist.observe(0.2)  # (0.1, 0.25]
    summary = hist.summary()
    assert summary.p50 is not None and 0.0005 < summary.p50 <= 0.001
    assert summary.p90 == pytest.approx(0.001)
    assert summary.p99 is not None and 0.1 < summary.p99 <= 0.25


def test_method_labels_are_bounded() -> None:
    """Check that routes past MAX_METHODS share the 'unknown' label."""
    metrics = Metrics()
    for i in range(MAX_METHODS + 5):
        metrics.made.method(f"/p.S/M{i}").started += 1
    snap = metrics.snapshot()
    assert len(snap.made) == MAX_METHODS + 1
    assert snap.made[UNKNOWN_METHOD].started == 5
    assert metrics.made.method("/p.S/M0") is metrics.made.methods["/p.S/M0"]


def test_snapshot_counts_codes_messages_and_latency() -> None:
    """Check that a snapshot carries per-method codes, messages, bytes and percentiles."""
    metrics = Metrics()
    say = metrics.handled.method("/echo.Echo/Say")
    for _ in range(3):
        say.started += 1
        say.messages_received += 1
        say.bytes_received += 10
        say.finished(StatusCode.OK, 0.002)
    say.started += 1
    say.finished(StatusCode.NOT_FOUND, 0.02)
    snap = metrics.snapshot(connected_clients=2, promises_pending=1)
    method = snap.handled["/echo.Echo/Say"]
    assert method.started == 4
    assert dict(method.finished) == {"OK": 3, "NOT_FOUND": 1}
    assert (method.messages_received, method.bytes_received) == (3, 30)
    assert method.latency.count == 4
    assert snap.handled_latency.count == 4
    assert snap.messages_received == 3 and snap.bytes_received == 30
    assert (snap.connected_clients, snap.promises_pending) == (2, 1)
    assert snap.enabled


def test_throughput_over_the_window_on_a_virtual_clock() -> None:
    """Check that rates are exact over the sampled window and forget older traffic."""
    clock = FakeClock(100.0)
    metrics = Metrics()
    metrics.start(clock)
    say = metrics.handled.method("/echo.Echo/Say")
    assert metrics.throughput().window == 0.0
    for _second in range(5):
        for _ in range(20):
            say.started += 1
            say.messages_sent += 1
            say.bytes_sent += 50
            say.finished(StatusCode.OK, 0.001)
        clock.advance(1.0)
    rates = metrics.throughput()
    assert rates.window == 5.0
    assert rates.calls_handled == 20.0
    assert rates.messages_sent == 20.0
    assert rates.bytes_sent == 1000.0
    assert rates.calls_made == 0.0
    # Quiet for longer than the window: the rate drops to zero, the totals stay.
    clock.advance(WINDOW + 1.0)
    rates = metrics.throughput()
    assert rates.window == WINDOW
    assert rates.calls_handled == 0.0
    assert metrics.snapshot().handled["/echo.Echo/Say"].started == 100
    assert metrics.snapshot().uptime == 5.0 + WINDOW + 1.0
    metrics.stop()
    assert clock.pending == 0
    metrics.start(clock)  # again after stop: sampling resumes, uptime keeps counting
    metrics.start(clock)
    assert clock.pending == 1
    assert metrics.snapshot().uptime == 5.0 + WINDOW + 1.0
    metrics.stop()


def test_metrics_config_fields_validate_and_load(tmp_path: object) -> None:
    """Check that metrics, metrics_port and metrics_host validate, and load from env/TOML."""
    base: dict[str, Any] = {"cert_file": "cert.pem"}
    with pytest.raises(ConfigError, match="metrics"):
        ServerConfig(metrics="yes", **base)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="metrics_port"):
        ServerConfig(metrics_port=70000, **base)
    with pytest.raises(ConfigError, match=r"metrics_port.*metrics=True"):
        ServerConfig(metrics=False, metrics_port=0, **base)
    with pytest.raises(ConfigError, match="metrics_host"):
        ServerConfig(metrics_host="", **base)
    with pytest.raises(ConfigError, match="metrics"):
        ClientConfig(metrics=1)  # type: ignore[arg-type]
    loaded = ServerConfig.load(
        env={"QUICFLOW_SERVER_METRICS_PORT": "9464", "QUICFLOW_SERVER_CERT_FILE": "c.pem"}
    )
    assert loaded.metrics_port == 9464 and loaded.metrics
    assert (
        ServerConfig.load(env={"QUICFLOW_SERVER_METRICS_PORT": "none"}, **base).metrics_port is None
    )
    assert not ClientConfig.load(env={"QUICFLOW_CLIENT_METRICS": "false"}).metrics


def test_hooks_know_the_messaging_route() -> None:
    """Check that the message hooks' copy of the messaging route matches the real one."""
    from quicflow import hooks, messaging

    assert hooks._MESSAGING_ROUTE == messaging.ROUTE
