"""The curated public API."""

from __future__ import annotations

import quicflow


def test_all_lists_exactly_the_public_names() -> None:
    """Check that quicflow.__all__ equals the public names the package defines, with no dupes."""
    public = {
        name
        for name in vars(quicflow)
        if not name.startswith("_")
        and not isinstance(getattr(quicflow, name), type(quicflow))  # submodules
    }
    assert len(quicflow.__all__) == len(set(quicflow.__all__))
    assert set(quicflow.__all__) == public


def test_every_public_name_has_a_docstring() -> None:
    """Check that every public class and function carries a docstring."""
    missing = [
        name
        for name in quicflow.__all__
        if callable(getattr(quicflow, name)) and not (getattr(quicflow, name).__doc__ or "").strip()
    ]
    assert missing == []


def test_metrics_snapshot_types_are_public() -> None:
    """Check that get_metrics()'s result types are importable from the package root."""
    for name in ("MetricsSnapshot", "MethodMetrics", "LatencySummary", "Throughput"):
        assert name in quicflow.__all__
    assert quicflow.Server.get_metrics.__annotations__["return"] == "MetricsSnapshot"
