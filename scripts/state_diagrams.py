"""Render QuicFlow's state-machine tables as Mermaid diagrams, so the docs cannot drift.

Each diagram is drawn from a ``TRANSITIONS`` table in ``quicflow/protocol``,
one arrow per table entry:

=================  =====================================================
name               table
=================  =====================================================
client-lifecycle   ``quicflow.protocol.lifecycle.TRANSITIONS``
control-client     ``quicflow.protocol.control.TRANSITIONS[CALLER]`` (the client)
control-server     ``quicflow.protocol.control.TRANSITIONS[CALLEE]`` (the server)
call-caller        ``quicflow.protocol.call.TRANSITIONS[CALLER]`` (frames the caller sends)
call-callee        ``quicflow.protocol.call.TRANSITIONS[CALLEE]`` (frames the callee sends)
=================  =====================================================

In a Markdown page, put the diagram between markers::

    <!-- state-diagram:client-lifecycle -->
    ```mermaid
    ...
    ```
    <!-- /state-diagram:client-lifecycle -->

Usage::

    python scripts/state_diagrams.py [NAME ...]     # print blocks, markers included
    python scripts/state_diagrams.py --check FILE…  # exit 1 if a marked block differs
    python scripts/state_diagrams.py --write FILE…  # rewrite the marked blocks in place
"""

from __future__ import annotations

import argparse
import difflib
import enum
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TypeVar

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a file from anywhere, without installing
    sys.path.insert(0, str(ROOT))

from quicflow.protocol import call, control, lifecycle  # noqa: E402
from quicflow.wire.codec import FrameType  # noqa: E402

S = TypeVar("S", bound=enum.Enum)
K = TypeVar("K")

MARKER = re.compile(
    r"<!-- state-diagram:(?P<name>[a-z0-9-]+) -->\n(?P<body>.*?)<!-- /state-diagram:(?P=name) -->",
    re.DOTALL,
)
MERMAID = re.compile(r"```mermaid\n(?P<diagram>.*?)```", re.DOTALL)


def render(
    table: Mapping[S, Mapping[K, S]], label: Callable[[K], str], initial: S, note: str
) -> str:
    """One ``stateDiagram-v2`` (without the fences): an arrow per table entry.

    States with no outgoing entry are final (``--> [*]``).
    """
    lines = ["stateDiagram-v2", "    direction LR", f"    [*] --> {initial.name}"]
    seen: dict[str, None] = {initial.name: None}
    for source, row in table.items():
        seen.setdefault(source.name)
        for key, target in row.items():
            seen.setdefault(target.name)
            lines.append(f"    {source.name} --> {target.name}: {label(key)}")
    live = {source.name for source, row in table.items() if row}
    lines += [f"    {name} --> [*]" for name in seen if name not in live]
    lines.append(f"    note right of {initial.name}: {note}")
    return "\n".join(lines) + "\n"


def _event_label(key: enum.Enum) -> str:
    return key.name


def _frame_label(key: object) -> str:
    if isinstance(key, FrameType):
        return key.name
    if key is call.END or key is control.FIN:
        return "FIN"
    raise TypeError(f"no label for table key {key!r}")


def _control_label(key: tuple[control.Direction, object]) -> str:
    direction, what = key
    return f"{direction.value} {_frame_label(what)}"


def diagrams() -> dict[str, str]:
    """Every diagram by name, rendered from the live tables."""
    ctl = control.TRANSITIONS
    return {
        "client-lifecycle": render(
            lifecycle.TRANSITIONS,
            _event_label,
            lifecycle.ClientState.IDLE,
            "CLOSE in CLOSED is a no-op. Any other unlisted event raises.",
        ),
        "control-client": render(
            ctl[call.Role.CALLER],
            _control_label,
            control.ControlState.IDLE,
            "Client side. Anything else received is an ERROR, anything else sent raises.",
        ),
        "control-server": render(
            ctl[call.Role.CALLEE],
            _control_label,
            control.ControlState.IDLE,
            "Server side. Anything else received is an ERROR, anything else sent raises.",
        ),
        "call-caller": render(
            call.TRANSITIONS[call.Role.CALLER],
            _frame_label,
            call.SideState.IDLE,
            "Caller to callee. Any other frame or FIN is an ERROR.",
        ),
        "call-callee": render(
            call.TRANSITIONS[call.Role.CALLEE],
            _frame_label,
            call.SideState.IDLE,
            "Callee to caller. Any other frame or FIN is an ERROR.",
        ),
    }


def block(name: str, diagram: str) -> str:
    """The marked Markdown block for one diagram, as it should appear in a page."""
    return (
        f"<!-- state-diagram:{name} -->\n```mermaid\n{diagram}```\n<!-- /state-diagram:{name} -->"
    )


def check(path: Path, rendered: Mapping[str, str]) -> list[str]:
    """Problems with the marked blocks of one Markdown file (empty when all match)."""
    text = path.read_text(encoding="utf-8")
    problems: list[str] = []
    found = list(MARKER.finditer(text))
    if not found:
        return [f"{path}: no <!-- state-diagram:NAME --> markers"]
    for match in found:
        name = match["name"]
        if name not in rendered:
            problems.append(f"{path}: unknown diagram {name!r} (known: {', '.join(rendered)})")
            continue
        blocks = MERMAID.findall(match["body"])
        if len(blocks) != 1:
            problems.append(f"{path}: {name}: expected one ```mermaid block, found {len(blocks)}")
            continue
        if blocks[0] != rendered[name]:
            diff = difflib.unified_diff(
                blocks[0].splitlines(),
                rendered[name].splitlines(),
                f"{path} ({name})",
                "rendered from the table",
                lineterm="",
            )
            problems.append(f"{path}: {name} differs from its table:\n" + "\n".join(diff))
    return problems


def write(path: Path, rendered: Mapping[str, str]) -> list[str]:
    """Rewrite the marked blocks of one Markdown file; return unknown names."""
    text = path.read_text(encoding="utf-8")
    unknown: list[str] = []

    def replace(match: re.Match[str]) -> str:
        name = match["name"]
        if name not in rendered:
            unknown.append(f"{path}: unknown diagram {name!r}")
            return match[0]
        return block(name, rendered[name])

    new = MARKER.sub(replace, text)
    if new != text:
        path.write_text(new, encoding="utf-8")
    return unknown


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--check", nargs="+", type=Path, metavar="FILE", help="fail on drift")
    mode.add_argument("--write", nargs="+", type=Path, metavar="FILE", help="update in place")
    parser.add_argument("names", nargs="*", metavar="NAME", help="diagrams to print (default all)")
    args = parser.parse_args(argv)
    rendered = diagrams()
    files: list[Path] | None = args.check or args.write
    if files is not None:
        if args.names:
            parser.error("NAME cannot be combined with --check or --write")
        act = check if args.check else write
        problems = [p for path in files for p in act(path, rendered)]
        for problem in problems:
            print(problem, file=sys.stderr)
        return 1 if problems else 0
    names: list[str] = args.names or list(rendered)
    unknown = [n for n in names if n not in rendered]
    if unknown:
        parser.error(f"unknown diagram(s) {', '.join(unknown)}; known: {', '.join(rendered)}")
    print("\n\n".join(block(n, rendered[n]) for n in names))
    return 0


if __name__ == "__main__":
    sys.exit(main())
