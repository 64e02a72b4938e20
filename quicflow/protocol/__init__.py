"""Layer 2, call state: sans-IO state machines that decide what to send.

Theory of operation. `CallProtocol` tracks one call stream from either end
(CALLER or CALLEE): it frames what we send, checks the order of what the peer
sends against the transition tables in ``call.py``, and reports events named
as facts (`HeadersReceived`, `MessageReceived`, `TrailersReceived`,
`EndOfStream`, `ProtocolViolation`). It never touches a socket or a clock;
timers belong to the caller, which passes ``now`` where policy needs it.
Nothing here imports asyncio or aioquic (a test enforces it).
"""

from .backoff import Backoff
from .call import CallProtocol, Role, SideState
from .control import (
    ControlEvent,
    ControlProtocol,
    ControlState,
    ControlStreamEnded,
    GoAwayReceived,
    HelloReceived,
    PingReceived,
    PongReceived,
    WelcomeReceived,
)
from .dedup import RecentIds, RecentReplies
from .events import (
    EndOfStream,
    Event,
    HeadersReceived,
    MessageReceived,
    ProtocolViolation,
    TrailersReceived,
)
from .heartbeat import (
    HeartbeatEvent,
    HeartbeatMissed,
    HeartbeatMonitor,
    HeartbeatSender,
    HeartbeatTimedOut,
    PingDue,
    SessionExpired,
    negotiate_interval,
)
from .lifecycle import ClientLifecycle, ClientState, LifecycleEvent
from .pending import PendingTable, PromiseTimedOut

__all__ = [
    "CallProtocol",
    "EndOfStream",
    "Event",
    "HeadersReceived",
    "MessageReceived",
    "ProtocolViolation",
    "Role",
    "SideState",
    "TrailersReceived",
    # control stream
    "ControlEvent",
    "ControlProtocol",
    "ControlState",
    "ControlStreamEnded",
    "GoAwayReceived",
    "HelloReceived",
    "PingReceived",
    "PongReceived",
    "WelcomeReceived",
    # heartbeat, backoff, client lifecycle
    "Backoff",
    "ClientLifecycle",
    "ClientState",
    "HeartbeatEvent",
    "HeartbeatMissed",
    "HeartbeatMonitor",
    "HeartbeatSender",
    "HeartbeatTimedOut",
    "LifecycleEvent",
    "PingDue",
    "SessionExpired",
    "negotiate_interval",
    # acked sends and duplicate suppression
    "PendingTable",
    "PromiseTimedOut",
    "RecentIds",
    "RecentReplies",
]
