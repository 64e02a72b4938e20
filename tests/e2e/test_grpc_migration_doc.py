"""docs/grpc-migration.md's QuicFlow example runs as written and prints what the page says."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "grpc-migration.md"


def _block(text: str, info: str) -> str:
    """The body of the fenced block whose info string is ``info``."""
    match = re.search(rf"^```{re.escape(info)}\n(.*?)^```$", text, re.M | re.S)
    assert match is not None, f"no ```{info} block in {DOC.name}"
    return match.group(1)


def test_the_quicflow_side_of_the_example_runs_and_prints_what_the_page_shows(
    tmp_path: Path,
) -> None:
    """Check that the page's QuicFlow program runs against the repository's echo service
    and prints exactly the output block after it."""
    text = DOC.read_text()
    program = tmp_path / "example.py"
    program.write_text(_block(text, "python quicflow-example"))
    expected = _block(text.split("```python quicflow-example", 1)[1], "text output")
    result = subprocess.run(
        [sys.executable, str(program)],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "generated")])},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == expected


def test_the_quicflow_side_of_the_example_type_checks(tmp_path: Path) -> None:
    """Check that the page's QuicFlow program passes mypy --strict, as the project's own
    code does (it is what a user copies)."""
    program = tmp_path / "example.py"
    program.write_text(_block(DOC.read_text(), "python quicflow-example"))
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", str(program)],
        cwd=ROOT,
        env={**os.environ, "MYPYPATH": os.pathsep.join([str(ROOT), str(ROOT / "generated")])},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_page_says_deadlines_and_cancellation_propagate() -> None:
    """Check that the page's deadline-propagation row says what QuicFlow does (a call made
    in a handler inherits its deadline and cancellation, docs/overview.md) and how to opt
    out, not that it is done by hand as in grpc.aio."""
    rows = [line for line in DOC.read_text().splitlines() if line.startswith("| deadline propag")]
    assert len(rows) == 1, rows
    quicflow_side = rows[0].split("|")[2]
    assert "by hand" not in quicflow_side
    assert "inherit" in quicflow_side and "quicflow.detached()" in quicflow_side
