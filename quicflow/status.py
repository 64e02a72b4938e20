"""gRPC's canonical status codes, with the same names and numbers.

QuicFlow carries these codes in the trailer frame (docs/wire-protocol.md §5),
so a status means exactly what it means in gRPC.
"""

from __future__ import annotations

import enum

__all__ = ["StatusCode"]


class StatusCode(enum.IntEnum):
    """A call's outcome; `OK` is the only success."""

    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15
    UNAUTHENTICATED = 16

    @classmethod
    def from_wire(cls, value: int) -> StatusCode:
        """Map a code read off the wire; unknown numbers become UNKNOWN (as gRPC does)."""
        # A dict lookup, not cls(value): the Enum call is two Python frames per call.
        return cls._value2member_map_.get(value, cls.UNKNOWN)  # type: ignore[return-value]
