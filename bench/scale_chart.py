"""Draw a scale run's timeline: ``python -m bench.scale_chart [RESULTS.json] [-o PNG]``.

Per engine, three stacked panels over the run's time: clients connected (and, from the
restart on, connected again since the kill), server and fleet CPU (% of one core), and
server RSS, with each phase's start marked. Needs matplotlib (the ``bench`` extra);
without it, says so and exits 0.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def latest() -> Path | None:
    """The newest ``scale-*.json`` in bench/results/."""
    found = sorted(RESULTS.glob("scale-*.json"), key=lambda p: p.stat().st_mtime)
    return found[-1] if found else None


def render(result: dict[str, Any], out: Path) -> bool:
    """Draw the chart into ``out``; False if matplotlib is missing."""
    try:
        matplotlib: Any = importlib.import_module("matplotlib")
    except ImportError:
        return False
    matplotlib.use("Agg")
    plt: Any = importlib.import_module("matplotlib.pyplot")
    engines = [e for e, rows in result["timeline"].items() if rows]
    if not engines:
        return False
    fig, axes = plt.subplots(
        3, len(engines), figsize=(7 * len(engines), 8), sharex="col", squeeze=False
    )
    for col, engine in enumerate(engines):
        rows = result["timeline"][engine]
        t = [r["t"] for r in rows]
        top, mid, low = axes[0][col], axes[1][col], axes[2][col]
        top.plot(t, [r["connected"] for r in rows], label="connected")
        back = [r["back"] if r["phase"] in ("restart",) else None for r in rows]
        top.plot(t, back, label="back since the restart", linestyle="--")
        top.set_ylabel("clients")
        top.legend(loc="lower right", fontsize=8)
        top.set_title(f"{engine}: {result['clients']:,} clients ({result['mode']} mode)")
        mid.plot(t, [r["server_cpu"] for r in rows], label="server")
        mid.plot(t, [r["fleet_cpu"] for r in rows], label="client fleets", alpha=0.7)
        mid.set_ylabel("CPU, % of one core")
        mid.legend(loc="upper right", fontsize=8)
        low.plot(t, [r["server_rss_mib"] for r in rows])
        low.set_ylabel("server RSS, MiB")
        low.set_xlabel("seconds since the server started")
        previous = None
        for r in rows:
            if r["phase"] != previous:
                previous = r["phase"]
                for ax in (top, mid, low):
                    ax.axvline(r["t"], color="grey", linewidth=0.6, linestyle=":")
                top.annotate(
                    r["phase"],
                    (r["t"], 1.0),
                    xycoords=("data", "axes fraction"),
                    fontsize=7,
                    rotation=90,
                    va="top",
                    ha="right",
                )
    m = result.get("machine", {})
    fig.suptitle(
        f"{m.get('cpus')} CPUs, {m.get('cpu_model')}, Python {m.get('python')}, "
        f"{result.get('date', '')[:10]}, load {result.get('load_before')} before",
        fontsize=9,
    )
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return True


def main() -> None:
    """Parse arguments and draw."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("results", nargs="?", type=Path, help="default: the newest scale run")
    parser.add_argument("-o", "--out", type=Path)
    args = parser.parse_args()
    source = args.results or latest()
    if source is None:
        print("no scale results in bench/results/ yet: run `make scale` first", file=sys.stderr)
        sys.exit(1)
    result = json.loads(source.read_text())
    out = args.out or RESULTS / f"scale-{result['mode']}.png"
    if not render(result, out):
        print("matplotlib is not installed (pip install -e '.[bench]'): no chart drawn")
        return
    print(f"wrote {out} from {source}")


if __name__ == "__main__":
    main()
