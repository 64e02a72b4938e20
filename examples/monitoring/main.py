"""Monitoring in one run: hooks, get_metrics(), a Prometheus scrape and the status page.

Starts the complete server (``examples/monitoring/server.py``) with its metrics
endpoint on a free port, runs three complete clients (``client.py``) against
it, scrapes ``/metrics`` over HTTP the way Prometheus does, prints what the
server's metrics and hooks saw, and stops::

    PYTHONPATH=generated python -m examples.monitoring.main
"""

from __future__ import annotations

import asyncio
import tempfile
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

import quicflow
from quicflow.logs import configure_logging

from . import client as demo_client
from . import server as demo_server

WATCHED = (
    "quicflow_connected_clients",
    "quicflow_connects_total",
    "quicflow_server_handled_total",
    "quicflow_server_handling_seconds_count",
    "quicflow_push_handled_total",
    "quicflow_promises_settled_total",
)


def scrape(url: str) -> list[str]:
    """GET ``url`` (a /metrics page) and return the watched samples, one line each."""
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    lines = []
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in WATCHED and sample.value:
                labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
                lines.append(f"{sample.name}{{{labels}}} {sample.value:g}")
    return lines


async def main() -> None:
    """Run the server, three clients, a scrape, and a report."""
    with tempfile.TemporaryDirectory() as tmp:
        certs = Path(tmp)
        server = demo_server.build(certs, port=0, metrics_port=0)
        events: list[str] = []
        server.hooks.on_connect(lambda info: events.append(f"connect {info.client_id}"))
        server.hooks.on_disconnect(
            lambda info, reason: events.append(f"disconnect {info.client_id} ({reason})")
        )
        await server.start()
        base = f"http://127.0.0.1:{server.metrics_port}"
        print(f"status page: {base}/  (JSON: {base}/api/status)")
        try:
            names = ("kitchen", "hall", "garage")
            snaps = await asyncio.gather(
                *(demo_client.run("127.0.0.1", server.port, certs, name, 10) for name in names)
            )
            for name, snap in zip(names, snaps, strict=True):
                demo_client.report(name, snap)
            await asyncio.sleep(0.1)  # the last disconnects reach the server
            print("\nscraped from /metrics:")
            for line in await asyncio.to_thread(scrape, f"{base}/metrics"):
                print("  " + line)
            snap = server.get_metrics()
            say = snap.handled["/echo.Echo/Say"]
            print("\nserver.get_metrics():")
            print(f"  connects {snap.connects}, disconnects {snap.disconnects}")
            print(f"  Say: {say.started} started, finished {dict(sorted(say.finished.items()))}")
            p50, p99 = say.latency.p50 or 0.0, say.latency.p99 or 0.0
            print(f"  Say handling p50 {p50 * 1000:.2f} ms, p99 {p99 * 1000:.2f} ms")
            print(f"  pushes {snap.made_latency.count}, promises resolved {snap.promises_resolved}")
            print("\nhooks saw:")
            for event in sorted(events):
                print("  " + event)
        finally:
            await server.stop()
    print("\nserver stopped")


if __name__ == "__main__":
    configure_logging("WARNING")
    quicflow.run(main())
