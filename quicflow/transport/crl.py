"""Certificate revocation lists for client certificates (docs/security.md "Revocation").

`load_crls` reads ``client_crl_file`` (PEM with one or more ``X509 CRL`` blocks, or one
DER CRL) and checks the signature of every CRL whose issuer is a CA in
``client_ca_file``. `RevocationChecker` answers, for a client certificate whose
chain already verified, whether the CRL of its issuer revokes it; it re-reads
the file when the file changes (an ``os.stat`` per handshake), so a new CRL
takes effect without a restart.

Policy (fail closed): with a CRL file configured, a certificate is refused
when no CRL in the file comes from its issuer (or none of them is signed by
the issuer's key), and when that CRL's ``nextUpdate`` has passed. A stale CRL
may lack the newest revocations, and an expired CRL that quietly stopped
counting would turn revocation off exactly when the process that refreshes it
has failed; refusing makes the failure visible at once.

Scope (``client_crl_check``): "leaf" checks only the client certificate, against
the CRL of its issuer. "chain" (like OpenSSL's ``CRL_CHECK_ALL``) checks every
certificate of the verified chain except the trust anchor: the leaf and each
intermediate CA, each against a CRL from its own issuer, with the same policy
(`RevocationChecker.check_chain`). The chain is the one `cryptography`'s path
validation built, so only certificates that chain to ``client_ca_file`` are
ever used as CRL signers.

CRLs of intermediate CAs: an intermediate that only arrives in the client's
handshake is not in ``client_ca_file``, so its CRL cannot be verified at load
time. We defer that check instead of requiring every intermediate in the CA
file (which would also make it a trust anchor, exempt from the chain check):
a CRL whose issuer *name* is a CA in ``client_ca_file`` must be signed by that
CA at load time (a ConfigError otherwise, as before); a CRL from any other
issuer is loaded unverified and used at a handshake only if the key of the
issuing certificate in the verified chain signed it (`RevocationList.signed_by`,
which every check calls). A forged or misnamed CRL therefore never counts; it
only fails closed ("no CRL from its issuer"). The price is that a CRL from an
unknown issuer (say, a wrong file) is no longer caught when the server starts;
it is logged (INFO) at each load instead.

Delta and indirect CRLs are refused at load time.
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
    """Load every CRL in ``path``; one whose issuer is in ``ca_certificates`` must be signed by it.

    A CRL from an issuer that is not in ``ca_certificates`` (an intermediate CA the
    client sends) is loaded with its signature unchecked; `RevocationChecker` uses it
    only if the issuer certificate of the verified chain signed it (module docstring).

    Raises:
        ConfigError: naming ``client_crl_file``: the file cannot be read, holds no CRL or
            a malformed one, a CRL naming a CA in ``client_ca_file`` is not signed by it,
            or a CRL uses a feature QuicFlow does not support (delta or indirect CRLs).
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
        named = [ca for ca in ca_certificates if ca.subject == crl.issuer]
        if not named:
            logger.info(
                "%s: CRL #%d (issuer %s) names no CA in client_ca_file; its signature is "
                "checked against the intermediate CA of each client chain it applies to",
                CRL_FIELD,
                number,
                crl.issuer.rfc4514_string(),
            )
        elif not any(entry.signed_by(ca) for ca in named):
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
        self,
        leaf: x509.Certificate,
        issuer: x509.Certificate,
        now: datetime.datetime,
        *,
        what: str = "client certificate",
    ) -> None:
        """Refuse ``leaf`` (issued by ``issuer``) if revoked or not checkable at ``now``.

        ``what`` names the certificate in the reason ("client certificate", or the
        intermediate CA `check_chain` is checking).

        Raises:
            CertificateRevoked: with a one-line reason.
        """
        self._refresh()
        self._check(leaf, issuer, now, what)

    def check_chain(self, chain: Sequence[x509.Certificate], now: datetime.datetime) -> None:
        """Refuse a verified ``chain`` (leaf first, trust anchor last) if any certificate
        but the anchor is revoked or not checkable at ``now``.

        Each ``chain[i]`` is checked against the CRL of ``chain[i + 1]``, leaf first, so
        the reason names the first certificate that fails. A chain of one certificate
        (a leaf that is itself in ``client_ca_file``) is checked like `check` does.

        Raises:
            CertificateRevoked: with a one-line reason naming the certificate.
        """
        self._refresh()
        if len(chain) < 2:
            self._check(chain[0], chain[0], now, "client certificate")
            return
        for position in range(len(chain) - 1):
            cert = chain[position]
            what = (
                "client certificate"
                if position == 0
                else f"intermediate CA certificate ({cert.subject.rfc4514_string()})"
            )
            self._check(cert, chain[position + 1], now, what)

    def _check(
        self,
        cert: x509.Certificate,
        issuer: x509.Certificate,
        now: datetime.datetime,
        what: str,
    ) -> None:
        name = issuer.subject.rfc4514_string()
        usable = [e for e in self.crls if e.issuer == issuer.subject and e.signed_by(issuer)]
        if not usable:
            raise CertificateRevoked(
                f"{what} revocation unknown: no CRL from its issuer ({name}) in {CRL_FIELD}",
                revoked=False,
            )
        newest = max(usable, key=lambda e: e.this_update)
        if newest.next_update is not None and newest.next_update < now:
            raise CertificateRevoked(
                f"{what} revocation unknown: the CRL of {name} expired at "
                f"{newest.next_update:%Y-%m-%d %H:%M:%S} UTC",
                revoked=False,
            )
        if cert.serial_number in newest.serials:
            revoked = newest.crl.get_revoked_certificate_by_serial_number(cert.serial_number)
            when = f" at {revoked.revocation_date_utc:%Y-%m-%d %H:%M:%S} UTC" if revoked else ""
            raise CertificateRevoked(
                f"{what} revoked{when} (serial {cert.serial_number:x}, CRL of {name})",
                revoked=True,
            )
