"""Prometheus exposition of a server's metrics, through ``prometheus-client``.

`ServerCollector` is a custom collector: it holds no Prometheus metric
objects and records nothing itself. At scrape time it reads the server's
`quicflow.metrics.Metrics` (plain ints and fixed-bucket histograms) and
yields metric families; ``prometheus_client.generate_latest`` writes the
text format. Each server gets its own ``CollectorRegistry`` (never the
global one), so several servers in one process do not clash.

Names follow Prometheus conventions: counters end in ``_total``, latency
histograms are in seconds with real buckets (`LATENCY_BUCKETS`), and labels
are bounded (method routes the server serves, ``unknown`` for the rest,
status code names, outcomes); no client-id labels. docs/observability.md
lists every name; a test compares that table with a real scrape.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Protocol

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from .metrics import Histogram, RoleStats
from .status import StatusCode

if TYPE_CHECKING:
    from .cluster.node import ClusterNode
    from .config import ServerConfig
    from .dispatch import Dispatcher
    from .metrics import Metrics, MetricsSnapshot
    from .sessions import ClientInfo, SessionRegistry

__all__ = ["ObservedServer", "ServerCollector", "exposition", "registry_for"]


class ObservedServer(Protocol):
    """What the operators' endpoint (this module and quicflow/http.py) reads of a `Server`:
    public attributes only, so neither module imports server.py."""

    @property
    def config(self) -> ServerConfig: ...

    @property
    def sessions(self) -> SessionRegistry: ...

    @property
    def metrics(self) -> Metrics | None: ...

    @property
    def dispatcher(self) -> Dispatcher: ...

    @property
    def pending_promises(self) -> int: ...

    @property
    def port(self) -> int: ...

    @property
    def routes(self) -> list[str]: ...

    @property
    def active_calls(self) -> int: ...

    @property
    def cluster(self) -> ClusterNode | None: ...

    def list_clients(self) -> list[ClientInfo]: ...

    def get_metrics(self) -> MetricsSnapshot: ...


_CODE_NAMES = [code.name for code in sorted(StatusCode)]


def _bound(value: float) -> str:
    return repr(float(value))


def _buckets(hist: Histogram) -> list[tuple[str, float]]:
    out: list[tuple[str, float]] = []
    seen = 0
    for bound, n in zip(hist.bounds, hist.counts, strict=False):
        seen += n
        out.append((_bound(bound), seen))
    out.append(("+Inf", hist.count))
    return out


def _calls(prefix: str, what: str, role: RoleStats) -> Iterator[Metric]:
    started = CounterMetricFamily(
        f"{prefix}_started", f"Calls {what} started, by method.", labels=["method"]
    )
    handled = CounterMetricFamily(
        f"{prefix}_handled",
        f"Calls {what} finished, by method and status code.",
        labels=["method", "code"],
    )
    seconds = HistogramMetricFamily(
        f"{prefix}_handling_seconds",
        f"Time from start to end of calls {what}, by method.",
        labels=["method"],
    )
    msg_sent = CounterMetricFamily(
        f"{prefix}_messages_sent", f"Messages sent on calls {what}.", labels=["method"]
    )
    msg_received = CounterMetricFamily(
        f"{prefix}_messages_received", f"Messages received on calls {what}.", labels=["method"]
    )
    bytes_sent = CounterMetricFamily(
        f"{prefix}_sent_bytes", f"Message bytes sent on calls {what}.", labels=["method"]
    )
    bytes_received = CounterMetricFamily(
        f"{prefix}_received_bytes", f"Message bytes received on calls {what}.", labels=["method"]
    )
    for stats in role.all():
        method = [stats.method]
        started.add_metric(method, stats.started)
        for i, n in enumerate(stats.codes):
            if n:
                handled.add_metric([stats.method, _CODE_NAMES[i]], n)
        seconds.add_metric(method, _buckets(stats.latency), stats.latency.sum)
        msg_sent.add_metric(method, stats.messages_sent)
        msg_received.add_metric(method, stats.messages_received)
        bytes_sent.add_metric(method, stats.bytes_sent)
        bytes_received.add_metric(method, stats.bytes_received)
    yield from (started, handled, seconds, msg_sent, msg_received, bytes_sent, bytes_received)


class ServerCollector(Collector):
    """Reads one `Server`'s metrics at scrape time (register it on a per-server registry)."""

    def __init__(self, server: ObservedServer) -> None:
        self._server = server

    def collect(self) -> Iterator[Metric]:
        """Yield every QuicFlow metric family of the server (called by the registry)."""
        server = self._server
        metrics = server.metrics
        if metrics is None:
            return
        yield GaugeMetricFamily(
            "quicflow_connected_clients", "Clients connected now.", value=len(server.sessions)
        )
        yield CounterMetricFamily(
            "quicflow_connects", "Client sessions established.", value=metrics.connects
        )
        yield CounterMetricFamily(
            "quicflow_disconnects",
            "Client sessions ended, for any reason.",
            value=metrics.disconnects,
        )
        yield CounterMetricFamily(
            "quicflow_sessions_replaced",
            "Sessions replaced by a newer connection under the same client id (reconnects).",
            value=metrics.reconnects,
        )
        yield CounterMetricFamily(
            "quicflow_heartbeat_timeouts",
            "Sessions evicted for missing heartbeats.",
            value=metrics.heartbeat_timeouts,
        )
        yield CounterMetricFamily(
            "quicflow_rapid_reset_closes",
            "Connections closed for resetting calls beyond max_reset_rate.",
            value=metrics.rapid_reset_closes,
        )
        yield CounterMetricFamily(
            "quicflow_connections_refused",
            "New connections refused at max_connections.",
            value=metrics.connections_refused,
        )
        yield from _calls("quicflow_server", "clients made to the server", metrics.handled)
        yield from _calls("quicflow_push", "the server made to clients", metrics.made)
        yield CounterMetricFamily(
            "quicflow_broadcasts", "Server.broadcast runs.", value=metrics.broadcasts
        )
        deliveries = CounterMetricFamily(
            "quicflow_broadcast_deliveries",
            "Per-client outcomes of broadcasts.",
            labels=["outcome"],
        )
        for outcome, n in metrics.broadcast_deliveries.items():
            deliveries.add_metric([outcome], n)
        cluster = server.cluster
        if cluster is not None:
            yield GaugeMetricFamily(
                "quicflow_cluster_nodes",
                "Live nodes of the cluster, this one included.",
                value=len(cluster.nodes()),
            )
            yield GaugeMetricFamily(
                "quicflow_cluster_connected",
                "1 while this node reaches NATS, else 0.",
                value=1 if cluster.backend.connected else 0,
            )
            traffic = CounterMetricFamily(
                "quicflow_cluster_traffic",
                "Cross-node work, counted apart from local pushes (docs/cluster.md).",
                labels=["event"],
            )
            for event, n in cluster.stats.as_dict().items():
                traffic.add_metric([event], n)
            yield traffic
        yield deliveries
        yield GaugeMetricFamily(
            "quicflow_promises_pending",
            "Acked sends waiting for their ack.",
            value=server.pending_promises,
        )
        settled = CounterMetricFamily(
            "quicflow_promises_settled",
            "Acked sends settled, by outcome.",
            labels=["outcome"],
        )
        settled.add_metric(["resolved"], metrics.promises_resolved)
        settled.add_metric(["failed"], metrics.promises_failed)
        settled.add_metric(["timed_out"], metrics.promises_timed_out)
        yield settled
        yield GaugeMetricFamily(
            "quicflow_dispatcher_queue_depth",
            "Untyped messages waiting for a dispatcher worker.",
            value=server.dispatcher.queue_depth,
        )
        yield GaugeMetricFamily(
            "quicflow_dispatcher_busy_workers",
            "Dispatcher workers running a handler.",
            value=server.dispatcher.busy_workers,
        )


def registry_for(server: ObservedServer) -> CollectorRegistry:
    """A fresh registry holding only ``server``'s collector."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ServerCollector(server))
    return registry


def exposition(registry: CollectorRegistry) -> bytes:
    """The registry in Prometheus' text format (``prometheus_client.generate_latest``)."""
    return generate_latest(registry)
