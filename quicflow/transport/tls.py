"""TLS 1.3 settings for QUIC connections (docs/wire-protocol.md §2, docs/security.md).

QUIC always runs TLS 1.3. The client verifies the server's certificate chain
against ``ca_file`` and its name against ``server_name``; turning that off
takes an option whose name says what it does (``insecure_skip_verify``) and
logs a warning on every connect.

Mutual TLS: aioquic's server can ask for a client certificate but never
checks its chain. `ClientCertificateVerifier` does that with `cryptography`'s
X.509 path validation (chain to the configured CA, validity period, the
clientAuth extended key usage); the transport runs it inside the handshake
(`quicflow.transport.quic`), so a bad certificate fails the handshake with a
TLS alert. With ``client_crl_file`` it also checks the leaf against the CRL of its
issuer, or with ``client_crl_check="chain"`` every certificate of the verified chain
but the trust anchor against the CRL of its own issuer (`quicflow.transport.crl`).
`certificate_client_id` maps a verified certificate to a client id.
"""

from __future__ import annotations

import datetime
import logging
import ssl
from collections import OrderedDict
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any

from aioquic.quic.configuration import QuicConfiguration
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from ..errors import ConfigError
from .crl import CertificateRevoked, RevocationChecker

__all__ = [
    "CLIENT_ID_URI_PREFIX",
    "CLIENT_TICKETS",
    "CertificateRejected",
    "ClientCertificateVerifier",
    "ClientTicketCache",
    "ServerQuicConfiguration",
    "ServerTicketStore",
    "VerifiedClientCertificate",
    "certificate_client_id",
    "client_configuration",
    "load_ca_file",
    "server_configuration",
]

logger = logging.getLogger("quicflow.transport")

CLIENT_ID_URI_PREFIX = "quicflow://client/"
"""A client certificate names its client id as the SAN URI ``quicflow://client/<id>``."""


class CertificateRejected(Exception):
    """A client certificate failed verification; ``expired`` tells why it may be retried."""

    def __init__(self, reason: str, *, expired: bool = False, revoked: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.expired = expired
        self.revoked = revoked
        """True: a CRL in ``client_crl_file`` lists the certificate."""


@dataclass(frozen=True, slots=True)
class VerifiedClientCertificate:
    """A client certificate that chained to the configured CA during the handshake."""

    der: bytes
    """The leaf certificate, DER."""
    client_id: str | None
    """The client id it names (see `certificate_client_id`), or None."""
    subject: str
    """The subject as an RFC 4514 string, for logs."""


def certificate_client_id(cert: x509.Certificate) -> str | None:
    """The client id a certificate names, or None.

    The first subjectAltName URI of the form ``quicflow://client/<id>`` wins;
    without one, the first DNS subjectAltName is the id. The subject's common
    name is never used (RFC 6125 retired it for identities).
    """
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None
    for uri in san.get_values_for_type(x509.UniformResourceIdentifier):
        if uri.startswith(CLIENT_ID_URI_PREFIX) and len(uri) > len(CLIENT_ID_URI_PREFIX):
            return uri[len(CLIENT_ID_URI_PREFIX) :]
    dns = san.get_values_for_type(x509.DNSName)
    return dns[0] if dns else None


def _short(exc: VerificationError) -> str:
    # cryptography appends "(encountered processing <Certificate(...)>)": keep the reason.
    text = str(exc).removeprefix("validation failed: ")
    return text.split(" (encountered processing", 1)[0]


class ClientCertificateVerifier:
    """Checks client certificates against a CA bundle (mutual TLS on the server).

    ``required``: a client without a certificate is refused; otherwise a
    client may send none, but one it sends must verify. Verification uses
    `cryptography.x509.verification` (RFC 5280 path building with the
    web-PKI profile: the chain must end at a CA in ``ca_file``, every
    certificate must be within its validity period, the leaf must allow
    clientAuth, carry a subjectAltName and an authorityKeyIdentifier).
    ``revocation``: also refuse a leaf the CRL of its issuer revokes, or whose
    issuer has no current CRL (`RevocationChecker`, fail closed). ``crl_check``
    "chain" applies that to every certificate of the verified chain except the
    trust anchor (the leaf and each intermediate CA), "leaf" to the leaf only.
    """

    def __init__(
        self,
        ca_certificates: Sequence[x509.Certificate],
        *,
        required: bool,
        revocation: RevocationChecker | None = None,
        crl_check: str = "leaf",
    ) -> None:
        if not ca_certificates:
            raise ValueError("ClientCertificateVerifier needs at least one CA certificate")
        if crl_check not in ("leaf", "chain"):
            raise ValueError(f"crl_check must be 'leaf' or 'chain', got {crl_check!r}")
        self._store = Store(list(ca_certificates))
        self.required = required
        """True: a client must present a certificate."""
        self.revocation = revocation
        """The CRLs checked after the chain (None: no revocation check)."""
        self.crl_check = crl_check
        """"leaf": only the leaf is checked against ``revocation``; "chain": every
        certificate of the verified chain but the trust anchor."""

    @classmethod
    def from_file(
        cls,
        ca_file: str,
        *,
        required: bool,
        crl_file: str | None = None,
        crl_check: str = "leaf",
    ) -> ClientCertificateVerifier:
        """Load the CA bundle (PEM, one or more certificates) and the CRLs of ``crl_file``
        (checked for the leaf or, with ``crl_check="chain"``, the whole chain).

        Raises:
            ConfigError: naming ``client_ca_file`` if it cannot be read or holds no certificate,
                or ``client_crl_file`` (see `quicflow.transport.crl.load_crls`).
        """
        cas = load_ca_file(ca_file)
        revocation = RevocationChecker(crl_file, cas) if crl_file is not None else None
        return cls(cas, required=required, revocation=revocation, crl_check=crl_check)

    def verify(
        self,
        leaf: x509.Certificate,
        intermediates: Sequence[x509.Certificate] = (),
        *,
        now: datetime.datetime | None = None,
    ) -> VerifiedClientCertificate:
        """Verify ``leaf`` (with the ``intermediates`` the client sent) at ``now``.

        Raises:
            CertificateRejected: with a one-line reason.
        """
        when = now or datetime.datetime.now(datetime.UTC)
        if leaf.not_valid_after_utc < when:
            raise CertificateRejected(
                f"client certificate expired at {leaf.not_valid_after_utc:%Y-%m-%d %H:%M:%S} UTC",
                expired=True,
            )
        if leaf.not_valid_before_utc > when:
            raise CertificateRejected(
                "client certificate not valid before "
                f"{leaf.not_valid_before_utc:%Y-%m-%d %H:%M:%S} UTC"
            )
        verifier = PolicyBuilder().store(self._store).time(when).build_client_verifier()
        try:
            chain = verifier.verify(leaf, list(intermediates)).chain
        except VerificationError as exc:
            raise CertificateRejected(f"client certificate not trusted: {_short(exc)}") from None
        if self.revocation is not None:
            try:
                if self.crl_check == "chain":
                    # The chain cryptography verified: leaf first, trust anchor last.
                    self.revocation.check_chain(chain, when)
                else:
                    # chain[0] is the leaf, chain[1] the certificate that issued it.
                    self.revocation.check(leaf, chain[1] if len(chain) > 1 else chain[0], when)
            except CertificateRevoked as exc:
                raise CertificateRejected(exc.reason, revoked=exc.revoked) from None
        return VerifiedClientCertificate(
            der=leaf.public_bytes(Encoding.DER),
            client_id=certificate_client_id(leaf),
            subject=leaf.subject.rfc4514_string(),
        )


def load_ca_file(ca_file: str, *, field: str = "client_ca_file") -> list[x509.Certificate]:
    """The certificates of a PEM CA bundle.

    Raises:
        ConfigError: naming ``field`` if the file cannot be read or holds no certificate
            (a private key, say, or a DER file).
    """
    try:
        with open(ca_file, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        raise ConfigError(field, f"cannot read {ca_file!r}: {exc.strerror or exc}") from None
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError:
        hint = " (it holds a private key)" if b"PRIVATE KEY-----" in data else ""
        raise ConfigError(
            field,
            f"{ca_file!r} holds no PEM certificate{hint}: give the CA certificate "
            "(e.g. ca.pem from `quicflow certs`)",
        ) from None


@dataclass
class ServerQuicConfiguration(QuicConfiguration):
    """An aioquic server configuration that also carries the mutual-TLS policy."""

    client_verifier: ClientCertificateVerifier | None = None
    """None: no client certificate is requested."""


def client_configuration(
    *,
    server_name: str,
    ca_file: str | None,
    insecure_skip_verify: bool = False,
    cert_file: str | None = None,
    key_file: str | None = None,
) -> QuicConfiguration:
    """Build an aioquic client configuration that verifies the server.

    With ``ca_file=None`` the system's default trust store is used. With
    ``cert_file`` the client presents that certificate when the server asks.

    Raises:
        ConfigError: naming ``ca_file`` or ``cert_file`` if a file cannot be loaded.
    """
    config = QuicConfiguration(is_client=True, server_name=server_name)
    if insecure_skip_verify:
        logger.warning(
            "TLS verification is OFF (insecure_skip_verify=True): any server can "
            "impersonate %s. Never use this outside local development.",
            server_name,
        )
        config.verify_mode = ssl.CERT_NONE
    else:
        config.verify_mode = ssl.CERT_REQUIRED
        if ca_file is not None:
            # aioquic reads the file only when the server's certificate arrives, and a bad
            # one then fails inside the event loop: check it here, naming the field.
            load_ca_file(ca_file, field="ca_file")
            try:
                config.load_verify_locations(cafile=ca_file)
            except (OSError, ValueError, ssl.SSLError) as exc:
                raise ConfigError("ca_file", f"cannot load {ca_file!r}: {exc}") from None
    if cert_file is not None:
        _load_chain(config, cert_file, key_file)
    return config


def _load_chain(config: QuicConfiguration, cert_file: str, key_file: str | None) -> None:
    try:
        config.load_cert_chain(cert_file, key_file)
    except OSError as exc:
        field = "key_file" if key_file is not None and exc.filename == key_file else "cert_file"
        raise ConfigError(field, f"cannot load: {exc}") from None
    except (ValueError, TypeError) as exc:
        raise ConfigError("cert_file", f"cannot load certificate or key: {exc}") from None


def server_configuration(
    *,
    cert_file: str,
    key_file: str | None,
    client_ca_file: str | None = None,
    client_cert_mode: str = "none",
    client_crl_file: str | None = None,
    client_crl_check: str = "leaf",
) -> ServerQuicConfiguration:
    """Build an aioquic server configuration presenting ``cert_file``.

    With ``client_cert_mode`` "optional" or "required" the server asks every
    client for a certificate and verifies it against ``client_ca_file``, and
    against the CRLs in ``client_crl_file`` when given (the leaf only, or with
    ``client_crl_check="chain"`` every certificate of the chain but the trust anchor).

    Raises:
        ConfigError: naming the field whose file cannot be loaded.
    """
    config = ServerQuicConfiguration(is_client=False)
    _load_chain(config, cert_file, key_file)
    if client_cert_mode != "none":
        if client_ca_file is None:
            raise ConfigError("client_ca_file", f"needed for client_cert_mode={client_cert_mode!r}")
        config.client_verifier = ClientCertificateVerifier.from_file(
            client_ca_file,
            required=client_cert_mode == "required",
            crl_file=client_crl_file,
            crl_check=client_crl_check,
        )
    return config


# -- TLS session resumption (docs/security.md, "Session resumption and 0-RTT") --


class ServerTicketStore:
    """The session tickets a server issued, so a client that returns one resumes.

    aioquic and qh3 issue opaque random tickets and look them up through a
    callback: this is that lookup. A ticket is used once (`pop`: the resumed
    connection issues a fresh one), and at most ``capacity`` are kept, the
    oldest dropped first; an expired ticket is never returned. Memory: about
    1 KiB per ticket. Never used by a server that asks for client certificates
    (a resumed handshake carries none).
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self._tickets: OrderedDict[bytes, Any] = OrderedDict()
        self.issued = 0
        """Tickets handed to the engine's TLS (one per full or resumed handshake)."""
        self.resumed = 0
        """Handshakes that found their ticket here (the TLS may still refuse it, e.g. a
        cipher suite mismatch, and fall back to a full handshake)."""

    def __len__(self) -> int:
        return len(self._tickets)

    def add(self, ticket: Any) -> None:
        """Keep a ticket the TLS just issued (aioquic's and qh3's ``SessionTicket``)."""
        self.issued += 1
        self._tickets[ticket.ticket] = ticket
        while len(self._tickets) > self.capacity:
            self._tickets.popitem(last=False)

    def pop(self, label: bytes) -> Any | None:
        """The ticket a ClientHello names, removed; None if unknown or expired."""
        ticket = self._tickets.pop(label, None)
        if ticket is None or not ticket.is_valid:
            return None
        self.resumed += 1
        return ticket


class ClientTicketCache:
    """Session tickets a client received, per server and TLS identity, for its next
    connection to that server.

    A key names everything a resumed session stands for (engine, address,
    server name, trust anchors, client certificate): a ticket is only offered
    where a full handshake would have made the same checks. Each ticket is
    taken once; at most ``per_key`` are kept for a server (concurrent connects
    can each resume) and ``capacity`` servers, least recently used dropped.
    """

    def __init__(self, capacity: int = 256, per_key: int = 4) -> None:
        self.capacity = capacity
        self.per_key = per_key
        self._tickets: OrderedDict[Hashable, list[Any]] = OrderedDict()

    def take(self, key: Hashable) -> Any | None:
        """A valid ticket for ``key``, removed from the cache; None if there is none."""
        tickets = self._tickets.get(key)
        while tickets:
            ticket = tickets.pop()
            if ticket.is_valid:
                return ticket
        return None

    def put(self, key: Hashable, ticket: Any) -> None:
        """Keep ``ticket`` (the newest first out) for the next connection under ``key``."""
        tickets = self._tickets.setdefault(key, [])
        self._tickets.move_to_end(key)
        tickets.append(ticket)
        del tickets[: -self.per_key]
        while len(self._tickets) > self.capacity:
            self._tickets.popitem(last=False)

    def clear(self) -> None:
        """Forget every ticket (the next connection to each server is a full handshake)."""
        self._tickets.clear()


CLIENT_TICKETS = ClientTicketCache()
"""The process's client ticket cache: every `Client` with ``tls_resumption`` (the
default) offers and keeps tickets here, so a reconnect, or another client of the
same process for the same server and identity, resumes."""
