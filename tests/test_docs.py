"""Docs that must not drift from the code."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_state_diagrams_match_the_transition_tables() -> None:
    """Check that every Mermaid state diagram in docs/ equals the rendering of its table."""
    docs = [
        str(p) for p in sorted((ROOT / "docs").glob("*.md")) if "state-diagram:" in p.read_text()
    ]
    assert docs, "no diagrams found"
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "state_diagrams.py"), "--check", *docs],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
