"""Golden cases: regenerate each case in cases/ with real protoc and diff.

A case is ``cases/<name>/proto/**.proto`` (the inputs), an optional
``parameter.txt`` (the plugin parameter) and ``expected/**.golden`` (every
file the plugin should write, with ``.golden`` appended so that ruff and mypy
do not treat the goldens as source). Set ``QUICFLOW_UPDATE_GOLDEN=1`` to
rewrite the goldens from the current plugin.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

from .helpers import BIN, CASES, ROOT, mypy_strict, plugin, protoc, run

CASE_NAMES = sorted(p.name for p in CASES.iterdir() if (p / "proto").is_dir())
UPDATE = os.environ.get("QUICFLOW_UPDATE_GOLDEN") == "1"


def _protos(case: Path) -> list[str]:
    return sorted(
        p.relative_to(case / "proto").as_posix() for p in (case / "proto").rglob("*.proto")
    )


def _parameter(case: Path) -> str:
    path = case / "parameter.txt"
    return path.read_text().strip() if path.exists() else ""


def _generate(case: Path, out: Path) -> dict[str, str]:
    """Run protoc with the plugin on the case; return {output path: text}."""
    out.mkdir(parents=True, exist_ok=True)
    parameter = _parameter(case)
    opt = [f"--quicflow_opt={parameter}"] if parameter else []
    protoc(
        case / "proto",
        [plugin("protoc-gen-quicflow"), f"--quicflow_out={out}", *opt],
        _protos(case),
    )
    return {p.relative_to(out).as_posix(): p.read_text() for p in sorted(out.rglob("*.py"))}


def _expected(case: Path) -> dict[str, str]:
    expected = case / "expected"
    return {
        p.relative_to(expected).as_posix().removesuffix(".golden"): p.read_text()
        for p in sorted(expected.rglob("*.golden"))
    }


@pytest.mark.parametrize("name", CASE_NAMES)
def test_case_matches_golden(name: str, tmp_path: Path) -> None:
    """Check that regenerating a case with protoc gives exactly its golden files."""
    case = CASES / name
    actual = _generate(case, tmp_path / "out")
    if UPDATE:
        shutil.rmtree(case / "expected", ignore_errors=True)
        for rel, text in actual.items():
            target = case / "expected" / f"{rel}.golden"
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text)
    assert actual == _expected(case)


def test_no_service_case_writes_nothing() -> None:
    """Check that the case whose only file has no service expects no output at all."""
    assert _expected(CASES / "no_service") == {}


def _check_root(tmp: Path) -> tuple[Path, list[Path]]:
    """Generate every case with its message classes, each case in its own source root.

    The betterproto cases are put one package down (``bpcase/``): betterproto's
    output is a package tree that imports across packages relatively.
    """
    roots = tmp / "roots"
    files: list[Path] = []
    for name in CASE_NAMES:
        case = CASES / name
        parameter = _parameter(case)
        root = roots / name
        if "betterproto" in parameter:
            pkg = root / "bpcase"
            pkg.mkdir(parents=True)
            (pkg / "__init__.py").write_text("")
            protoc(
                case / "proto",
                [
                    plugin("protoc-gen-python_betterproto"),
                    plugin("protoc-gen-quicflow"),
                    f"--python_betterproto_out={pkg}",
                    f"--quicflow_out={parameter}:{pkg}",
                ],
                _protos(case),
            )
        else:
            root.mkdir(parents=True)
            protoc(
                case / "proto",
                [
                    plugin("protoc-gen-quicflow"),
                    f"--python_out={root}",
                    f"--pyi_out={root}",
                    f"--quicflow_out={root}",
                ],
                _protos(case),
            )
        files.extend(sorted(root.rglob("*_quicflow.py")))
    return roots, files


@pytest.fixture(scope="module")
def check_root(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    """`_check_root` once for the ruff and the mypy test (they only read it)."""
    return _check_root(tmp_path_factory.mktemp("check"))


def test_cases_pass_ruff(check_root: tuple[Path, list[Path]]) -> None:
    """Check that every case's output passes ruff check and ruff format with the repo's config."""
    _, files = check_root
    assert files
    ruff = str(BIN / "ruff")
    config = ["--config", str(ROOT / "pyproject.toml")]
    checked = run([ruff, "check", *config, "--no-cache", *map(str, files)])
    assert checked.returncode == 0, checked.stdout + checked.stderr
    formatted = run([ruff, "format", *config, "--check", "--no-cache", *map(str, files)])
    assert formatted.returncode == 0, formatted.stdout + formatted.stderr


def test_cases_pass_mypy_strict(check_root: tuple[Path, list[Path]]) -> None:
    """Check that every case's output passes mypy --strict against real message stubs."""
    roots, files = check_root
    failures = []
    for name in CASE_NAMES:
        root = roots / name
        mine = [f for f in files if f.is_relative_to(root)]
        if not mine:
            continue
        done = mypy_strict(root, mine)
        if done.returncode != 0:
            failures.append(f"{name}:\n{done.stdout}{done.stderr}")
    assert not failures, "\n".join(failures)


def test_plugin_runs_as_module(tmp_path: Path) -> None:
    """Check that ``python -m quicflow_codegen`` works as a plugin too (gen.py's fallback)."""
    wrapper = tmp_path / "protoc-gen-quicflow"
    wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m quicflow_codegen "$@"\n')
    wrapper.chmod(0o755)
    out = tmp_path / "out"
    out.mkdir()
    case = CASES / "all_kinds"
    protoc(
        case / "proto",
        [f"--plugin=protoc-gen-quicflow={wrapper}", f"--quicflow_out={out}"],
        _protos(case),
    )
    assert (out / "demo" / "demo_quicflow.py").read_text() == _expected(case)[
        "demo/demo_quicflow.py"
    ]
