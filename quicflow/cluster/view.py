"""A node's picture of the cluster, and the rules it decides by (sans-IO).

Every node mirrors both KV buckets through watches. `ClusterView` takes
those updates with ``now`` (the node's monotonic clock) and answers:

* which nodes are **live**: a node is live while its record was rewritten
  within ``node_ttl`` seconds of ``now`` (each node rewrites its own every
  ``node_refresh``). A node seen by no update for ``node_ttl`` is dead, even
  if the bucket's own TTL has not removed it yet;
* which clients are **connected** cluster-wide: registrations whose node is
  live (so a dead node's clients leave every listing within ``node_ttl``);
* which registrations a dead node left behind (`stale_registrations`), for
  a compare-and-delete by revision.

Epochs. The KV revision of a client's key is its session *epoch*. A node
registers with compare-and-set against the revision it read, so of two
racing registrations exactly one wins, and the loser re-reads and tries
again (the newer connection wins, as on one node). Unregister is a
compare-and-delete with the node's own epoch: if the client has registered
again since (anywhere), the revision moved and the delete is refused, so a
late unregister never deletes the newer registration. A kick names the
epoch it supersedes; a node closes its session only if its own epoch is not
newer (`kick_applies`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from .codec import NodeRecord, Registration

__all__ = ["ClusterView", "Entry", "kick_applies"]


def kick_applies(local_epoch: int | None, superseded_epoch: int) -> bool:
    """True if a kick that supersedes ``superseded_epoch`` must close a local session
    registered at ``local_epoch`` (None: registered while NATS was away, so older)."""
    return local_epoch is None or local_epoch <= superseded_epoch


@dataclass(frozen=True, slots=True)
class Entry:
    """A registration with its epoch (the KV revision)."""

    client_id: str
    epoch: int
    registration: Registration


class ClusterView:
    """The mirrored buckets: node liveness and client registrations."""

    def __init__(self, node_ttl: float) -> None:
        self.node_ttl = node_ttl
        self._nodes: dict[str, tuple[NodeRecord, float]] = {}
        self._clients: dict[str, Entry] = {}

    # -- updates (from the watches) --

    def node_seen(self, record: NodeRecord, now: float) -> None:
        """A node's record was written (created or refreshed) at ``now``."""
        self._nodes[record.node_id] = (record, now)

    def node_gone(self, node_id: str) -> None:
        """A node's record was deleted (it stopped cleanly, or expired)."""
        self._nodes.pop(node_id, None)

    def client_put(self, client_id: str, epoch: int, registration: Registration) -> None:
        """A registration was written; an older revision than the one known is ignored."""
        known = self._clients.get(client_id)
        if known is None or known.epoch < epoch:
            self._clients[client_id] = Entry(client_id, epoch, registration)

    def client_deleted(self, client_id: str, epoch: int) -> None:
        """The key was deleted at revision ``epoch``: forget it unless a newer one is known."""
        known = self._clients.get(client_id)
        if known is not None and known.epoch < epoch:
            del self._clients[client_id]

    def clear(self) -> None:
        """Forget everything (before a full re-read after NATS came back)."""
        self._nodes.clear()
        self._clients.clear()

    # -- questions --

    def live_nodes(self, now: float) -> dict[str, NodeRecord]:
        """Nodes whose record was seen within ``node_ttl`` of ``now``."""
        return {
            nid: record for nid, (record, seen) in self._nodes.items() if now - seen < self.node_ttl
        }

    def is_live(self, node_id: str, now: float) -> bool:
        """True if ``node_id`` is live at ``now``."""
        seen = self._nodes.get(node_id)
        return seen is not None and now - seen[1] < self.node_ttl

    def next_expiry(self, now: float) -> float | None:
        """When the next live node turns dead if not refreshed (None: no live node)."""
        times = [seen + self.node_ttl for _, seen in self._nodes.values()]
        future = [t for t in times if t > now]
        return min(future) if future else None

    def clients(self, now: float) -> list[Entry]:
        """Registrations on live nodes, sorted by client id."""
        return sorted(
            (e for e in self._clients.values() if self.is_live(e.registration.node_id, now)),
            key=lambda e: e.client_id,
        )

    def get(self, client_id: str) -> Entry | None:
        """The client's registration, whether its node is live or not."""
        return self._clients.get(client_id)

    def lookup(self, client_id: str, now: float) -> Entry | None:
        """The client's registration if its node is live."""
        entry = self._clients.get(client_id)
        if entry is None or not self.is_live(entry.registration.node_id, now):
            return None
        return entry

    def stale_registrations(self, now: float) -> list[Entry]:
        """Registrations whose node is not live: to compare-and-delete."""
        return [e for e in self._clients.values() if not self.is_live(e.registration.node_id, now)]

    def clients_per_node(self, now: float) -> dict[str, int]:
        """Registered clients per live node (zero for a live node with none)."""
        counts = dict.fromkeys(self.live_nodes(now), 0)
        for entry in self._clients.values():
            node = entry.registration.node_id
            if node in counts:
                counts[node] += 1
        return counts

    def clients_of(self, node_id: str) -> list[str]:
        """Client ids registered on ``node_id`` (live or not)."""
        return sorted(
            e.client_id for e in self._clients.values() if e.registration.node_id == node_id
        )


@dataclass(frozen=True, slots=True)
class NodeOutcome:
    """How one node fared in a broadcast."""

    node_id: str
    answered: bool
    clients: int
    """Clients it reported (answered) or had registered (did not answer)."""


def missing_nodes(expected: Mapping[str, int], answered: Iterable[str]) -> dict[str, int]:
    """Nodes in ``expected`` (node -> registered clients) absent from ``answered``."""
    seen = set(answered)
    return {node: count for node, count in expected.items() if node not in seen}
