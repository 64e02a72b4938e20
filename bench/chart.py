"""Render a results JSON as a PNG: ``python -m bench.chart [RESULTS.json] [-o PNG]``.

One horizontal bar per measurement and peer: how many times better QuicFlow
did than that peer (its ratio for "higher is better" rows, the inverse for
"lower is better" rows), on a log scale with 1 marked. QuicFlow-only rows
are listed under the chart with their absolute figures. Needs matplotlib
(the ``bench`` extra); without it, says so and exits 0.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import sys
from pathlib import Path
from typing import Any

from .common import LABELS

RESULTS = Path(__file__).resolve().parent / "results"


def latest() -> Path | None:
    """The newest ``<date>.json`` in bench/results/."""
    found = sorted(RESULTS.glob("????-??-??.json"))
    return found[-1] if found else None


def advantages(rows: list[dict[str, Any]], peer: str) -> list[float]:
    """QuicFlow's advantage over ``peer`` per row (>1: QuicFlow better; NaN: no figure)."""
    out: list[float] = []
    for row in rows:
        ours, theirs = row["values"].get("quicflow"), row["values"].get(peer)
        if not ours or not theirs:
            out.append(math.nan)
        else:
            ratio = ours / theirs
            out.append(1 / ratio if row["lower_is_better"] else ratio)
    return out


def render(result: dict[str, Any], out: Path) -> bool:
    """Draw the chart into ``out``; False if matplotlib is missing."""
    try:
        matplotlib: Any = importlib.import_module("matplotlib")
    except ImportError:
        return False
    matplotlib.use("Agg")
    plt: Any = importlib.import_module("matplotlib.pyplot")
    rows = [r for r in result["rows"] if sum(v is not None for v in r["values"].values()) > 1]
    solo = [r for r in result["rows"] if r not in rows and r["values"].get("quicflow")]
    labels = [r["label"] for r in rows]
    fig, ax = plt.subplots(figsize=(10, 0.55 * len(rows) + 2.5))
    height = 0.38
    for i, peer in enumerate(("grpcaio", "grpclib")):
        ys = [k + (i - 0.5) * height for k in range(len(rows))]
        ax.barh(ys, advantages(rows, peer), height=height, label=f"vs {LABELS[peer]}")
    ax.set_xscale("log")
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set_yticks(range(len(rows)), labels)
    ax.invert_yaxis()
    ax.set_xlabel("QuicFlow's advantage (times better; < 1: the peer is better)")
    machine = result.get("machine", {})
    day = str(result.get("date", ""))[:10]
    ax.set_title(
        f"QuicFlow vs grpc.aio and grpclib ({result.get('mode')} mode, {day})"
        f"\n{machine.get('cpus')} CPUs, {machine.get('cpu_model')}, Python {machine.get('python')}",
        fontsize=10,
    )
    ax.legend(loc="best")
    if solo:
        text = "QuicFlow only: " + "; ".join(
            f"{r['label']}: {r['values']['quicflow']:,.0f} {r['unit']}" for r in solo
        )
        fig.text(0.01, 0.01, text, fontsize=7, wrap=True)
    fig.tight_layout(rect=(0, 0.06 if solo else 0, 1, 1))
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return True


def main() -> None:
    """Parse arguments and draw."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("results", nargs="?", type=Path, help="default: the newest results")
    parser.add_argument("-o", "--out", type=Path, default=RESULTS / "latest.png")
    args = parser.parse_args()
    source = args.results or latest()
    if source is None:
        print("no results in bench/results/ yet: run `make bench` first", file=sys.stderr)
        sys.exit(1)
    result = json.loads(source.read_text())
    if not render(result, args.out):
        print("matplotlib is not installed (pip install -e '.[bench]'): no chart drawn")
        return
    print(f"wrote {args.out} from {source}")


if __name__ == "__main__":
    main()
