"""Who may connect, and as which client id.

After the TLS handshake a client sends HELLO with the client id it claims,
its credentials (metadata such as ``authorization``) and labels. The
server's *authenticator* decides: it returns the client id to accept, or
raises `RpcError` (UNAUTHENTICATED, PERMISSION_DENIED) to refuse; the
connection is then closed with that reason. Any callable with this shape
works, plain or ``async``::

    def authenticator(hello: HelloInfo, peer: PeerInfo) -> str: ...

`TokenAuthenticator` checks bearer tokens; `CertificateAuthenticator` binds
the client id to the verified client certificate (mutual TLS) and may wrap a
token check; `allow_all` (the default) accepts every claimed id and warns
once, for development. `MethodAuthorizer` is a server interceptor that says
which client ids (or roles) may call which methods. docs/security.md has the
whole picture.
"""

from __future__ import annotations

import fnmatch
import inspect
import logging
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from .errors import RpcError
from .interceptors import ServerInterceptor
from .metadata import Metadata
from .status import StatusCode

if TYPE_CHECKING:
    from .context import ServicerContext

__all__ = [
    "Authenticator",
    "CertificateAuthenticator",
    "HelloInfo",
    "MethodAuthorizer",
    "PeerInfo",
    "TokenAuthenticator",
    "allow_all",
]

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
    """The client's TLS certificate (DER) if it presented one; with mutual TLS on, only a
    certificate that verified against ``ServerConfig.client_ca_file`` gets here."""
    certificate_client_id: str | None = None
    """The client id that verified certificate names (SAN URI ``quicflow://client/<id>``,
    else its first DNS SAN), or None."""


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


class CertificateAuthenticator:
    """Accept clients by their verified TLS client certificate (mutual TLS).

    Needs ``ServerConfig(client_ca_file=..., client_cert_mode="required")``
    (or "optional"): the transport verifies the chain, this binds the session
    to the id the certificate names (`PeerInfo.certificate_client_id`). A
    HELLO that claims another id is refused with PERMISSION_DENIED (like a
    token used for another id); a client without a usable certificate with
    UNAUTHENTICATED. An empty claimed id gets the certificate's id.

    ``also`` adds a second check, e.g. a `TokenAuthenticator`: it sees the
    HELLO with the certificate's id and must accept that same id, so both the
    certificate and the token have to fit::

        ServerConfig(..., client_ca_file="certs/ca.pem", client_cert_mode="required",
                     authenticator=CertificateAuthenticator(also=TokenAuthenticator(tokens)))
    """

    def __init__(self, also: Authenticator | None = None) -> None:
        if also is not None and not callable(also):
            raise TypeError("also must be an authenticator: (hello, peer) -> client id")
        self._also = also

    async def __call__(self, hello: HelloInfo, peer: PeerInfo) -> str:
        """Return the certificate's client id, or raise RpcError to refuse."""
        bound = peer.certificate_client_id
        if peer.certificate is None:
            raise RpcError(StatusCode.UNAUTHENTICATED, "a client certificate is required")
        if not bound:
            raise RpcError(
                StatusCode.UNAUTHENTICATED,
                "the client certificate names no client id "
                "(expected a SAN URI quicflow://client/<id> or a DNS SAN)",
            )
        if hello.client_id and hello.client_id != bound:
            raise RpcError(
                StatusCode.PERMISSION_DENIED,
                f"the client certificate is for {bound!r}, not {hello.client_id!r}",
            )
        if self._also is not None:
            result = self._also(replace(hello, client_id=bound), peer)
            accepted = await result if inspect.isawaitable(result) else result
            if accepted != bound:
                raise RpcError(
                    StatusCode.PERMISSION_DENIED,
                    f"credentials are for {accepted!r}, the certificate for {bound!r}",
                )
        return bound


class MethodAuthorizer(ServerInterceptor):
    """A server interceptor that allows each method only to some client ids or roles.

    ``rules`` maps route patterns (``fnmatch`` style, matched against
    ``/package.Service/Method``) to who may call them: client ids,
    ``"role:<name>"`` for every client ``roles`` gives that role, or ``"*"``
    for any authenticated client. The first pattern that matches decides
    (in the order given); a route no pattern matches is refused unless
    ``default_allow``. Refusals are PERMISSION_DENIED and the handler does
    not run. Unauthenticated peers never get here: the server refuses their
    calls with UNAUTHENTICATED first.

    Example::

        MethodAuthorizer(
            {"/admin.Admin/*": ["role:admin"], "/echo.Echo/*": ["*"]},
            roles={"ops-1": ["admin"]},
        )
    """

    def __init__(
        self,
        rules: Mapping[str, Iterable[str]] | Sequence[tuple[str, Iterable[str]]],
        *,
        roles: Mapping[str, Iterable[str]] | None = None,
        default_allow: bool = False,
    ) -> None:
        items = list(rules.items()) if isinstance(rules, Mapping) else list(rules)
        self._rules: list[tuple[str, frozenset[str]]] = []
        for pattern, allowed in items:
            if not isinstance(pattern, str) or not pattern:
                raise ValueError(
                    f"MethodAuthorizer: a rule pattern must be a string, got {pattern!r}"
                )
            if isinstance(allowed, str):
                raise ValueError(
                    f"MethodAuthorizer: rule {pattern!r} needs a list of principals, "
                    f"not the string {allowed!r}"
                )
            self._rules.append((pattern, frozenset(allowed)))
        self._roles = {cid: frozenset(r) for cid, r in (roles or {}).items()}
        self._default_allow = default_allow

    def allows(self, client_id: str, method: str) -> bool:
        """True if ``client_id`` may call ``method`` under these rules."""
        for pattern, allowed in self._rules:
            if fnmatch.fnmatchcase(method, pattern):
                if "*" in allowed or client_id in allowed:
                    return True
                return any(f"role:{role}" in allowed for role in self._roles.get(client_id, ()))
        return self._default_allow

    async def on_start(self, context: ServicerContext) -> None:
        """Refuse the call with PERMISSION_DENIED unless the caller is allowed."""
        if not self.allows(context.client_id, context.method):
            raise RpcError(
                StatusCode.PERMISSION_DENIED,
                f"client {context.client_id!r} may not call {context.method}",
            )
