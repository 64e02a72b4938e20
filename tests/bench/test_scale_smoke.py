"""The scale run's plan runs end to end at tiny size (every phase, a few clients, scaled
heartbeats). Its numbers are never asserted."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent.parent


@pytest.mark.timeout(150)
def test_scale_smoke_runs_every_phase(tmp_path: Path) -> None:
    """Check that `python -m bench.scale --smoke` exits 0 and its table has a figure for
    every phase: clients connected, back after the restart, evicted, torn down."""
    env = dict(os.environ)
    path = [str(ROOT), str(ROOT / "generated"), env.get("PYTHONPATH", "")]
    env["PYTHONPATH"] = os.pathsep.join(p for p in path if p)
    result = subprocess.run(
        [sys.executable, "-m", "bench.scale", "--smoke", "--no-write", "--logs", str(tmp_path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    rows = {
        line.split("|")[1].strip(): line.split("|")[2].strip()
        for line in result.stdout.splitlines()
        if line.startswith("| ") and not line.startswith("| measure")
    }
    for label in (
        "clients connected",
        "restart: all back (s)",
        "evict: all evicted after (s)",
        "close: torn down after (s)",
    ):
        assert rows.get(label, "-") != "-", result.stdout + result.stderr[-3000:]
