"""From the model to source text, through the jinja2 templates in ``templates/``.

The body (``body.py.j2``) is rendered first. While it renders, every typing
name it asks for through ``use()`` is recorded, so the header
(``header.py.j2``) imports exactly those, plus the message classes and
``quicflow``, and lists ``__all__``.

The output is already in ``ruff format`` style, so no formatter runs at
generation time. It fits ruff's default line length (88), and it is also
what ``ruff format`` keeps at any longer line length (this repository uses
100): the `wrap` helper puts a bracketed list on one line if it fits in 88,
else one item per line with a trailing comma, which ruff's "magic trailing
comma" rule (and its isort's ``split-on-trailing-comma``) leaves exploded.
Imports are grouped and ordered the way ruff's isort rules want them. Which
section (first- or third-party) ``quicflow`` and each message package land
in depends on the user's project layout and settings, so every group whose
section the plugin cannot know is its own import block (``# isort: split``):
isort then has nothing to reorder across them, whatever it decides.
"""

from __future__ import annotations

import re
import textwrap
from collections.abc import Callable, Iterable, Sequence

import jinja2

from . import __version__, naming
from .model import File, Import

__all__ = ["LINE_LENGTH", "constant", "docstring", "render_file", "wrap"]

LINE_LENGTH = 88
"""The line length the output fits: ruff's default (and within any longer setting)."""

_STDLIB_MODULES = ("importlib", "warnings")
"""Modules the body may ``use()``, imported as ``import x``."""

_STDLIB_IMPORTS = {
    "Any": "typing",
    "AsyncIterable": "collections.abc",
    "AsyncIterator": "collections.abc",
    "Iterable": "collections.abc",
    "Mapping": "collections.abc",
    "ClassVar": "typing",
}


def wrap(indent: int, head: str, items: Sequence[str], tail: str) -> str:
    """Lay out ``head + ", ".join(items) + tail`` as ruff format would.

    One line if it fits in `LINE_LENGTH`; else one item per line with a
    trailing comma, which ruff keeps exploded at every line length.
    ``indent`` is the column ``head`` starts at; the first line carries no
    indentation (the template supplies it).
    """
    one_line = head + ", ".join(items) + tail
    if indent + len(one_line) <= LINE_LENGTH or not items:
        return one_line
    pad = " " * indent
    inner = " " * (indent + 4)
    body = "".join(f"{inner}{item},\n" for item in items)
    return f"{head}\n{body}{pad}{tail}"


def constant(
    name: str, annotation: str, type_args: Sequence[str], call: str, args: Sequence[str]
) -> str:
    """``name: annotation[type_args] = call(args)`` at column 0, laid out as ruff format keeps it.

    When the line up to the call's bracket does not fit, the annotation's type
    arguments go one per line too (ruff leaves that exploded as well).
    """
    target = f"{name}: {annotation}[{', '.join(type_args)}]"
    if len(f"{target} = {call}(") <= LINE_LENGTH:
        return wrap(0, f"{target} = {call}(", args, ")")
    exploded = "".join(f"    {arg},\n" for arg in type_args)
    return f"{name}: {annotation}[\n{exploded}" + wrap(0, f"] = {call}(", args, ")")


def requests_param(expr: str, use: Callable[[str], str]) -> str:
    """The ``requests`` parameter of a client-streaming stub method (at column 8).

    ``AsyncIterable[X] | Iterable[X]`` where it fits the line; else
    ``quicflow.RequestIterable[X]``, the same type: ruff would split the long
    union at ``|`` at line length 88 and join it again at 100.
    """
    union = f"requests: AsyncIterable[{expr}] | Iterable[{expr}]"
    if 8 + len(union) + 1 <= LINE_LENGTH:  # + its comma
        use("AsyncIterable")
        use("Iterable")
        return union
    return f"requests: quicflow.RequestIterable[{expr}]"


def docstring(text: str, indent: int) -> str:
    """A triple-quoted docstring for ``text`` at column ``indent``, within the line length.

    Backslashes and triple quotes are escaped; lines too long are re-wrapped
    at word boundaries (a single word longer than a line is left as is).
    """
    text = text.replace("\\", "\\\\").replace('"""', '\\"\\"\\"')
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
    if len(lines) == 1 and indent + len(lines[0]) + 6 > LINE_LENGTH:
        # One line that fits only without its closing quotes: ruff format would put
        # them on that line at a longer line length (100 here) and not at 88. Two
        # lines keep the closing quotes on their own line at every length.
        lines = textwrap.wrap(
            lines[0], width=len(lines[0]) - 1, break_long_words=False, break_on_hyphens=False
        )
    line = lines[0]
    if line.endswith('"'):
        # A quote right before the closing quotes would end the string early,
        # unless an odd number of backslashes escapes it already.
        body = line[:-1]
        if (len(body) - len(body.rstrip("\\"))) % 2 == 0:
            line = body + '\\"'
    if len(lines) == 1 and indent + len(line) + 6 <= LINE_LENGTH:
        return f'"""{line}"""'
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
        if name not in _STDLIB_IMPORTS and name not in _STDLIB_MODULES:
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
    env.globals["constant"] = constant
    env.globals["requests_param"] = requests_param
    env.globals["line_length"] = LINE_LENGTH
    env.filters["docstring"] = docstring
    env.filters["pystr"] = pystr
    return env


_ENV = _environment()


def _stdlib_lines(names: set[str]) -> list[str]:
    # isort's default: the section's ``import x`` statements, then its ``from`` imports.
    lines = [f"import {module}" for module in sorted(names & set(_STDLIB_MODULES))]
    modules: dict[str, list[str]] = {}
    for name in names - set(_STDLIB_MODULES):
        modules.setdefault(_STDLIB_IMPORTS[name], []).append(name)
    return lines + [
        _from_import(module, sorted(modules[module], key=_member_key)) for module in sorted(modules)
    ]


def _dynamic_lines(file: File, uses: _Uses) -> list[str]:
    """The assignments that load classes no import statement can name (`DynamicImport`)."""
    if not file.dynamic:
        return []
    uses("importlib")
    uses("Any")
    lines: list[str] = []
    loaded: set[str] = set()
    for dyn in file.dynamic:
        if dyn.module_var not in loaded:
            loaded.add(dyn.module_var)
            # A relative module is resolved against this module's package, as `from .` is.
            args = [pystr(dyn.module)]
            if dyn.module.startswith("."):
                args.append("__package__")
            lines.append(wrap(0, f"{dyn.module_var} = importlib.import_module(", args, ")"))
    for dyn in file.dynamic:
        lines.append(f"{dyn.alias}: Any = {naming.attribute_chain(dyn.module_var, dyn.path)}")
    return lines


def _source_comment(source: str) -> str:
    """``# source: <path>``, the path broken after a ``/`` onto ``#   `` lines where the
    line would pass LINE_LENGTH. Never ``# noqa: E501``: ruff's defaults do not enable
    E501 and flag such a comment as unused (RUF100), as does a config whose line length
    the line fits; a path segment longer than a line stays whole."""
    line = f"# source: {source}"
    if len(line) <= LINE_LENGTH:
        return line
    lines: list[str] = []
    current = "# source: "
    fresh = True  # nothing of the path on `current` yet
    for piece in re.findall(r"[^/]*/|[^/]+$", source):
        if not fresh and len(current) + len(piece) > LINE_LENGTH:
            lines.append(current)
            current = "#   "
        current += piece
        fresh = False
    return "\n".join([*lines, current])


def render_file(file: File) -> str:
    """The full text of the generated module for ``file``."""
    uses = _Uses()
    body = _ENV.get_template("body.py.j2").render(file=file, use=uses)
    dynamic = _dynamic_lines(file, uses)
    absolute = [i for i in file.imports if not i.module.startswith(".")]
    relative = [i for i in file.imports if i.module.startswith(".")]
    # One block per top-level package: its section is all isort needs to know.
    packages: dict[str, list[Import]] = {}
    for imp in absolute:
        packages.setdefault(imp.module.partition(".")[0], []).append(imp)
    blocks = [["import quicflow"]]
    blocks += [_import_lines(packages[top]) for top in sorted(packages, key=_module_key)]
    if relative:
        blocks[-1] += ["", *_import_lines(relative)]
    exported = [name for s in file.services for name in (s.stub_name, s.base_name)]
    header = _ENV.get_template("header.py.j2").render(
        file=file,
        version=__version__,
        source=_source_comment(file.source),
        stdlib=_stdlib_lines(uses.names),
        blocks=["\n".join(block) for block in blocks],
        all_line=wrap(0, "__all__ = [", [pystr(n) for n in sorted(exported)], "]"),
        dynamic=dynamic,
    )
    return header + body
