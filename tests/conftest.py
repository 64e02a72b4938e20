"""Suite-wide fixtures: the `figures` recorder behind `make chaos`'s table.

A fault, load or soak test records what it measured with
``figures.add("p99 latency", 12.3, "ms")``; each figure is printed as it is
recorded (visible with ``-s``) and all of them end the run as one Markdown
table, the one copied into docs/reliability.md. Set ``QUICFLOW_FIGURES`` to a
path to also append the rows there. Under pytest-xdist (``make test``) the
figures travel to the controller in each test report's ``user_properties``.
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


_PROPERTY = "quicflow_figure"


class Figures:
    """Records figures for the current test."""

    def __init__(self, test: str, properties: list[tuple[str, object]] | None = None) -> None:
        self.test = test
        self._properties = properties if properties is not None else []

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
        self._properties.append((_PROPERTY, (self.test, name, text, unit)))
        print(f"\n[figure] {self.test}: {name} = {text} {unit}".rstrip(), flush=True)


@pytest.fixture
def figures(request: pytest.FixtureRequest) -> Iterator[Figures]:
    """A `Figures` recorder named after the test."""
    yield Figures(request.node.name, request.node.user_properties)


def _from_workers(terminalreporter: pytest.TerminalReporter) -> list[Figure]:
    """The figures pytest-xdist workers recorded, from their call reports."""
    found = []
    for reports in terminalreporter.stats.values():
        for report in reports:
            if getattr(report, "when", None) != "call":
                continue
            for key, value in getattr(report, "user_properties", ()):
                if key == _PROPERTY:
                    found.append(Figure(*value))
    return found


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Print every recorded figure as one Markdown table at the end of the run."""
    recorded = _FIGURES or _from_workers(terminalreporter)
    if not recorded:
        return
    lines = ["| test | figure | value | unit |", "|---|---|---|---|"]
    lines += [f"| {f.test} | {f.name} | {f.value} | {f.unit} |" for f in recorded]
    terminalreporter.write_sep("=", "figures")
    for line in lines:
        terminalreporter.write_line(line)
    path = os.environ.get("QUICFLOW_FIGURES")
    if path:
        with open(path, "a", encoding="utf-8") as out:
            out.write("\n".join(lines[2:]) + "\n")
