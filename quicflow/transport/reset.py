"""QUIC stateless reset (RFC 9000 §10.3) with tokens a restarted server can still make.

A server that lost a connection's state (it restarted) cannot decrypt that
connection's packets; a stateless reset tells the client at its next packet
that the connection is gone, instead of the client finding out when its
heartbeat goes unanswered. The reset ends with the 16-byte token the server
announced for the connection ID the packet was sent to; only the server that
issued the connection ID, or one holding the same key, can make it.

The server derives each token from the connection ID with a key
(``HMAC-SHA256(key, cid)[:16]``). With ``ServerConfig.stateless_reset_key_file``
the key survives restarts, so a restarted server's resets are recognised;
without it the key is random per process (a reset then only helps for
connections the same process forgot). The client checks every short-header
datagram it receives against the token of the connection ID it sends to.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

from ..errors import ConfigError
from .keyfile import read_key_file

__all__ = [
    "KEY_SIZE",
    "RESET_TOKEN_SIZE",
    "ResetLimiter",
    "load_reset_key",
    "reset_token",
    "stateless_reset",
]

KEY_SIZE = 32
"""Bytes of secret in a reset key file (at least; more are used as they are)."""

RESET_TOKEN_SIZE = 16

SMALLEST_RESET = 21
"""RFC 9000 §10.3: a stateless reset is at least 21 bytes (5 unpredictable + the token);
a datagram no larger than that is never answered with one (no reset loops)."""

_LARGEST_RESET = 43  # as large as a short packet with a 20-byte CID could be, at most


def load_reset_key(path: str | None) -> bytes:
    """The stateless reset key in ``path``, creating it (``KEY_SIZE`` random bytes, mode
    0600) if the file does not exist; with None a fresh random key for this process.

    Raises:
        ConfigError: naming ``stateless_reset_key_file`` if it cannot be read or created,
            or holds fewer than ``KEY_SIZE`` bytes.
    """
    if path is None:
        return secrets.token_bytes(KEY_SIZE)
    key = read_key_file(path, KEY_SIZE, "stateless_reset_key_file")
    if len(key) < KEY_SIZE:
        raise ConfigError(
            "stateless_reset_key_file", f"holds {len(key)} bytes, needs at least {KEY_SIZE}"
        )
    return key


def reset_token(key: bytes, cid: bytes) -> bytes:
    """The stateless reset token of connection ID ``cid`` under ``key``."""
    return hmac.new(key, cid, hashlib.sha256).digest()[:RESET_TOKEN_SIZE]


def stateless_reset(key: bytes, cid: bytes, received: int) -> bytes | None:
    """A stateless reset answering a ``received``-byte short-header datagram sent to
    ``cid``: shorter than it (so two endpoints cannot bounce resets forever), at least
    21 bytes, random but for the fixed bit and the token; None if ``received`` is too
    small to answer."""
    size = min(received - 1, _LARGEST_RESET)
    if size < SMALLEST_RESET:
        return None
    head = bytearray(secrets.token_bytes(size - RESET_TOKEN_SIZE))
    head[0] = 0x40 | (head[0] & 0x3F)  # short header: form bit 0, fixed bit 1
    return bytes(head) + reset_token(key, cid)


class ResetLimiter:
    """At most ``rate`` stateless resets per second, with a burst of as many: a flood of
    junk datagrams to the port costs one small datagram each only up to that rate."""

    def __init__(self, rate: float = 1000.0) -> None:
        self.rate = rate
        self._tokens = rate
        self._at: float | None = None

    def allow(self, now: float) -> bool:
        """Whether one more reset may be sent at ``now`` (seconds, any monotonic clock)."""
        if self._at is not None:
            self._tokens = min(self.rate, self._tokens + (now - self._at) * self.rate)
        self._at = now
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True
