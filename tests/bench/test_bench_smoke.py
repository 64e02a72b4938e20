"""The benchmark runs end to end in smoke mode (every measurement, tiny counts). Its numbers
are never asserted."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent.parent

PEERS_MISSING = [m for m in ("grpc", "grpclib") if importlib.util.find_spec(m) is None]


@pytest.mark.skipif(bool(PEERS_MISSING), reason=f"not installed: {', '.join(PEERS_MISSING)}")
@pytest.mark.timeout(150)
def test_quick_bench_runs_all_three_systems() -> None:
    """Check that `python -m bench.run --smoke --no-write` exits 0 and its table shows
    QuicFlow, grpc.aio and grpclib."""
    env = dict(os.environ)
    path = [str(ROOT), str(ROOT / "generated"), env.get("PYTHONPATH", "")]
    env["PYTHONPATH"] = os.pathsep.join(p for p in path if p)
    result = subprocess.run(
        [sys.executable, "-m", "bench.run", "--smoke", "--no-write", "--no-variants"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    header = next(line for line in result.stdout.splitlines() if line.startswith("| measurement"))
    for system in ("QuicFlow", "grpc.aio", "grpclib"):
        assert system in header, result.stdout
