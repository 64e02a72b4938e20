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


# -- the runtime ring: no cycles, no private reads across modules, time only via the Clock --

ALL_FILES = _sources()
MODULES = {_module_name(p): p for p in ALL_FILES}
TRANSPORT = PACKAGE_ROOT / "transport"

# Private names a runtime module may read on an object of another module, and why.
PRIVATE_READS_ALLOWED = {
    # asyncio's ready queue (a Handle's callback) for a new task's eager first step
    # (quicflow/incoming.py `_run_first_step`); uvloop has none and the step then waits.
    ("quicflow.incoming", "_callback"),
}


def import_graph() -> dict[str, set[str]]:
    """Module -> the quicflow modules it imports (anywhere, TYPE_CHECKING included)."""
    graph: dict[str, set[str]] = {}
    for name, path in MODULES.items():
        imports = _imports_of(path)
        graph[name] = {m for m in imports if m in MODULES and m != name}
    return graph


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in sorted(graph.get(node, ())):
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component: list[str] = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(found)


def test_cycle_finder_finds_a_cycle() -> None:
    """Check that the cycle finder reports a three-module loop and nothing for a chain."""
    assert import_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert import_cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []


def test_no_import_cycle_in_quicflow() -> None:
    """Check that no group of quicflow/ modules imports itself round in a circle, counting
    imports inside functions and under TYPE_CHECKING (a seam is a Protocol, not a cycle)."""
    assert import_cycles(import_graph()) == []


def test_neither_face_imports_the_other() -> None:
    """Check that client.py does not import server.py nor the reverse: what both need
    lives in the Endpoint (quicflow/endpoint.py) and the answering side (incoming.py)."""
    graph = import_graph()
    assert "quicflow.server" not in graph["quicflow.client"]
    assert "quicflow.client" not in graph["quicflow.server"]


def _loop_reads(tree: ast.AST) -> list[int]:
    """Lines reading ``<something other than self>._loop``."""
    return [
        node.lineno
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute)
        and node.attr == "_loop"
        and not (isinstance(node.value, ast.Name) and node.value.id == "self")
    ]


def test_loop_read_finder_sees_a_connections_loop() -> None:
    """Check that the finder flags ``conn._loop`` and leaves an object's own ``self._loop``."""
    assert _loop_reads(ast.parse("conn._loop.call_at(1, f)\nself._loop.time()")) == [1]


def test_no_loop_read_outside_the_transport() -> None:
    """Check that above the transport nothing reads a connection's (or anyone's) private
    event loop: runtime time and timers go through the injected Clock (quicflow/clock.py)."""
    offenders = {
        name: lines
        for name, path in MODULES.items()
        if TRANSPORT not in path.parents
        and (lines := _loop_reads(ast.parse(path.read_text(encoding="utf-8"))))
    }
    assert offenders == {}


def _own_names(tree: ast.AST) -> set[str]:
    """Names a module defines for its own objects: functions, classes, module globals,
    attributes set or read on ``self``/``cls``, and ``__slots__`` entries."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            if node.value.id in ("self", "cls"):
                names.add(node.attr)
        elif isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    names.add(target.id)
                    if target.id == "__slots__":
                        names.update(
                            c.value
                            for c in ast.walk(node.value)
                            if isinstance(c, ast.Constant) and isinstance(c.value, str)
                        )
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
    return names


def private_reads(source: str) -> set[str]:
    """Private names (``_x``, not dunders) read on another object than ``self``/``cls``
    that the module does not define itself: reads of another module's internals."""
    tree = ast.parse(source)
    own = _own_names(tree)
    return {
        node.attr
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute)
        and node.attr.startswith("_")
        and not node.attr.startswith("__")
        and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"))
        and node.attr not in own
    }


def test_private_read_finder() -> None:
    """Check that reading another module's private attribute is seen, and that a module's
    own privates (on self, or on a sibling object of a class it defines) are not."""
    source = (
        "class A:\n"
        "    __slots__ = ('_x',)\n"
        "    def f(self, other, server):\n"
        "        return other._x + server._metrics + self._y\n"
    )
    assert private_reads(source) == {"_metrics"}


@pytest.mark.parametrize(
    "module",
    sorted(m for m, p in MODULES.items() if TRANSPORT not in p.parents and "_pb2" not in m),
)
def test_no_runtime_module_reads_another_modules_privates(module: str) -> None:
    """Check that a module outside the transport (which adapts aioquic's internals by
    design) reaches other modules' objects only through their public names."""
    source = MODULES[module].read_text(encoding="utf-8")
    allowed = {name for mod, name in PRIVATE_READS_ALLOWED if mod == module}
    assert private_reads(source) - allowed == set()


# -- runtime concepts live on runtime objects, not on the transport connection --

CONNECTION_CLASSES = ("QuicFlowProtocol",)


def connection_attributes() -> set[str]:
    """Names the transport sets on its connection object (``self.x = ...`` in
    `QuicFlowProtocol` and its subclasses), and its methods and properties."""
    names: set[str] = set()
    for path in _sources("transport"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.ClassDef):
                continue
            bases = {b.id for b in node.bases if isinstance(b, ast.Name)}
            if node.name not in CONNECTION_CLASSES and not bases & set(CONNECTION_CLASSES):
                continue
            names |= _own_names(node) - {node.name}
    return names


def attribute_assignments(source: str, names: set[str]) -> list[tuple[int, str]]:
    """(line, name) of each ``<not self/cls>.name = / += / : T =`` with ``name`` in
    ``names``, tuple targets and ``del`` included."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        targets: list[ast.expr]
        if isinstance(node, ast.Assign | ast.Delete):
            targets = list(node.targets)
        elif isinstance(node, ast.AugAssign | ast.AnnAssign):
            targets = [node.target]
        else:
            continue
        for target in targets:
            for leaf in ast.walk(target):
                if (
                    isinstance(leaf, ast.Attribute)
                    and isinstance(leaf.ctx, ast.Store | ast.Del)
                    and leaf.attr in names
                    and not (isinstance(leaf.value, ast.Name) and leaf.value.id in ("self", "cls"))
                ):
                    found.append((leaf.lineno, leaf.attr))
    return sorted(found)


def test_connection_attribute_finder() -> None:
    """Check that the finder sees the transport's attributes, flags setting one from outside
    (plain, augmented, annotated, in a tuple) and leaves reads and ``self`` alone."""
    attrs = connection_attributes()
    assert {"listener", "settings", "closed_error", "close_code", "write"} <= attrs
    source = (
        "conn.listener = x\n"
        "link.conn.close_code += 1\n"
        "a, conn.settings = 1, 2\n"
        "conn.closed_error: object = None\n"
        "self.settings = y\n"
        "z = conn.listener\n"
        "other.unrelated = 3\n"
    )
    assert attribute_assignments(source, attrs) == [
        (1, "listener"),
        (2, "close_code"),
        (3, "settings"),
        (4, "closed_error"),
    ]


@pytest.mark.parametrize(
    "module", sorted(m for m, p in MODULES.items() if TRANSPORT not in p.parents)
)
def test_no_module_outside_the_transport_sets_a_connections_attributes(module: str) -> None:
    """Check that nothing above the transport parks state on a connection object (issue 15):
    what the runtime negotiates (message lanes, encodings) lives on the client's link or the
    server's session, and the connection hears the runtime only through `attach`."""
    source = MODULES[module].read_text(encoding="utf-8")
    assert attribute_assignments(source, connection_attributes()) == []
