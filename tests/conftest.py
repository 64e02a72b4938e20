"""Suite-wide fixtures: the `figures` recorder behind `make chaos`'s table.

A fault, load or soak test records what it measured with
``figures.add("p99 latency", 12.3, "ms")``; each figure is printed as it is
recorded (visible with ``-s``) and all of them end the run as one Markdown
table, the one copied into docs/reliability.md. Set ``QUICFLOW_FIGURES`` to a
path to also append the rows there.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

import pytest


@dataclass(frozen=True, slots=True)
class Figure:
    """One measured value."""

    test: str
    name: str
    value: str
    unit: str


_FIGURES: list[Figure] = []


class Figures:
    """Records figures for the current test."""

    def __init__(self, test: str) -> None:
        self.test = test

    def add(self, name: str, value: float | int | str, unit: str = "") -> None:
        """Record (and print) one figure."""
        if isinstance(value, float):
            text = f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"
        elif isinstance(value, int):
            text = f"{value:,}"
        else:
            text = value
        figure = Figure(self.test, name, text, unit)
        _FIGURES.append(figure)
        print(f"\n[figure] {self.test}: {name} = {text} {unit}".rstrip(), flush=True)


@pytest.fixture
def figures(request: pytest.FixtureRequest) -> Iterator[Figures]:
    """A `Figures` recorder named after the test."""
    yield Figures(request.node.name)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Print every recorded figure as one Markdown table at the end of the run."""
    if not _FIGURES:
        return
    lines = ["| test | figure | value | unit |", "|---|---|---|---|"]
    lines += [f"| {f.test} | {f.name} | {f.value} | {f.unit} |" for f in _FIGURES]
    terminalreporter.write_sep("=", "figures")
    for line in lines:
        terminalreporter.write_line(line)
    path = os.environ.get("QUICFLOW_FIGURES")
    if path:
        with open(path, "a", encoding="utf-8") as out:
            out.write("\n".join(lines[2:]) + "\n")
