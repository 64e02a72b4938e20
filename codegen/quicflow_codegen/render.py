"""From the model to source text, through the jinja2 templates in ``templates/``.

The body (``body.py.j2``) is rendered first. While it renders, every typing
name it asks for through ``use()`` is recorded, so the header
(``header.py.j2``) imports exactly those, plus the message classes and
``quicflow``, and lists ``__all__``.

The output is already in ``ruff format`` style at line length 100, so no
formatter runs at generation time: the `wrap` helper lays out a bracketed
list the way ruff does (one line; else the items on one indented line; else
one item per line with a trailing comma), and the imports are grouped and
ordered the way ruff's isort rules want them.
"""

from __future__ import annotations

import re
import textwrap
from collections.abc import Iterable, Sequence

import jinja2

from . import __version__
from .model import File, Import

__all__ = ["LINE_LENGTH", "assign", "docstring", "render_file", "wrap"]

LINE_LENGTH = 100
"""The line length the output fits (the repo's ruff setting)."""

_STDLIB_IMPORTS = {
    "AsyncIterable": "collections.abc",
    "AsyncIterator": "collections.abc",
    "Iterable": "collections.abc",
    "Mapping": "collections.abc",
    "ClassVar": "typing",
}


def wrap(indent: int, head: str, items: Sequence[str], tail: str) -> str:
    """Lay out ``head + ", ".join(items) + tail`` as ruff format would.

    ``indent`` is the column ``head`` starts at; the first line carries no
    indentation (the template supplies it).
    """
    one_line = head + ", ".join(items) + tail
    if indent + len(one_line) <= LINE_LENGTH:
        return one_line
    pad = " " * indent
    inner = " " * (indent + 4)
    hugged = inner + ", ".join(items)
    if items and len(hugged) <= LINE_LENGTH:
        return f"{head}\n{hugged}\n{pad}{tail}"
    body = "".join(f"{inner}{item},\n" for item in items)
    return f"{head}\n{body}{pad}{tail}"


def assign(target: str, head: str, items: Sequence[str], tail: str) -> str:
    """Lay out ``target = head(items)tail`` at column 0 as ruff format would.

    When even the first line ``target = head`` is too long, ruff moves the
    value into parentheses on the lines below.
    """
    if len(f"{target} = {head}") <= LINE_LENGTH:
        return wrap(0, f"{target} = {head}", items, tail)
    return f"{target} = (\n    {wrap(4, head, items, tail)}\n)"


def docstring(text: str, indent: int) -> str:
    """A triple-quoted docstring for ``text`` at column ``indent``, within the line length.

    Backslashes and triple quotes are escaped; lines too long are re-wrapped
    at word boundaries (a single word longer than a line is left as is).
    """
    text = text.replace("\\", "\\\\").replace('"""', '\\"\\"\\"')
    if text.endswith('"'):
        text = text[:-1] + '\\"'
    pad = " " * indent
    width = LINE_LENGTH - indent
    # Docstring indentation is relative (PEP 257, and ruff format re-indents
    # that way): drop what all lines after the first have in common.
    first, *others = text.splitlines() or [""]
    lines: list[str] = []
    for line in [first, *textwrap.dedent("\n".join(others)).splitlines()]:
        if len(line) <= width - 3:
            lines.append(line)
            continue
        lead = line[: len(line) - len(line.lstrip())]
        lines.extend(
            textwrap.wrap(
                line,
                width=width - 3,
                subsequent_indent=lead,
                break_long_words=False,
                break_on_hyphens=False,
            )
        )
    if len(lines) == 1 and indent + len(lines[0]) + 6 <= LINE_LENGTH:
        return f'"""{lines[0]}"""'
    rest = "".join(f"\n{pad}{line}" if line else "\n" for line in lines[1:])
    return f'"""{lines[0]}{rest}\n{pad}"""'


def pystr(value: str) -> str:
    """A double-quoted Python string literal (proto names need no escaping beyond this)."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


_NATURAL = re.compile(r"(\d+)")


def _natural(value: str) -> tuple[tuple[int, int | str], ...]:
    return tuple(
        (0, int(part)) if part.isdigit() else (1, part) for part in _NATURAL.split(value) if part
    )


def _member_key(name: str) -> tuple[object, ...]:
    # ruff's isort default order-by-type: CONSTANTS, then Classes, then variables.
    if name.isupper() and len(name) > 1:
        rank = 0
    elif name[:1].isupper():
        rank = 1
    else:
        rank = 2
    return (rank, _natural(name.lower()), _natural(name))


def _module_key(module: str) -> tuple[object, ...]:
    # Relative imports: furthest first (ruff's relative-imports-order default).
    dots = len(module) - len(module.lstrip("."))
    return (-dots, _natural(module.lower()), _natural(module))


def _from_import(module: str, names: Sequence[str]) -> str:
    line = f"from {module} import {', '.join(names)}"
    if len(line) <= LINE_LENGTH:
        return line
    return wrap(0, f"from {module} import (", names, ")")


def _import_lines(imports: Iterable[Import]) -> list[str]:
    """One ``from m import a, b`` per module, then one line per aliased name, ruff's order."""
    by_module: dict[str, list[Import]] = {}
    for imp in imports:
        by_module.setdefault(imp.module, []).append(imp)
    lines: list[str] = []
    for module in sorted(by_module, key=_module_key):
        group = by_module[module]
        # ruff sorts a module's statements by their first name: the combined
        # statement of plain names and one statement per aliased name.
        statements: list[tuple[tuple[object, ...], list[str]]] = []
        plain = sorted((i.name for i in group if i.alias == i.name), key=_member_key)
        if plain:
            statements.append((_member_key(plain[0]), plain))
        for imp in group:
            if imp.alias != imp.name:
                statements.append((_member_key(imp.name), [f"{imp.name} as {imp.alias}"]))
        for _, names in sorted(statements, key=lambda s: s[0]):
            lines.append(_from_import(module, names))
    return lines


class _Uses:
    """Records the typing names the body asks for, so the header imports just those."""

    def __init__(self) -> None:
        self.names: set[str] = set()

    def __call__(self, name: str) -> str:
        if name not in _STDLIB_IMPORTS:
            raise KeyError(f"template asked for unknown name {name!r}")
        self.names.add(name)
        return name


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("quicflow_codegen", "templates"),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,
    )
    env.globals["wrap"] = wrap
    env.globals["assign"] = assign
    env.filters["docstring"] = docstring
    env.filters["pystr"] = pystr
    return env


_ENV = _environment()


def _stdlib_lines(names: set[str]) -> list[str]:
    modules: dict[str, list[str]] = {}
    for name in names:
        modules.setdefault(_STDLIB_IMPORTS[name], []).append(name)
    return [
        _from_import(module, sorted(modules[module], key=_member_key)) for module in sorted(modules)
    ]


def render_file(file: File) -> str:
    """The full text of the generated module for ``file``."""
    uses = _Uses()
    body = _ENV.get_template("body.py.j2").render(file=file, use=uses)
    absolute = [i for i in file.imports if not i.module.startswith(".")]
    relative = [i for i in file.imports if i.module.startswith(".")]
    exported = [name for s in file.services for name in (s.stub_name, s.base_name)]
    header = _ENV.get_template("header.py.j2").render(
        file=file,
        version=__version__,
        stdlib=_stdlib_lines(uses.names),
        absolute=_import_lines(absolute),
        relative=_import_lines(relative),
        all_line=wrap(0, "__all__ = [", [pystr(n) for n in sorted(exported)], "]"),
    )
    return header + body
