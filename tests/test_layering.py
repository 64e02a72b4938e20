"""The rings only call inward: the sans-IO core never imports asyncio or aioquic.

These tests read source with `ast`, so they see every import: top level,
inside functions, under ``if TYPE_CHECKING:``, ``import x.y`` and
``from x import y``, with relative imports resolved to absolute names.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE_ROOT = Path(__file__).resolve().parent.parent / "quicflow"
CORE_PACKAGES = ("wire", "protocol")
FORBIDDEN_IN_CORE = ("asyncio", "aioquic")
# Leaf modules the core may use besides itself: plain data and errors, no I/O.
CORE_MAY_IMPORT = ("quicflow.errors", "quicflow.metadata", "quicflow.status")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE_ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(source: str, module: str, *, is_package: bool = False) -> set[str]:
    """Every absolute module name ``source`` (the text of ``module``) imports, anywhere."""
    package = module if is_package else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package.split(".")
                if node.level > 1:
                    base_parts = base_parts[: -(node.level - 1)]
                base = ".".join(base_parts)
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            found.add(target)
            # ``from pkg import sub`` may import a submodule: count the candidates too.
            found.update(f"{target}.{alias.name}" for alias in node.names if alias.name != "*")
    return found


def _top(name: str) -> str:
    return name.partition(".")[0]


def _sources(*subpackages: str) -> list[Path]:
    roots = [PACKAGE_ROOT / sub for sub in subpackages] if subpackages else [PACKAGE_ROOT]
    return sorted(p for root in roots for p in root.rglob("*.py"))


def _imports_of(path: Path) -> set[str]:
    return imported_modules(
        path.read_text(encoding="utf-8"), _module_name(path), is_package=path.name == "__init__.py"
    )


CORE_FILES = _sources(*CORE_PACKAGES)


def test_core_files_are_found() -> None:
    """Check that the walk sees the core modules, so the tests below cannot pass vacuously."""
    names = {_module_name(p) for p in CORE_FILES}
    assert {"quicflow.wire.codec", "quicflow.protocol.call", "quicflow.protocol.events"} <= names


@pytest.mark.parametrize("path", CORE_FILES, ids=lambda p: str(p.relative_to(PACKAGE_ROOT)))
def test_core_module_imports_neither_asyncio_nor_aioquic(path: Path) -> None:
    """Check that a module in quicflow/wire or quicflow/protocol imports no asyncio or aioquic."""
    bad = sorted(m for m in _imports_of(path) if _top(m) in FORBIDDEN_IN_CORE)
    assert not bad, f"{path.relative_to(PACKAGE_ROOT.parent)} imports {bad}"


@pytest.mark.parametrize("path", CORE_FILES, ids=lambda p: str(p.relative_to(PACKAGE_ROOT)))
def test_core_module_imports_only_inward(path: Path) -> None:
    """Check that the core reaches into quicflow only for itself and the leaf modules."""
    allowed = tuple(f"quicflow.{sub}" for sub in CORE_PACKAGES) + CORE_MAY_IMPORT
    outward = sorted(
        m
        for m in _imports_of(path)
        if _top(m) == "quicflow"
        and m != "quicflow"
        and not any(m == a or m.startswith(a + ".") for a in allowed)
    )
    assert not outward, f"{path.relative_to(PACKAGE_ROOT.parent)} imports outward: {outward}"


@pytest.mark.parametrize("module", CORE_MAY_IMPORT)
def test_leaf_modules_the_core_uses_stay_free_of_io(module: str) -> None:
    """Check that the leaf modules the core imports do not pull in asyncio or aioquic themselves."""
    path = PACKAGE_ROOT.parent / (module.replace(".", "/") + ".py")
    imports = _imports_of(path)
    assert not {m for m in imports if _top(m) in FORBIDDEN_IN_CORE}
    inside = {m for m in imports if _top(m) == "quicflow"}
    assert all(any(m.startswith(leaf) for leaf in CORE_MAY_IMPORT) for m in inside), inside


def test_only_transport_imports_aioquic() -> None:
    """Check that, across all of quicflow/, aioquic is imported only under quicflow/transport."""
    transport = PACKAGE_ROOT / "transport"
    offenders = {
        str(path.relative_to(PACKAGE_ROOT.parent)): sorted(
            m for m in _imports_of(path) if _top(m) == "aioquic"
        )
        for path in _sources()
        if transport not in path.parents
    }
    assert {k: v for k, v in offenders.items() if v} == {}
    assert any(_top(m) == "aioquic" for p in _sources("transport") for m in _imports_of(p)), (
        "the transport no longer imports aioquic: update this test"
    )


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("import asyncio", {"asyncio"}),
        ("import asyncio as aio", {"asyncio"}),
        ("import os, aioquic.quic.connection", {"os", "aioquic.quic.connection"}),
        ("from aioquic import buffer", {"aioquic", "aioquic.buffer"}),
        ("from asyncio.events import AbstractEventLoop", {"asyncio.events"}),
        ("def f():\n    import asyncio\n", {"asyncio"}),
        ("if TYPE_CHECKING:\n    from aioquic.quic import events\n", {"aioquic.quic"}),
        ("from . import codec", {"quicflow.wire", "quicflow.wire.codec"}),
        ("from ..errors import FrameTooLarge", {"quicflow.errors"}),
        ("from ..transport import quic", {"quicflow.transport", "quicflow.transport.quic"}),
        ("from .v1 import frames_pb2 as pb", {"quicflow.wire.v1", "quicflow.wire.v1.frames_pb2"}),
    ],
)
def test_import_finder_sees_every_form(source: str, expected: set[str]) -> None:
    """Check that the AST import finder catches every spelling of an import it must police."""
    found = imported_modules(source, "quicflow.wire.codec")
    assert expected <= found


def test_import_finder_resolves_relative_imports_in_packages() -> None:
    """Check that relative imports in an __init__ resolve against the package itself."""
    assert "quicflow.wire.codec" in imported_modules(
        "from .codec import Frame", "quicflow.wire", is_package=True
    )
    assert "quicflow.errors" in imported_modules(
        "from ..errors import ProtocolError", "quicflow.protocol", is_package=True
    )
