"""Duplicate suppression, sans-IO: has this message id been seen recently?

A sender that holds messages across a reconnect, or retries an acked send
whose ack was lost, may deliver the same message twice. The receiver asks
`RecentIds.seen` before running a handler and skips the handler (but still
acks) when the answer is True, so the handler runs once per message id:
at-least-once delivery becomes exactly-once *handling*, within the window
described here.

The rules:

- ``seen(message_id, now)`` is True when ``message_id`` was recorded less
  than ``max_age`` seconds before ``now``; otherwise it records the id at
  ``now`` and returns False. A duplicate does not refresh the record: the
  window runs from the first sighting, so a sender retrying forever cannot
  keep an id alive forever.
- At most ``max_size`` ids are remembered; recording one more forgets the
  oldest. An id is also forgotten once it is ``max_age`` seconds old.
- Forgotten ids count as new. The guarantee therefore holds only for
  duplicates that arrive within ``max_age`` of the original *and* before
  ``max_size`` newer ids pushed it out; senders must give up retrying well
  inside that window (their hold limits are bounded by count and age too).

Ids are kept in insertion order, which is also time order (``now`` is taken
as non-decreasing; an earlier ``now`` is treated as the latest one seen), so
eviction only ever looks at the oldest end: O(1) amortized per call.

`RecentReplies` keeps the same window over the *replies* a callee sent, by
key: the runtime's reply cache (quicflow/incoming.py answers a repeated acked
send from it without running the handler again).

Example::

    recent = RecentIds(max_size=100_000, max_age=600.0)
    recent.seen(message_id, now=0.0)     # False: run the handler
    recent.seen(message_id, now=5.0)     # True: a retry, skip the handler
    recent.seen(message_id, now=600.0)   # False: too old to remember
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Generic, TypeVar

from .numbers import finite, positive_seconds

__all__ = ["RecentIds", "RecentReplies"]

V = TypeVar("V")


class _RecentWindow(Generic[V]):
    """Keys recorded in the last ``max_age`` seconds, at most ``max_size``, oldest first,
    each with a value: the one eviction policy `RecentIds` and `RecentReplies` share."""

    __slots__ = ("_entries", "_latest", "max_age", "max_size")

    def __init__(self, max_size: int, max_age: float) -> None:
        if isinstance(max_size, bool) or not isinstance(max_size, int) or max_size < 1:
            raise ValueError(f"max_size must be an int of at least 1, got {max_size!r}")
        max_age = positive_seconds("max_age", max_age)
        self.max_size: int = max_size
        """Most keys remembered at once."""
        self.max_age: float = float(max_age)
        """Seconds a key is remembered after it was recorded."""
        self._entries: OrderedDict[bytes, tuple[float, V]] = OrderedDict()
        self._latest = -math.inf

    def __len__(self) -> int:
        """Keys remembered right now (expired ones may linger until the next call)."""
        return len(self._entries)

    def _advance(self, now: float) -> float:
        """Take ``now`` (non-decreasing) and forget the keys ``max_age`` old or older."""
        now = max(finite("now", now), self._latest)  # keep the dict in time order
        self._latest = now
        entries = self._entries
        cutoff = now - self.max_age
        # Forget keys that are max_age old or older; the oldest come first.
        while entries:
            oldest = next(iter(entries.values()))[0]
            if oldest > cutoff:
                break
            entries.popitem(last=False)
        return now

    def _record(self, key: bytes, value: V, now: float) -> None:
        entries = self._entries
        entries[key] = (now, value)
        entries.move_to_end(key)
        if len(entries) > self.max_size:
            entries.popitem(last=False)


class RecentIds(_RecentWindow[None]):
    """Message ids recorded in the last ``max_age`` seconds, at most ``max_size`` of them.

    See the module docstring for the exact rules.

    Args:
        max_size: most ids remembered (an int of at least 1).
        max_age: seconds an id is remembered (a positive finite number).

    Raises:
        ValueError: an argument is out of range; the message names it.

    Example::

        recent = RecentIds(max_size=2, max_age=60.0)
        recent.seen(b"a", 0.0), recent.seen(b"b", 1.0), recent.seen(b"c", 2.0)
        recent.seen(b"a", 3.0)    # False: pushed out by size
        recent.seen(b"c", 61.9)   # True: recorded 59.9 s ago
    """

    __slots__ = ()

    def __init__(self, max_size: int = 100_000, max_age: float = 600.0) -> None:
        super().__init__(max_size, max_age)

    def __repr__(self) -> str:
        return f"<RecentIds {len(self)}/{self.max_size} within {self.max_age:g} s>"

    def seen(self, message_id: bytes, now: float) -> bool:
        """True if ``message_id`` is a duplicate; else record it at ``now`` and return False.

        Args:
            message_id: the message's id.
            now: the current time, seconds (non-decreasing across calls).

        Raises:
            ValueError: ``now`` is not a finite number.
        """
        now = self._advance(now)
        if message_id in self._entries:
            return True
        self._record(message_id, None, now)
        return False


class RecentReplies(_RecentWindow[bytes]):
    """The replies a callee sent in the last ``max_age`` seconds, by key (a reply cache).

    A repeated message (its ack was lost and the sender retried under the same
    message id) gets the recorded reply again without running its handler a
    second time. The window rules are `RecentIds`' (module docstring); a key
    recorded again replaces its reply and restarts its window.

    Example::

        replies = RecentReplies(max_size=10_000, max_age=600.0)
        replies.get(b"id", now=0.0)              # None: run the handler
        replies.put(b"id", b"reply", now=0.5)
        replies.get(b"id", now=5.0)              # b"reply": answer the retry from here
    """

    __slots__ = ()

    def __init__(self, max_size: int = 10_000, max_age: float = 600.0) -> None:
        super().__init__(max_size, max_age)

    def __repr__(self) -> str:
        return f"<RecentReplies {len(self)}/{self.max_size} within {self.max_age:g} s>"

    def get(self, key: bytes, now: float) -> bytes | None:
        """The reply recorded under ``key`` less than ``max_age`` before ``now``, or None."""
        self._advance(now)
        entry = self._entries.get(key)
        return None if entry is None else entry[1]

    def put(self, key: bytes, reply: bytes, now: float) -> None:
        """Record ``reply`` under ``key`` at ``now``."""
        self._record(key, reply, self._advance(now))
