"""NATS names for one cluster: subjects, buckets, the held-message stream (sans-IO).

Client ids and node ids are arbitrary strings; NATS subjects split on ``.``,
treat ``*`` and ``>`` as wildcards and forbid whitespace, and KV keys allow
only ``A-Z a-z 0-9 - _ = . /``. So every id is *encoded* into one token
before it reaches NATS: ``A-Z a-z 0-9 - _`` stay as they are, every other
UTF-8 byte becomes ``=`` and two upper-case hex digits (``=`` itself too),
and the empty string becomes ``=``. The encoding is injective and readable
(``sensor-1`` stays ``sensor-1``; ``a.b c`` becomes ``a=2Eb=20c``), and its
output is valid both as a subject token and as a KV key.

========================================  ============================================
``qf.{cluster}.c.{client}``               routed calls to one client (request/reply);
                                          the owning node subscribes (queue group)
``qf.{cluster}.n.{node}``                 one node's inbox: kicks, replies to held sends
``qf.{cluster}.all``                      broadcast requests (scatter-gather)
``qf.{cluster}.h.{client}``               held sends for an absent client (stream)
KV ``qf_{cluster}_clients``               client -> registration; revision = epoch
KV ``qf_{cluster}_nodes``                 node -> liveness record, refreshed (TTL)
stream ``qf_{cluster}_held``              held sends, per-message TTL = their deadline
========================================  ============================================
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["Names", "decode_token", "encode_token", "valid_cluster_name"]

_PLAIN = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
_CLUSTER_NAME = re.compile(r"^[A-Za-z0-9_-]{1,32}$")
_ESCAPE = re.compile(r"=([0-9A-F]{2})")


def encode_token(text: str) -> str:
    """``text`` as one NATS subject token and KV key (see the module docstring)."""
    if not text:
        return "="
    raw = text.encode("utf-8")
    if all(b in _PLAIN for b in raw):
        return text
    return "".join(chr(b) if b in _PLAIN else f"={b:02X}" for b in raw)


def decode_token(token: str) -> str:
    """The id `encode_token` made ``token`` from.

    Raises:
        ValueError: ``token`` is not an output of `encode_token`.
    """
    if token == "=":
        return ""
    out = bytearray()
    i = 0
    while i < len(token):
        ch = token[i]
        if ch == "=":
            match = _ESCAPE.match(token, i)
            if match is None:
                raise ValueError(f"bad escape in token {token!r} at {i}")
            byte = int(match.group(1), 16)
            if byte in _PLAIN:
                raise ValueError(f"token {token!r} escapes a plain character at {i}")
            out.append(byte)
            i += 3
        elif ord(ch) < 128 and ord(ch) in _PLAIN:
            out.append(ord(ch))
            i += 1
        else:
            raise ValueError(f"character {ch!r} cannot appear in a token")
    try:
        return out.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"token {token!r} is not UTF-8 once decoded") from exc


def valid_cluster_name(name: str) -> bool:
    """True if ``name`` can name a cluster: 1-32 of ``A-Z a-z 0-9 - _``."""
    return bool(_CLUSTER_NAME.match(name))


@dataclass(frozen=True, slots=True)
class Names:
    """Every NATS subject, bucket and stream name of one cluster."""

    cluster: str

    def __post_init__(self) -> None:
        if not valid_cluster_name(self.cluster):
            raise ValueError(f"cluster name must be 1-32 of A-Z a-z 0-9 - _, got {self.cluster!r}")

    def client(self, client_id: str) -> str:
        """Where routed calls to ``client_id`` go."""
        return f"qf.{self.cluster}.c.{encode_token(client_id)}"

    def node(self, node_id: str) -> str:
        """One node's inbox."""
        return f"qf.{self.cluster}.n.{encode_token(node_id)}"

    @property
    def all(self) -> str:
        """Broadcast requests."""
        return f"qf.{self.cluster}.all"

    def held(self, client_id: str) -> str:
        """Held sends for ``client_id`` (a subject of the held stream)."""
        return f"qf.{self.cluster}.h.{encode_token(client_id)}"

    @property
    def held_subjects(self) -> str:
        """The held stream's subject filter."""
        return f"qf.{self.cluster}.h.>"

    @property
    def clients_bucket(self) -> str:
        """KV bucket: client registrations."""
        return f"qf_{self.cluster}_clients"

    @property
    def nodes_bucket(self) -> str:
        """KV bucket: node liveness."""
        return f"qf_{self.cluster}_nodes"

    @property
    def held_stream(self) -> str:
        """Stream: held sends."""
        return f"qf_{self.cluster}_held"
