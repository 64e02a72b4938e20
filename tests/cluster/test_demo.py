"""`make cluster-demo` runs as a user runs it, and shows what it promises."""

from __future__ import annotations

import subprocess
import sys

import pytest

from .procs import ENV, ROOT

pytestmark = pytest.mark.faults


def test_cluster_demo_runs_and_shows_clients_moving() -> None:
    """Check that the demo pushes across nodes, lists the cluster, moves a killed node's
    clients, and stops everything (exit code 0)."""
    result = subprocess.run(
        [sys.executable, "-m", "examples.cluster.main"],
        cwd=ROOT,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=120,
    )
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert "node a got: carol seq=1" in out
    assert "node a got: carol acked 3 events" in out  # a routed stream
    assert "resolved: alice seq=2" in out
    assert "'a': 'answered=True clients=1'" in out
    assert "7 client(s)" in out  # quicflow clients on node b lists the whole cluster
    assert any(line.split()[:2] == ["carol", "c"] for line in out.splitlines())  # NODE column
    assert "node a got: carol seq=4" in out  # after node c died, carol moved
    assert out.rstrip().endswith("cluster demo finished")
