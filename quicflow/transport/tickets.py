"""TLS session tickets that survive a server restart (``ServerConfig.tls_ticket_key_file``).

A `ServerTicketStore` remembers each ticket it issued in memory: a restarted
server has forgotten them all, so every client of the previous run makes a full
handshake. `SealedTickets` keeps nothing: the ticket a client receives *is* the
session state the server needs to resume it (cipher suite, resumption secret,
validity), sealed with AES-256-GCM under a key derived from the key file. Any
server process holding the same file opens it, the one that issued it or the
next; one that cannot (another key, a damaged or expired ticket) answers with
a full handshake, never a failure.

The key file holds one or more 32-byte secrets (nothing else: a length that is
not a multiple of 32 is refused): the first seals new tickets, every one opens
them. To rotate, put a new secret in front and keep the old one behind it for
the tickets' lifetime (24 hours, aioquic's and qh3's), then drop it. A missing
file is created with one random secret, mode 0600.

aioquic and qh3 make the ticket label themselves (64 random bytes) and write the
NewSessionTicket message before they tell the application the ticket's secret,
so `seal_tickets` wraps the TLS context's ``handle_message`` for the handshake:
once the message is written and the secret sealed, it writes the message again
with the sealed label in place of the random one (checking first that the
message it replaces is the last thing in the buffer, as both engines leave it;
otherwise the random label stays, and that ticket just will not resume).

A sealed ticket can be presented more than once (nothing remembers it was
used): that is harmless because QuicFlow acts on nothing sent before the
handshake completes (0-RTT included), and completing one needs the resumption
secret, which only the client holds (docs/security.md). The rewritten
NewSessionTicket also drops the early_data extension, so a client holding a
sealed ticket does not offer 0-RTT at all.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct
import time
from collections.abc import Callable, Sequence
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ..errors import ConfigError
from .keyfile import read_key_file

__all__ = [
    "TICKET_KEY_SIZE",
    "OpenedTicket",
    "SealedTickets",
    "load_ticket_keys",
    "seal_tickets",
]

TICKET_KEY_SIZE = 32
"""Bytes of one secret in a ticket key file."""

_FORMAT = 1
_HEAD = struct.Struct("!B4s12s")  # format, key id, nonce
_STATE = struct.Struct("!HqqB")  # cipher suite, valid from, valid until (Unix s), len(secret)
_FIELD = "tls_ticket_key_file"


def load_ticket_keys(path: str) -> list[bytes]:
    """The secrets in the ticket key file ``path``, the sealing one first; the file is
    created with one random secret (mode 0600) if it does not exist.

    Raises:
        ConfigError: naming ``tls_ticket_key_file`` if it cannot be read or created, is
            empty, or its length is not a multiple of 32 bytes.
    """
    data = read_key_file(path, TICKET_KEY_SIZE, _FIELD)
    if not data or len(data) % TICKET_KEY_SIZE:
        raise ConfigError(
            _FIELD,
            f"holds {len(data)} bytes: needs one or more secrets of exactly "
            f"{TICKET_KEY_SIZE} bytes each (the first seals new tickets)",
        )
    return [data[i : i + TICKET_KEY_SIZE] for i in range(0, len(data), TICKET_KEY_SIZE)]


class OpenedTicket:
    """What a server's TLS reads of a ticket it is offered: the cipher suite, the
    resumption secret, and whether it is still valid (``is_valid``)."""

    __slots__ = ("cipher_suite", "not_valid_after", "not_valid_before", "resumption_secret")

    def __init__(
        self, cipher_suite: int, resumption_secret: bytes, valid_from: float, valid_until: float
    ) -> None:
        self.cipher_suite = cipher_suite
        self.resumption_secret = resumption_secret
        self.not_valid_before = valid_from
        self.not_valid_after = valid_until

    @property
    def is_valid(self) -> bool:
        """Checked by the TLS right after `SealedTickets.pop` made it, which checked too."""
        return True


class SealedTickets:
    """Stateless session tickets: each ticket is its session state, sealed under
    ``keys[0]`` (opened with any of ``keys``). The same interface as `ServerTicketStore`
    (``add`` is the TLS's ticket handler, ``pop`` its lookup), and `seal_tickets` puts the
    sealed label in the NewSessionTicket. ``now``: wall-clock seconds (tickets outlive
    processes, so not a monotonic clock)."""

    def __init__(self, keys: Sequence[bytes], *, now: Callable[[], float] = time.time) -> None:
        if not keys or any(len(key) != TICKET_KEY_SIZE for key in keys):
            raise ValueError(f"keys must be one or more secrets of {TICKET_KEY_SIZE} bytes")
        self._openers: dict[bytes, AESGCM] = {}
        for key in keys:
            key_id = hmac.new(key, b"quicflow ticket key id", hashlib.sha256).digest()[:4]
            aead = AESGCM(hmac.new(key, b"quicflow ticket key", hashlib.sha256).digest())
            self._openers.setdefault(key_id, aead)
        self._sealing_id = next(iter(self._openers))
        self._sealer = self._openers[self._sealing_id]
        self._now = now
        self.pending: bytes | None = None
        """The label `add` sealed last, until `seal_tickets` puts it in the message."""
        self.issued = 0
        """Tickets sealed (one per full or resumed handshake)."""
        self.resumed = 0
        """Tickets offered that opened and were valid (the TLS may still refuse one, e.g. a
        cipher suite mismatch, and fall back to a full handshake)."""
        self.refused = 0
        """Tickets offered that did not open (another key, damaged) or had expired."""

    def seal(
        self, cipher_suite: int, secret: bytes, valid_from: float, valid_until: float
    ) -> bytes:
        """The label of a ticket holding this session state."""
        head = _HEAD.pack(_FORMAT, self._sealing_id, os.urandom(12))
        state = _STATE.pack(int(cipher_suite), int(valid_from), int(valid_until), len(secret))
        return head + self._sealer.encrypt(head[5:], state + secret, head[:5])

    def add(self, ticket: Any) -> None:
        """The TLS issued ``ticket`` (aioquic's or qh3's ``SessionTicket``): seal its state;
        the label goes out in place of the engine's random one (`seal_tickets`)."""
        self.issued += 1
        self.pending = ticket.ticket = self.seal(
            ticket.cipher_suite,
            ticket.resumption_secret,
            ticket.not_valid_before.timestamp(),
            ticket.not_valid_after.timestamp(),
        )

    def pop(self, label: bytes) -> OpenedTicket | None:
        """The session state ``label`` seals, or None if it does not open with any of the
        keys or has expired (the TLS then makes a full handshake)."""
        opened = self.open(label)
        if opened is None:
            self.refused += 1
            return None
        self.resumed += 1
        return opened

    def open(self, label: bytes) -> OpenedTicket | None:
        """`pop` without counting."""
        if len(label) < _HEAD.size + _STATE.size + 16:
            return None
        version, key_id, nonce = _HEAD.unpack_from(label)
        aead = self._openers.get(key_id)
        if version != _FORMAT or aead is None:
            return None
        try:
            plain = aead.decrypt(nonce, label[_HEAD.size :], label[:5])
        except InvalidTag:
            return None
        suite, valid_from, valid_until, size = _STATE.unpack_from(plain)
        secret = plain[_STATE.size :]
        now = self._now()
        if len(secret) != size or not valid_from - 60 <= now <= valid_until:
            return None  # the minute: clocks of two hosts sharing the key may differ
        return OpenedTicket(suite, secret, valid_from, valid_until)


def seal_tickets(
    context: Any, tickets: SealedTickets, tls_module: Any, message: Callable[[], Any]
) -> None:
    """Make the server TLS ``context`` (aioquic's or qh3's ``tls.Context``, whose module is
    ``tls_module``) send ``tickets``' sealed label in its NewSessionTicket; ``message``
    answers the NewSessionTicket the context wrote last (its engine module reads it). The
    wrapper lives until the ticket is out (one per connection), then the context's own
    ``handle_message`` is back."""
    original = context.handle_message
    one_rtt = tls_module.Epoch.ONE_RTT

    def handle_message(input_data: bytes, output_buf: Any, **kwargs: Any) -> None:
        out = output_buf[one_rtt]
        start = out.tell()
        tickets.pending = None
        original(input_data, output_buf, **kwargs)
        label = tickets.pending
        if label is None:
            return
        tickets.pending = None
        del context.handle_message  # one ticket per connection: the wrapper is done
        written = message()
        expected = tls_module.Buffer(capacity=out.capacity)
        tls_module.push_new_session_ticket(expected, written)
        if out.tell() != start + expected.tell() or out.data[start:] != expected.data:
            return  # not the layout expected: the random label stays (no resumption)
        written.ticket = label
        # No early_data extension: a client holding the ticket does not offer 0-RTT (it
        # derived 0-RTT keys on both sides for nothing: QuicFlow sends no early data), and
        # a ticket that can be presented more than once allows no 0-RTT replay.
        written.max_early_data_size = None
        out.seek(start)
        tls_module.push_new_session_ticket(out, written)

    context.handle_message = handle_message
