"""Docs that must not drift from the code."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def test_state_diagrams_match_the_transition_tables() -> None:
    """Check that every Mermaid state diagram in docs/ equals the rendering of its table."""
    docs = [
        str(p) for p in sorted((ROOT / "docs").glob("*.md")) if "state-diagram:" in p.read_text()
    ]
    assert docs, "no diagrams found"
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "state_diagrams.py"), "--check", *docs],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_architecture_diagram_matches_the_imports() -> None:
    """Check that the layer picture in docs/architecture.md equals the one drawn from the
    imports of quicflow/ today (scripts/architecture.py)."""
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "architecture.py"),
            "--check",
            str(ROOT / "docs" / "architecture.md"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def _doc_table(text: str, marker: str) -> list[list[str]]:
    """The rows (cells) of the Markdown table right after ``<!-- config-fields: marker -->``."""
    lines = text.split(f"<!-- config-fields: {marker} -->", 1)[1].strip().splitlines()
    rows = []
    for line in lines[2:]:  # header and separator
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
    return rows


def _shown_default(field: Any) -> str:
    """How the doc spells a field's default: true/false, None, "text", numbers, () and {}."""
    from dataclasses import MISSING

    value = field.default if field.default is not MISSING else field.default_factory()
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    return repr(value)


def test_configuration_doc_lists_exactly_the_config_fields() -> None:
    """Check that docs/configuration.md has one row per ServerConfig/ClientConfig field, in the
    right table, with the right default and environment variable."""
    from dataclasses import fields

    from quicflow.config import _CODE_ONLY, ClientConfig, ServerConfig, _Common

    text = (ROOT / "docs" / "configuration.md").read_text()
    common = [f.name for f in fields(_Common)]
    for marker, cls in (("common", None), ("server", ServerConfig), ("client", ClientConfig)):
        rows = _doc_table(text, marker)
        documented = [row[0].strip("`") for row in rows]
        expected = common if cls is None else [f.name for f in fields(cls) if f.name not in common]
        missing = sorted(set(expected) - set(documented))
        extra = sorted(set(documented) - set(expected))
        assert not missing and not extra, (
            f"docs/configuration.md is out of date for the {marker} fields: undocumented "
            f"{missing}, no longer existing {extra}. Whoever adds, renames or removes a config "
            f"field must add its row (type, default, allowed range, environment variable, "
            f"meaning) to the table after '<!-- config-fields: {marker} -->'."
        )
        assert len(documented) == len(set(documented)), f"duplicate rows in the {marker} table"
        defaults = {f.name: f for f in fields(cls or _Common)}
        for row in rows:
            name = row[0].strip("`")
            shown = _shown_default(defaults[name])
            assert row[2].replace("`", "").startswith(shown), (
                f"docs/configuration.md: the default of {name} is {shown}, the doc says {row[2]}"
            )
        if cls is not None:
            prefix = f"QUICFLOW_{cls._section().upper()}_"
            for row in rows:
                name = row[0].strip("`")
                env = "code only" if name in _CODE_ONLY else f"`{prefix}{name.upper()}`"
                assert row[4].startswith(env), f"{name}: environment variable should be {env}"


def test_wire_protocol_examples_put_calls_on_call_streams() -> None:
    """Check that the worked examples of docs/wire-protocol.md put a call on a call stream:
    a client-initiated bidirectional stream other than 0, which is the control stream
    (§2), so that a peer written from the page sends its first call on stream 4."""
    text = (ROOT / "docs" / "wire-protocol.md").read_text()
    section = text[text.index("### §3.3") : text.index("## §4")]
    streams = [int(n) for n in re.findall(r"→ (?:client|server), stream (\d+)\*\*", section)]
    assert len(streams) == 2, streams
    assert all(n % 4 == 0 and n != 0 for n in streams), streams
