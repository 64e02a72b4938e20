"""Who may connect, and as which client id.

After the TLS handshake a client sends HELLO with the client id it claims,
its credentials (metadata such as ``authorization``) and labels. The
server's *authenticator* decides: it returns the client id to accept, or
raises `RpcError` (UNAUTHENTICATED, PERMISSION_DENIED) to refuse; the
connection is then closed with that reason. Any callable with this shape
works, plain or ``async``::

    def authenticator(hello: HelloInfo, peer: PeerInfo) -> str: ...

`TokenAuthenticator` checks bearer tokens; `allow_all` (the default) accepts
every claimed id and warns once, for development.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field

from .errors import RpcError
from .metadata import Metadata
from .status import StatusCode

__all__ = ["Authenticator", "HelloInfo", "PeerInfo", "TokenAuthenticator", "allow_all"]

logger = logging.getLogger("quicflow.auth")


@dataclass(frozen=True, slots=True)
class HelloInfo:
    """What a client said in its HELLO."""

    client_id: str
    """The id the client claims (may be empty: the server then assigns one)."""
    metadata: Metadata
    """Credentials and other connection metadata, e.g. ``("authorization", "Bearer …")``."""
    labels: Mapping[str, str] = field(default_factory=dict)
    protocol_version: int = 1


@dataclass(frozen=True, slots=True)
class PeerInfo:
    """What the transport knows about the peer."""

    address: str
    """``host:port``."""
    certificate: bytes | None = None
    """The peer's TLS certificate (DER), if it presented one."""


Authenticator = Callable[[HelloInfo, PeerInfo], "str | Awaitable[str]"]
"""Returns the accepted client id, or raises `RpcError` to refuse."""


_warned = False


def allow_all(hello: HelloInfo, peer: PeerInfo) -> str:
    """Accept every client under the id it claims (or a fresh one). Development only."""
    global _warned
    if not _warned:
        _warned = True
        logger.warning(
            "no authenticator configured: every client may connect and claim any client id "
            "(set ServerConfig.authenticator, e.g. TokenAuthenticator, in production)"
        )
    return hello.client_id or f"anon-{uuid.uuid4().hex[:12]}"


class TokenAuthenticator:
    """Accept clients that present a known bearer token.

    ``tokens`` maps each token to the client id it may use, or to None when
    any claimed id is fine. The token is read from the ``authorization``
    metadata (``Bearer <token>`` or the bare token).

    Example::

        ServerConfig(..., authenticator=TokenAuthenticator({"s3cret": "sensor-1"}))
    """

    def __init__(self, tokens: Mapping[str, str | None]) -> None:
        if not tokens:
            raise ValueError("TokenAuthenticator needs at least one token")
        self._tokens = dict(tokens)

    def __call__(self, hello: HelloInfo, peer: PeerInfo) -> str:
        """Return the accepted client id, or raise RpcError(UNAUTHENTICATED)."""
        presented = None
        for key, value in hello.metadata:
            if key == "authorization" and isinstance(value, str):
                presented = value[7:] if value.lower().startswith("bearer ") else value
                break
        if presented is None or presented not in self._tokens:
            raise RpcError(StatusCode.UNAUTHENTICATED, "missing or unknown token")
        bound = self._tokens[presented]
        if bound is None:
            return hello.client_id or f"anon-{uuid.uuid4().hex[:12]}"
        if hello.client_id and hello.client_id != bound:
            raise RpcError(
                StatusCode.PERMISSION_DENIED,
                f"this token may not be used as client id {hello.client_id!r}",
            )
        return bound
