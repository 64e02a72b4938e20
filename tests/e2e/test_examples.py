"""The examples run as a user runs them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_demo_runs_every_call_kind_and_stops_cleanly() -> None:
    """Check that the demo shows each call kind against a server process, a broadcast with
    per-client results and acked sends, and exits 0."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "generated")])}
    result = subprocess.run(
        [sys.executable, "-m", "examples.demo"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "unary          say('hello') -> 'hello', status OK" in out
    assert "['tick#0', 'tick#1', 'tick#2']" in out
    assert "'one two three'" in out
    assert "['QUIC', 'FLOW']" in out
    assert "DEADLINE_EXCEEDED" in out
    assert "server exited with status 0" in out
    assert "delivered 3, failed 1, timed out 1" in out
    assert "FAILED INVALID_ARGUMENT: job 2 is malformed" in out
    assert "all settled; 0 acks pending" in out
