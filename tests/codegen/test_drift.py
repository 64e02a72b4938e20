"""The committed protoc outputs must be what ``make gen`` writes today."""

from __future__ import annotations

import sys
from pathlib import Path

from .helpers import ROOT, run

WIRE = (
    "quicflow/wire/v1/frames_pb2.py",
    "quicflow/wire/v1/frames_pb2.pyi",
    "quicflow/health/health_pb2.py",
    "quicflow/health/health_pb2.pyi",
    "quicflow/admin/admin_pb2.py",
    "quicflow/admin/admin_pb2.pyi",
)


def _tree(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and "__pycache__" not in p.parts
    }


def test_generated_files_match_gen_script(tmp_path: Path) -> None:
    """Check that scripts/gen.py --out reproduces the runtime's classes and generated/ exactly."""
    done = run([sys.executable, str(ROOT / "scripts" / "gen.py"), "--out", str(tmp_path)])
    assert done.returncode == 0, done.stdout + done.stderr
    for name in WIRE:
        assert (tmp_path / name).read_bytes() == (ROOT / name).read_bytes(), f"{name} is stale"
    fresh = _tree(tmp_path / "generated")
    assert fresh, "gen.py wrote no generated/ tree"
    assert _tree(ROOT / "generated") == fresh, "generated/ is stale: run `make gen`"


def test_gen_script_is_deterministic(tmp_path: Path) -> None:
    """Check that two runs of scripts/gen.py write identical trees."""
    for name in ("a", "b"):
        done = run(
            [sys.executable, str(ROOT / "scripts" / "gen.py"), "--out", str(tmp_path / name)]
        )
        assert done.returncode == 0, done.stdout + done.stderr
    assert _tree(tmp_path / "a") == _tree(tmp_path / "b")


def test_gen_script_removes_stale_outputs(tmp_path: Path) -> None:
    """Check that a file left in generated/ from an earlier run is gone after gen.py."""
    stale = tmp_path / "generated" / "gone" / "gone_quicflow.py"
    stale.parent.mkdir(parents=True)
    stale.write_text("# left over\n")
    done = run([sys.executable, str(ROOT / "scripts" / "gen.py"), "--out", str(tmp_path)])
    assert done.returncode == 0, done.stdout + done.stderr
    assert not stale.exists()
