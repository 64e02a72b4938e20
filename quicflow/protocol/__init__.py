"""Layer 2, call state: sans-IO state machines that decide what to send.

Theory of operation. `CallProtocol` tracks one call stream from either end
(CALLER or CALLEE): it frames what we send, checks the order of what the peer
sends against the transition tables in ``call.py``, and reports events named
as facts (`HeadersReceived`, `MessageReceived`, `TrailersReceived`,
`EndOfStream`, `ProtocolViolation`). It never touches a socket or a clock;
timers belong to the caller, which passes ``now`` where policy needs it.
Nothing here imports asyncio or aioquic (a test enforces it).
"""

from .call import CallProtocol, Role, SideState
from .events import (
    EndOfStream,
    Event,
    HeadersReceived,
    MessageReceived,
    ProtocolViolation,
    TrailersReceived,
)

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
]
