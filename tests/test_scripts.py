"""The helper scripts `make test` runs say what they do and fail clearly."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ENSURE_CHROMIUM = ROOT / "scripts" / "ensure-chromium.sh"


def _ensure_chromium(tmp_path: Path, uid: int, **env: str) -> subprocess.CompletedProcess[str]:
    """Run ensure-chromium.sh with chromium missing, ``id -u`` answering ``uid`` and nothing
    else on PATH (so no apt-get)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake_id = bin_dir / "id"
    fake_id.write_text(f"#!/bin/sh\necho {uid}\n")
    fake_id.chmod(0o755)
    return subprocess.run(
        ["/bin/bash", str(ENSURE_CHROMIUM)],
        capture_output=True,
        text=True,
        timeout=30,
        env={"PATH": str(bin_dir), "QUICFLOW_CHROMIUM": str(tmp_path / "no-chromium"), **env},
    )


def test_ensure_chromium_as_root_without_apt_fails_saying_what_to_do(tmp_path: Path) -> None:
    """Check that as root on a machine without apt-get the script fails with a message that
    names the way out (install it, or QUICFLOW_SKIP_CHROMIUM=1)."""
    result = _ensure_chromium(tmp_path, 0)
    assert result.returncode == 1
    assert "there is no apt-get here" in result.stderr
    assert "make test QUICFLOW_SKIP_CHROMIUM=1" in result.stderr
    assert "command not found" not in result.stderr


@pytest.mark.parametrize(
    ("uid", "env", "expected"),
    [
        (1000, {}, "we are not root: not installing it"),
        (0, {"QUICFLOW_SKIP_CHROMIUM": "1"}, "QUICFLOW_SKIP_CHROMIUM is set: not installing"),
    ],
)
def test_ensure_chromium_skips_with_a_word_when_it_cannot_or_may_not_install(
    tmp_path: Path, uid: int, env: dict[str, str], expected: str
) -> None:
    """Check that a non-root user, or QUICFLOW_SKIP_CHROMIUM, installs nothing, exits 0 and
    says the status page test will be skipped."""
    result = _ensure_chromium(tmp_path, uid, **env)
    assert result.returncode == 0
    assert expected in result.stderr
    assert "status page test will be skipped" in result.stderr
