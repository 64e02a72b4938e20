"""Certificate revocation lists for client certificates (docs/security.md "Revocation").

`load_crls` reads ``client_crl_file`` (PEM with one or more ``X509 CRL`` blocks, or one
DER CRL) and checks that every CRL is signed by a CA in ``client_ca_file``.
`RevocationChecker` answers, for a client certificate whose chain already
verified, whether the CRL of its issuer revokes it; it re-reads the file when
the file changes (an ``os.stat`` per handshake), so a new CRL takes effect
without a restart.

Policy (fail closed): with a CRL file configured, a client certificate is
refused when no CRL in the file comes from its issuer (or none of them is
signed by the issuer's key), and when that CRL's ``nextUpdate`` has passed.
A stale CRL may lack the newest revocations, and an expired CRL that quietly
stopped counting would turn revocation off exactly when the process that
refreshes it has failed; refusing makes the failure visible at once.

Only the leaf is checked (the issuer of the client certificate); intermediate
CAs are not checked for revocation. Delta and indirect CRLs are refused at
load time.
"""

from __future__ import annotations

import datetime
import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from ..errors import ConfigError

__all__ = ["CRL_FIELD", "CertificateRevoked", "RevocationChecker", "RevocationList", "load_crls"]

logger = logging.getLogger("quicflow.transport")

CRL_FIELD = "client_crl_file"
"""The configuration field every load error names."""

_PEM_CRL = re.compile(rb"-----BEGIN X509 CRL-----.+?-----END X509 CRL-----", re.DOTALL)


class CertificateRevoked(Exception):
    """A client certificate is revoked, or its revocation cannot be checked (fail closed)."""

    def __init__(self, reason: str, *, revoked: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.revoked = revoked
        """True: the CRL lists the certificate; False: no usable CRL (missing or expired)."""


@dataclass(slots=True)
class RevocationList:
    """One loaded CRL: its issuer, the revoked serial numbers and its validity."""

    crl: x509.CertificateRevocationList
    issuer: x509.Name
    serials: frozenset[int]
    this_update: datetime.datetime
    next_update: datetime.datetime | None
    _signed_by: dict[bytes, bool] = field(default_factory=dict)

    def signed_by(self, issuer: x509.Certificate) -> bool:
        """Whether ``issuer``'s key signed this CRL (cached per key)."""
        spki = issuer.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
        known = self._signed_by.get(spki)
        if known is None:
            try:
                known = self.crl.is_signature_valid(issuer.public_key())  # type: ignore[arg-type]
            except (TypeError, ValueError):  # a key type that cannot sign CRLs
                known = False
            self._signed_by[spki] = known
        return known


def _parse(data: bytes) -> list[x509.CertificateRevocationList]:
    if b"-----BEGIN" in data:
        blocks = _PEM_CRL.findall(data)
        if not blocks:
            raise ConfigError(CRL_FIELD, "no '-----BEGIN X509 CRL-----' block in the PEM file")
        crls = []
        for number, block in enumerate(blocks, 1):
            try:
                crls.append(x509.load_pem_x509_crl(block))
            except ValueError as exc:
                raise ConfigError(CRL_FIELD, f"CRL #{number} is not a valid CRL: {exc}") from None
        return crls
    try:
        return [x509.load_der_x509_crl(data)]
    except ValueError as exc:
        raise ConfigError(CRL_FIELD, f"not a CRL (neither PEM nor DER): {exc}") from None


def _check_supported(crl: x509.CertificateRevocationList, number: int) -> None:
    for ext in crl.extensions:
        value = ext.value
        if isinstance(value, x509.DeltaCRLIndicator):
            raise ConfigError(CRL_FIELD, f"CRL #{number} is a delta CRL (not supported)")
        if isinstance(value, x509.IssuingDistributionPoint) and (
            value.indirect_crl
            or value.only_some_reasons
            or value.only_contains_ca_certs
            or value.only_contains_attribute_certs
        ):
            raise ConfigError(
                CRL_FIELD,
                f"CRL #{number} is a partial or indirect CRL (issuingDistributionPoint); "
                "only complete CRLs from the certificate's issuer are supported",
            )
        if ext.critical and not isinstance(
            value, (x509.IssuingDistributionPoint, x509.CRLNumber, x509.AuthorityKeyIdentifier)
        ):
            raise ConfigError(
                CRL_FIELD,
                f"CRL #{number} has an unsupported critical extension {ext.oid.dotted_string}",
            )


def load_crls(path: str, ca_certificates: Sequence[x509.Certificate]) -> list[RevocationList]:
    """Load every CRL in ``path`` and check each is signed by one of ``ca_certificates``.

    Raises:
        ConfigError: naming ``client_crl_file``: the file cannot be read, holds no CRL or
            a malformed one, a CRL is not signed by a CA in ``client_ca_file``, or uses a
            feature QuicFlow does not support (delta or indirect CRLs).
    """
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        raise ConfigError(CRL_FIELD, f"cannot read {path!r}: {exc.strerror or exc}") from None
    loaded = []
    for number, crl in enumerate(_parse(data), 1):
        _check_supported(crl, number)
        entry = RevocationList(
            crl=crl,
            issuer=crl.issuer,
            serials=frozenset(revoked.serial_number for revoked in crl),
            this_update=crl.last_update_utc,
            next_update=crl.next_update_utc,
        )
        if not any(ca.subject == crl.issuer and entry.signed_by(ca) for ca in ca_certificates):
            raise ConfigError(
                CRL_FIELD,
                f"CRL #{number} (issuer {crl.issuer.rfc4514_string()}) is not signed by "
                "a CA in client_ca_file",
            )
        loaded.append(entry)
    return loaded


def _stamp(path: str) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


class RevocationChecker:
    """The CRLs of ``client_crl_file``, re-read when the file changes.

    Every `check` stats the file (about a microsecond, against ~150 µs for the
    chain check it follows) and reloads it when its modification time, size or
    inode changed. A reload that fails (a half-written or invalid file) keeps
    the CRLs loaded before and logs the error once; replace the file atomically
    (write a temporary file, then rename), as ``quicflow certs --revoke`` does.
    """

    def __init__(self, path: str, ca_certificates: Sequence[x509.Certificate]) -> None:
        self.path = path
        self._cas = list(ca_certificates)
        self._stamp = _stamp(path)
        self._failed_stamp: tuple[int, int, int] | None = None
        self.crls = load_crls(path, self._cas)
        """The CRLs in use."""
        self._warn_expired(datetime.datetime.now(datetime.UTC))

    def _warn_expired(self, now: datetime.datetime) -> None:
        for entry in self.crls:
            if entry.next_update is not None and entry.next_update < now:
                logger.warning(
                    "%s: the CRL of %s expired at %s UTC; client certificates it covers are "
                    "refused until it is replaced",
                    CRL_FIELD,
                    entry.issuer.rfc4514_string(),
                    f"{entry.next_update:%Y-%m-%d %H:%M:%S}",
                )

    def reload(self) -> None:
        """Read the file again now.

        Raises:
            ConfigError: naming ``client_crl_file``; the CRLs loaded before stay in use.
        """
        stamp = _stamp(self.path)
        self.crls = load_crls(self.path, self._cas)
        self._stamp = stamp
        self._failed_stamp = None
        logger.info("%s: reloaded %s (%d CRLs)", CRL_FIELD, self.path, len(self.crls))
        self._warn_expired(datetime.datetime.now(datetime.UTC))

    def _refresh(self) -> None:
        stamp = _stamp(self.path)
        if stamp == self._stamp or (stamp is not None and stamp == self._failed_stamp):
            return
        if stamp is None:
            if self._failed_stamp != (0, 0, 0):
                logger.error("%s: %s is gone; keeping the CRLs loaded before", CRL_FIELD, self.path)
                self._failed_stamp = (0, 0, 0)
            return
        try:
            self.reload()
        except ConfigError as exc:
            logger.error("%s; keeping the CRLs loaded before", exc)
            self._failed_stamp = stamp

    def check(
        self, leaf: x509.Certificate, issuer: x509.Certificate, now: datetime.datetime
    ) -> None:
        """Refuse ``leaf`` (issued by ``issuer``) if revoked or not checkable at ``now``.

        Raises:
            CertificateRevoked: with a one-line reason.
        """
        self._refresh()
        name = issuer.subject.rfc4514_string()
        usable = [e for e in self.crls if e.issuer == issuer.subject and e.signed_by(issuer)]
        if not usable:
            raise CertificateRevoked(
                f"client certificate revocation unknown: no CRL from its issuer ({name}) "
                f"in {CRL_FIELD}",
                revoked=False,
            )
        newest = max(usable, key=lambda e: e.this_update)
        if newest.next_update is not None and newest.next_update < now:
            raise CertificateRevoked(
                f"client certificate revocation unknown: the CRL of {name} expired at "
                f"{newest.next_update:%Y-%m-%d %H:%M:%S} UTC",
                revoked=False,
            )
        if leaf.serial_number in newest.serials:
            revoked = newest.crl.get_revoked_certificate_by_serial_number(leaf.serial_number)
            when = f" at {revoked.revocation_date_utc:%Y-%m-%d %H:%M:%S} UTC" if revoked else ""
            raise CertificateRevoked(
                f"client certificate revoked{when} (serial {leaf.serial_number:x}, CRL of {name})",
                revoked=True,
            )
