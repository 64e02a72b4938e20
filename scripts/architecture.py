"""Draw QuicFlow's layers and the imports between its parts, from the code, as Mermaid.

The picture in docs/architecture.md is this script's output: each box is a
module (or a package drawn as one box), each arrow an import found by
reading the source with ``ast`` (the finder of tests/test_layering.py: inside
functions and under ``TYPE_CHECKING`` too). Leaf modules every layer uses
(errors, status, metadata, config) and the tools around the runtime (cli,
testing, chaos, certs, logs, built-in services) are left out to keep it
readable; the layering tests police them.

In a Markdown page, put the diagram between markers::

    <!-- architecture:layers -->
    ```mermaid
    ...
    ```
    <!-- /architecture:layers -->

Usage::

    python scripts/architecture.py                  # print the block, markers included
    python scripts/architecture.py --check FILE...  # exit 1 if a marked block differs
    python scripts/architecture.py --write FILE...  # rewrite the marked blocks in place
"""

from __future__ import annotations

import argparse
import ast
import difflib
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "quicflow"

# Layer -> (box, label, the modules or packages drawn as the box), outermost first.
LAYERS: dict[str, list[tuple[str, str, tuple[str, ...]]]] = {
    "faces: the public API": [
        ("client", "client.py<br/>Client: connect, reconnect, heartbeat", ("quicflow.client",)),
        ("server", "server.py<br/>Server: accept, sessions, stop", ("quicflow.server",)),
    ],
    "around the server": [
        ("push", "push.py<br/>channels, broadcast, promises", ("quicflow.push",)),
        ("sessions", "sessions.py<br/>session registry", ("quicflow.sessions",)),
        ("cluster", "cluster/<br/>nodes over NATS", ("quicflow.cluster",)),
        (
            "http",
            "http.py + prometheus.py<br/>operators' endpoint",
            ("quicflow.http", "quicflow.prometheus"),
        ),
    ],
    "endpoint: what both faces have": [
        ("endpoint", "endpoint.py<br/>Endpoint", ("quicflow.endpoint",)),
        ("incoming", "incoming.py<br/>IncomingCall: calls we answer", ("quicflow.incoming",)),
        ("calls", "calls.py<br/>calls we make, Channel", ("quicflow.calls",)),
        ("lane", "lane.py<br/>message lanes", ("quicflow.lane",)),
        (
            "dispatch",
            "dispatch.py + messaging.py<br/>untyped messages",
            ("quicflow.dispatch", "quicflow.messaging"),
        ),
        (
            "observe",
            "hooks.py + metrics.py + interceptors.py",
            ("quicflow.hooks", "quicflow.metrics", "quicflow.interceptors"),
        ),
        (
            "surface",
            "rpc.py + context.py<br/>what generated code uses",
            ("quicflow.rpc", "quicflow.context"),
        ),
        ("clock", "clock.py<br/>Clock, PolicyTimer", ("quicflow.clock",)),
    ],
    "adapter: the only importer of aioquic": [
        ("transport", "transport/<br/>QUIC connections and endpoint", ("quicflow.transport",)),
    ],
    "core: sans-IO": [
        ("protocol", "protocol/<br/>state machines and policies", ("quicflow.protocol",)),
        ("wire", "wire/<br/>frames", ("quicflow.wire",)),
    ],
}

MARKER = re.compile(
    r"<!-- architecture:(?P<name>[a-z0-9-]+) -->\n(?P<body>.*?)<!-- /architecture:(?P=name) -->",
    re.DOTALL,
)


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                if node.level > 1:
                    base = base[: -(node.level - 1)]
                target = ".".join(base) + (f".{node.module}" if node.module else "")
            else:
                target = node.module or ""
            found.add(target)
            found.update(f"{target}.{a.name}" for a in node.names if a.name != "*")
    return found


def _box_of(module: str) -> str | None:
    for boxes in LAYERS.values():
        for box, _, members in boxes:
            if any(module == m or module.startswith(m + ".") for m in members):
                return box
    return None


def edges() -> list[tuple[str, str]]:
    """Every (importer box, imported box) pair found in quicflow/, sorted."""
    found: set[tuple[str, str]] = set()
    for path in sorted(PACKAGE.rglob("*.py")):
        source = _box_of(_module_name(path))
        if source is None:
            continue
        for imported in _imports(path):
            target = _box_of(imported)
            if target is not None and target != source:
                found.add((source, target))
    return sorted(found)


def render() -> str:
    """The Mermaid flowchart: one subgraph per layer, one arrow per import edge."""
    lines = ["flowchart TB"]
    for number, (layer, boxes) in enumerate(LAYERS.items()):
        lines.append(f'    subgraph L{number}["{layer}"]')
        lines.extend(f'        {box}["{label}"]' for box, label, _ in boxes)
        lines.append("    end")
    lines.extend(f"    {a} --> {b}" for a, b in edges())
    return "\n".join(lines) + "\n"


def block(name: str = "layers") -> str:
    """The marked Markdown block for ``name``."""
    return f"<!-- architecture:{name} -->\n```mermaid\n{render()}```\n<!-- /architecture:{name} -->"


def _rewrite(text: str) -> str:
    return MARKER.sub(lambda m: block(m.group("name")), text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true", help="fail if a marked block differs")
    mode.add_argument("--write", action="store_true", help="rewrite marked blocks in place")
    parser.add_argument("files", nargs="*", type=Path)
    args = parser.parse_args(argv)
    if not args.check and not args.write:
        print(block())
        return 0
    status = 0
    for path in args.files:
        text = path.read_text(encoding="utf-8")
        if not MARKER.search(text):
            print(f"{path}: no architecture markers", file=sys.stderr)
            status = 1
            continue
        new = _rewrite(text)
        if new == text:
            continue
        if args.write:
            path.write_text(new, encoding="utf-8")
            print(f"rewrote {path}")
        else:
            sys.stdout.writelines(
                difflib.unified_diff(
                    text.splitlines(keepends=True), new.splitlines(keepends=True), str(path)
                )
            )
            print(f"{path}: the architecture diagram is out of date; run --write", file=sys.stderr)
            status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())
