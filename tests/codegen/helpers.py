"""Helpers for the codegen tests: paths, protoc runs and mypy runs.

Everything here runs real tools (grpcio-tools' protoc, the installed
``protoc-gen-quicflow`` script, betterproto's plugin, mypy, ruff) as
subprocesses, the way ``make gen`` does.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CASES = Path(__file__).resolve().parent / "cases"
BIN = Path(sys.executable).parent
_WORKER = "-" + os.environ["PYTEST_XDIST_WORKER"] if "PYTEST_XDIST_WORKER" in os.environ else ""


def run(cmd: Sequence[str], cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    """Run ``cmd`` and return the result, whatever its exit status."""
    env = dict(os.environ)
    env.pop("QUICFLOW_DUMP_REQUEST", None)
    return subprocess.run(list(cmd), cwd=cwd, env=env, capture_output=True, text=True, check=False)


def plugin(name: str) -> str:
    """``--plugin=`` for one of the console scripts installed next to this Python."""
    return f"--plugin={name}={BIN / name}"


def protoc(include: Path, args: Sequence[str], protos: Sequence[str]) -> None:
    """Run grpcio-tools' protoc with ``-I include``; fail the test on error."""
    done = run(
        [sys.executable, "-m", "grpc_tools.protoc", f"-I{include}", *args, *protos],
        cwd=include,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def mypy_strict(
    root: Path, files: Sequence[Path], extra_path: Sequence[Path] = ()
) -> subprocess.CompletedProcess[str]:
    """Run ``mypy --strict`` on ``files`` with ``root``, ``extra_path`` and the repo on the path.

    Imported modules are followed silently: only errors in ``files`` count,
    not in protoc's .pyi stubs, betterproto's output or the runtime.
    """
    config = root / "mypy.ini"
    config.write_text(
        "[mypy]\n"
        "strict = True\n"
        "python_version = 3.11\n"
        "explicit_package_bases = True\n"
        "follow_imports = silent\n"
        "follow_imports_for_stubs = True\n"
        f"mypy_path = {':'.join(map(str, [root, *extra_path, ROOT]))}\n"
        # One cache per pytest-xdist worker: two mypy processes never share one.
        f"cache_dir = {ROOT / '.mypy_cache' / ('codegen-tests' + _WORKER)}\n"
    )
    return run(
        [sys.executable, "-m", "mypy", "--config-file", str(config), *map(str, files)],
        cwd=root,
    )
