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


@pytest.mark.parametrize(
    "config",
    [
        pytest.param(["--config", str(ROOT / "pyproject.toml")], id="repo-settings"),
        # ruff's own defaults: line length 88, and no first-party package known.
        pytest.param(["--isolated"], id="ruff-defaults"),
        # The defaults' line length and section guesses, with the repo's rule selection.
        pytest.param(["--isolated", "--select=E,F,W,I,B,UP,RUF,SIM"], id="defaults-more-rules"),
    ],
)
def test_cases_pass_ruff(check_root: tuple[Path, list[Path]], config: list[str]) -> None:
    """Check that every case's output passes ruff check and ruff format, repo or default config."""
    roots, files = check_root
    assert files
    ruff = str(BIN / "ruff")
    # Run from the output root, as a user would: ruff decides first- and third-party from it.
    checked = run([ruff, "check", *config, "--no-cache", *map(str, files)], cwd=roots)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    fmt = [arg for arg in config if not arg.startswith("--select")]
    formatted = run([ruff, "format", *fmt, "--check", "--no-cache", *map(str, files)], cwd=roots)
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


_IMPORT_CHECK = """
import importlib, sys, warnings
sys.path.insert(0, sys.argv[1])
for name in sys.argv[2:]:
    module = importlib.import_module(name)
    for export in module.__all__:
        cls = getattr(module, export)
        if export.endswith("Base"):
            for route, handler in cls().__quicflow_handlers__().items():
                method = handler.method
                # Each serializer pair is the message class's own: an empty message round-trips.
                empty = method.deserialize_request(b"")
                assert method.deserialize_request(method.serialize_request(empty)) == empty
                print(route, type(empty).__name__)
"""


@pytest.mark.parametrize(
    ("case", "modules"),
    [
        (
            "odd_names",
            ["users.user.service_quicflow", "from.v1.kw_quicflow", "async.in.svc_quicflow"],
        ),
        ("editions", ["ed.e2023_quicflow", "ed.e2024_quicflow"]),
        ("betterproto_keyword", ["bpcase.store.api_quicflow"]),
    ],
)
def test_odd_cases_import_and_serialize(
    check_root: tuple[Path, list[Path]], case: str, modules: list[str]
) -> None:
    """Check that modules for dotted, keyword and editions protos import and reach every class."""
    roots, _ = check_root
    done = run([sys.executable, "-W", "error", "-c", _IMPORT_CHECK, str(roots / case), *modules])
    assert done.returncode == 0, done.stdout + done.stderr
    routes = dict(line.split() for line in done.stdout.splitlines())
    expected = {
        "odd_names": {
            "/users.Users/Get": "User",
            "/users.Users/List": "User",
            "/users.Users/Watch": "User",
            "/kw.v1.Keywords/Make": "None",
            "/kw.v1.Keywords/Nested": "from",
            "/kw.v1.Keywords/Unwrap": "Plain",
            "/kw.is.In/Is": "Ask",
        },
        "editions": {
            "/ed.v2023.Ed2023/Call": "Req",
            "/ed.v2023.Ed2023/Watch": "Req",
            "/ed.v2024.Ed2024/Call": "Req",
            "/ed.v2024.Ed2024/Collect": "Req",
        },
        "betterproto_keyword": {"/p.import.Store/Get": "Item"},
    }[case]
    assert routes == expected


def test_deprecated_rpc_and_service_warn_on_use(check_root: tuple[Path, list[Path]]) -> None:
    """Check that a deprecated service's stub and a deprecated rpc's method warn, as marked."""
    roots, _ = check_root
    code = """
import sys, warnings
sys.path.insert(0, sys.argv[1])
from users.user.service_quicflow import UsersBase, UsersStub

class Channel:
    def unary_unary(self, method, request, **kwargs):
        return method.route
    unary_stream = unary_unary

with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    stub = UsersStub(Channel())
    stub.get(None)
    stub.list_(None)
for w in caught:
    print(w.category.__name__, w.filename == "<string>", w.message)
print(UsersStub.get.__doc__.splitlines()[0])
print(UsersBase.__doc__.splitlines()[0])
print(UsersStub.__doc__.splitlines()[2].strip())
"""
    done = run([sys.executable, "-c", code, str(roots / "odd_names")])
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.splitlines() == [
        # stacklevel=2: each warning points at the caller's line, as warnings for APIs do.
        "DeprecationWarning True service users.Users is deprecated",
        "DeprecationWarning True rpc /users.Users/Get is deprecated",
        "Deprecated: the proto marks this rpc deprecated.",
        "Deprecated: the proto marks this service deprecated.",
        # The /** ... */ comment, without its leading star.
        "Users is documented with a javadoc-style block comment.",
    ]
