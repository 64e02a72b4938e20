"""The seam between a cluster node and the engine that coordinates it.

`ClusterBackend` is what `ClusterNode` (quicflow/cluster/node.py) needs from
an engine: a registry with compare-and-set epochs, routing a call to
whichever node holds a client, scatter-gather for broadcasts, a node inbox,
and durable holding of sends for absent clients. `NatsBackend`
(quicflow/cluster/nats_backend.py) is the one implementation; a Redis
backend (registry hash + per-node channels + Lua for compare-and-set) would
implement the same methods. The node never sees NATS types.

Errors a backend raises:

* `NotReachable`: nobody holds the client right now (NATS "no responders");
* `HoldFull`: the client already has ``hold_max_count`` sends held, cluster-wide;
* `BackendUnavailable` (an `RpcError` with UNAVAILABLE): the engine cannot
  be reached; callers fail fast, nothing is queued;
* `TimeoutError`: no answer by the deadline.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol

from ..errors import RpcError
from ..sessions import ClientInfo
from ..status import StatusCode
from .codec import BroadcastCall, CallOutcome, NodeAnswer, NodeRecord, Registration, RoutedCall
from .view import ClusterView, Entry

__all__ = ["BackendHandler", "BackendUnavailable", "ClusterBackend", "HoldFull", "NotReachable"]


class NotReachable(Exception):
    """No node holds the client (it is not connected anywhere)."""


class HoldFull(Exception):
    """The client's hold slots are full (``hold_max_count`` sends held for it)."""


class BackendUnavailable(RpcError):
    """The cluster's engine cannot be reached: cluster operations fail fast."""

    def __init__(self, message: str = "the cluster backend is unreachable") -> None:
        super().__init__(StatusCode.UNAVAILABLE, message)


class BackendHandler(Protocol):
    """What a backend calls back into (the node)."""

    async def routed_call(self, client_id: str, call: RoutedCall) -> CallOutcome:
        """Run ``call`` on the local client ``client_id`` and say how it ended."""
        ...

    async def broadcast_call(self, call: BroadcastCall) -> NodeAnswer:
        """Run a broadcast on this node's matching clients."""
        ...

    def node_message(self, data: bytes) -> None:
        """A message arrived in this node's inbox (a kick, a held send's answer)."""
        ...

    def local_infos(self, client_id: str | None) -> list[ClientInfo]:
        """Live snapshots of ``client_id`` if it is here (else none), or of every local
        client (None)."""
        ...

    async def stream_opened(self, client_id: str, data: bytes, reply: str) -> None:
        """Serve a routed stream (``data``: a `StreamOpen`; ``reply``: the caller's
        subject for frames) to its end."""
        ...

    def connection_changed(self, connected: bool) -> None:
        """The engine was lost (False) or is back (True: re-register everything)."""
        ...


class ClusterBackend(Protocol):
    """A cluster engine, seen from one node."""

    view: ClusterView
    """The mirrored registry (kept current by the backend's watches)."""

    @property
    def connected(self) -> bool:
        """True while the engine is reachable."""
        ...

    @property
    def in_sync(self) -> bool:
        """True while connected and `view` holds the registry's current contents."""
        ...

    def now(self) -> float:
        """The clock `view` is fed with."""
        ...

    async def resync(self) -> None:
        """Re-read the registry into a fresh `view` (its updates stopped arriving)."""
        ...

    async def start(self, handler: BackendHandler) -> None:
        """Connect (or keep trying in the background), set up buckets and subscriptions."""
        ...

    async def close(self) -> None:
        """Withdraw this node (its record, its subscriptions) and disconnect."""
        ...

    async def register(
        self, client_id: str, registration: Registration
    ) -> tuple[int, Entry | None]:
        """Make this node the owner of ``client_id`` (compare-and-set, retried on a race).

        Returns the new epoch and the registration it replaced (None if none).
        """
        ...

    async def unregister(self, client_id: str, epoch: int) -> bool:
        """Delete the registration if it is still at ``epoch``; False if it moved on."""
        ...

    async def serve(self, client_id: str) -> None:
        """Start receiving routed calls for ``client_id``."""
        ...

    async def unserve(self, client_id: str) -> None:
        """Stop receiving routed calls for ``client_id``."""
        ...

    async def call(self, client_id: str, call: RoutedCall, timeout: float) -> CallOutcome:
        """Route ``call`` to the node holding ``client_id`` and return its outcome."""
        ...

    async def broadcast(
        self, call: BroadcastCall, expected: set[str], timeout: float
    ) -> list[NodeAnswer]:
        """Ask every other node; return the answers that came by ``timeout`` (or once
        every node in ``expected`` answered)."""
        ...

    async def client_info(self, client_id: str, timeout: float) -> list[ClientInfo]:
        """Ask whichever node holds ``client_id`` for its live snapshot (an empty list:
        that node no longer has it).

        Raises:
            NotReachable: no node holds the client.
            TimeoutError: no answer by ``timeout``.
        """
        ...

    async def all_client_infos(
        self, expected: set[str], timeout: float
    ) -> dict[str, list[ClientInfo]]:
        """Ask every other node for its clients' live snapshots; the answers by node that
        came by ``timeout`` (or once every node in ``expected`` answered)."""
        ...

    def stream_inbox(self, on_data: Callable[[bytes | None], None]) -> tuple[str, str]:
        """A fresh subject of this node's own for one routed stream's frames: returns
        (token, subject); ``on_data`` gets each frame, or None for "no responders"."""
        ...

    def close_stream_inbox(self, token: str) -> None:
        """Stop delivering frames for ``token``."""
        ...

    async def open_stream(self, client_id: str, data: bytes, reply: str) -> None:
        """Send a `StreamOpen` to whichever node holds ``client_id``; its frames (or
        "no responders") come back on ``reply``."""
        ...

    async def send_frame(self, subject: str, data: bytes) -> None:
        """Publish one routed-stream frame (fire and forget; frames are numbered)."""
        ...

    async def send_to_node(self, node_id: str, data: bytes) -> None:
        """Deliver ``data`` to a node's inbox (fire and forget)."""
        ...

    async def refresh(self, record: NodeRecord) -> None:
        """Rewrite this node's liveness record."""
        ...

    async def hold(self, client_id: str, call: RoutedCall, ttl: float) -> int:
        """Keep ``call`` durably for ``ttl`` seconds; return its sequence number.

        Raises:
            HoldFull: ``client_id`` already has its maximum of held sends.
        """
        ...

    async def take_back(self, seq: int) -> bool:
        """Delete one held send that was not delivered; False if it is gone already
        (a node is delivering it, or it expired)."""
        ...

    async def held_for(self, client_id: str) -> list[tuple[int, RoutedCall]]:
        """Sends held for ``client_id``, oldest first."""
        ...

    async def drop_held(self, seq: int) -> None:
        """Delete one held send (delivered)."""
        ...


NodeMessageCallback = Callable[[bytes], None]
RoutedCallHandler = Callable[[str, RoutedCall], Awaitable[CallOutcome]]
