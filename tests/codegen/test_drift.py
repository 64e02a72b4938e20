"""The committed protoc outputs must be what ``make gen`` writes today."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

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


def _gen(out: Path) -> Path:
    done = run([sys.executable, str(ROOT / "scripts" / "gen.py"), "--out", str(out)])
    assert done.returncode == 0, done.stdout + done.stderr
    return out


# Two gen.py runs serve the three tests (each run is ~1 s of protoc): a plain one, and one
# into a directory holding a stale file, which must come out identical to the first.
@pytest.fixture(scope="module")
def first_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """scripts/gen.py --out into an empty directory."""
    return _gen(tmp_path_factory.mktemp("gen-a"))


@pytest.fixture(scope="module")
def stale_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """scripts/gen.py --out into a directory with a file left from an earlier run."""
    out = tmp_path_factory.mktemp("gen-b")
    stale = out / "generated" / "gone" / "gone_quicflow.py"
    stale.parent.mkdir(parents=True)
    stale.write_text("# left over\n")
    return _gen(out), stale


def test_generated_files_match_gen_script(first_run: Path) -> None:
    """Check that scripts/gen.py --out reproduces the runtime's classes and generated/ exactly."""
    for name in WIRE:
        assert (first_run / name).read_bytes() == (ROOT / name).read_bytes(), f"{name} is stale"
    fresh = _tree(first_run / "generated")
    assert fresh, "gen.py wrote no generated/ tree"
    assert _tree(ROOT / "generated") == fresh, "generated/ is stale: run `make gen`"


def test_gen_script_is_deterministic(first_run: Path, stale_run: tuple[Path, Path]) -> None:
    """Check that two runs of scripts/gen.py write identical trees."""
    assert _tree(first_run) == _tree(stale_run[0])


def test_gen_script_removes_stale_outputs(stale_run: tuple[Path, Path]) -> None:
    """Check that a file left in generated/ from an earlier run is gone after gen.py."""
    _, stale = stale_run
    assert not stale.exists()
    assert not stale.parent.exists() or not any(stale.parent.iterdir())
