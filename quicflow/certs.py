"""Development certificates, made in Python with `cryptography`.

``quicflow certs DIR`` (or `write_dev_certs`) writes a throwaway CA and a
server certificate signed by it, valid for ``localhost``, ``127.0.0.1`` and
``::1``, plus a client certificate for mutual TLS. ``quicflow certs DIR
--client-id ID`` (or `issue_client_certificate`) adds a client certificate
for one more client id, signed by the CA already in DIR. A client
certificate names its id as the SAN URI ``quicflow://client/<id>`` (how the
server maps it, docs/security.md). ``quicflow certs DIR --revoke ID`` (or
`revoke_client_certificates`) adds that client's certificates to ``crl.pem``,
a CRL signed by the CA in DIR (the server's ``client_crl_file``). Keys are
ECDSA P-256. These are for development and tests only.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = [
    "DevCerts",
    "issue_client_certificate",
    "revoke_client_certificates",
    "write_dev_certs",
]

_DEFAULT_NAMES = ("localhost", "127.0.0.1", "::1")
_CLIENT_ID = re.compile(r"[A-Za-z0-9._~-]{1,256}")
_CLIENT_URI = "quicflow://client/"  # = quicflow.transport.tls.CLIENT_ID_URI_PREFIX


@dataclass(frozen=True, slots=True)
class DevCerts:
    """Paths of the files `write_dev_certs` wrote (all PEM)."""

    ca_file: Path
    ca_key_file: Path
    cert_file: Path
    key_file: Path
    client_cert_file: Path
    client_key_file: Path


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _san(names: tuple[str, ...]) -> x509.SubjectAlternativeName:
    entries: list[x509.GeneralName] = []
    for name in names:
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            entries.append(x509.DNSName(name))
    return x509.SubjectAlternativeName(entries)


def _leaf(
    ca_key: ec.EllipticCurvePrivateKey,
    ca_name: x509.Name,
    common_name: str,
    san: x509.SubjectAlternativeName,
    usage: x509.ObjectIdentifier,
    now: datetime.datetime,
    days: int,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(san, critical=False)
        # Path validation (RFC 5280, cryptography's verifier) wants the key identifiers.
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
    )
    return builder.sign(ca_key, hashes.SHA256()), key


def _client_leaf(
    ca_key: ec.EllipticCurvePrivateKey,
    ca_name: x509.Name,
    client_id: str,
    now: datetime.datetime,
    days: int,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    if not isinstance(client_id, str) or not _CLIENT_ID.fullmatch(client_id):
        raise ValueError(
            f"client id {client_id!r} must be 1-256 characters of A-Z a-z 0-9 . _ ~ - "
            "(it goes into a certificate URI)"
        )
    san = x509.SubjectAlternativeName([x509.UniformResourceIdentifier(_CLIENT_URI + client_id)])
    return _leaf(ca_key, ca_name, client_id, san, ExtendedKeyUsageOID.CLIENT_AUTH, now, days)


def _load_ca(out: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    ca_cert = x509.load_pem_x509_certificate((out / "ca.pem").read_bytes())
    ca_key = serialization.load_pem_private_key((out / "ca.key").read_bytes(), password=None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{out / 'ca.key'} is not an EC private key")
    return ca_cert, ca_key


def _client_id_of(cert: x509.Certificate) -> str | None:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None
    for uri in san.get_values_for_type(x509.UniformResourceIdentifier):
        if uri.startswith(_CLIENT_URI):
            return uri[len(_CLIENT_URI) :]
    return None


def _atomic_write(path: Path, data: bytes) -> None:
    # A server re-reads its CRL file when it changes: never let it see half a file.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def revoke_client_certificates(
    directory: str | Path,
    client_ids: tuple[str, ...] = (),
    *,
    days: int = 30,
    now: datetime.datetime | None = None,
) -> tuple[Path, list[int]]:
    """Add the certificates of ``client_ids`` to ``crl.pem`` in ``directory``; return its path.

    Every ``client*.pem`` in ``directory`` whose SAN URI names one of the ids is revoked
    (its serial number listed). An existing ``crl.pem`` keeps its entries and gets the
    next CRL number; with no ids it is only refreshed (new thisUpdate/nextUpdate). The
    CRL is signed by ``ca.pem``/``ca.key``, valid from ``now`` for ``days`` days, and is
    replaced atomically so a running server never reads half of it. Returns the path and
    the serial numbers revoked by this call.

    Raises:
        ValueError: an id matches no certificate in ``directory``, the existing
            ``crl.pem`` is not a CRL signed by this CA, or the CA files are unusable.
        OSError: the files cannot be read or written.
    """
    out = Path(directory)
    ca_cert, ca_key = _load_ca(out)
    crl_file = out / "crl.pem"
    entries: dict[int, x509.RevokedCertificate] = {}
    number = 0
    if crl_file.exists():
        old = x509.load_pem_x509_crl(crl_file.read_bytes())
        if old.issuer != ca_cert.subject or not old.is_signature_valid(ca_key.public_key()):
            raise ValueError(f"{crl_file} is not signed by the CA in {out / 'ca.pem'}")
        entries = {revoked.serial_number: revoked for revoked in old}
        try:
            number = old.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
        except x509.ExtensionNotFound:
            number = 0
    start = now or datetime.datetime.now(datetime.UTC)
    by_id: dict[str, list[x509.Certificate]] = {}
    for path in sorted(out.glob("client*.pem")):
        try:
            cert = x509.load_pem_x509_certificate(path.read_bytes())
        except ValueError:
            continue
        cid = _client_id_of(cert)
        if cid is not None and cert.issuer == ca_cert.subject:
            by_id.setdefault(cid, []).append(cert)
    added: list[int] = []
    for client_id in client_ids:
        if client_id not in by_id:
            raise ValueError(f"no client certificate for client id {client_id!r} in {out}")
        for cert in by_id[client_id]:
            if cert.serial_number not in entries:
                entries[cert.serial_number] = (
                    x509.RevokedCertificateBuilder()
                    .serial_number(cert.serial_number)
                    .revocation_date(start)
                    .build()
                )
                added.append(cert.serial_number)
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca_cert.subject)
        .last_update(start)
        .next_update(start + datetime.timedelta(days=days))
        .add_extension(x509.CRLNumber(number + 1), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
    )
    for revoked in entries.values():
        builder = builder.add_revoked_certificate(revoked)
    crl = builder.sign(ca_key, hashes.SHA256())
    _atomic_write(crl_file, crl.public_bytes(serialization.Encoding.PEM))
    return crl_file, added


def issue_client_certificate(
    directory: str | Path,
    client_id: str,
    *,
    days: int = 30,
    not_before: datetime.datetime | None = None,
) -> tuple[Path, Path]:
    """Sign a client certificate for ``client_id`` with the CA in ``directory``.

    Reads ``ca.pem`` and ``ca.key`` (as `write_dev_certs` wrote them) and
    writes ``client-<id>.pem`` and ``client-<id>.key`` next to them; returns
    their paths. The certificate names the id as the SAN URI
    ``quicflow://client/<id>`` and allows clientAuth only. ``not_before``
    (default: now) and ``days`` set the validity window, so tests can make
    expired certificates.

    Raises:
        ValueError: the id has characters other than ``A-Z a-z 0-9 . _ ~ -``, or the CA
            files do not hold a certificate and its EC key.
        OSError: the files cannot be read or written.
    """
    out = Path(directory)
    ca_cert, ca_key = _load_ca(out)
    start = not_before or datetime.datetime.now(datetime.UTC)
    cert, key = _client_leaf(ca_key, ca_cert.subject, client_id, start, days)
    cert_file = out / f"client-{client_id}.pem"
    key_file = out / f"client-{client_id}.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(_key_pem(key))
    key_file.chmod(0o600)
    return cert_file, key_file


def write_dev_certs(
    directory: str | Path,
    *,
    names: tuple[str, ...] = _DEFAULT_NAMES,
    client_id: str = "dev-client",
    days: int = 30,
) -> DevCerts:
    """Write ``ca.pem``, ``ca.key``, ``server.pem``, ``server.key``, ``client.pem``, ``client.key``.

    The server certificate covers ``names`` (DNS names or IP addresses); the
    client certificate names ``client_id`` (SAN URI ``quicflow://client/<id>``,
    also its common name). Existing files are overwritten. Returns their paths.
    """
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name("QuicFlow development CA")
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    server_cert, server_key = _leaf(
        ca_key,
        ca_name,
        names[0] if names else "localhost",
        _san(names or ("localhost",)),
        ExtendedKeyUsageOID.SERVER_AUTH,
        now,
        days,
    )
    client_cert, client_key = _client_leaf(ca_key, ca_name, client_id, now, days)
    certs = DevCerts(
        ca_file=out / "ca.pem",
        ca_key_file=out / "ca.key",
        cert_file=out / "server.pem",
        key_file=out / "server.key",
        client_cert_file=out / "client.pem",
        client_key_file=out / "client.key",
    )
    pem = serialization.Encoding.PEM
    certs.ca_file.write_bytes(ca_cert.public_bytes(pem))
    certs.ca_key_file.write_bytes(_key_pem(ca_key))
    certs.cert_file.write_bytes(server_cert.public_bytes(pem))
    certs.key_file.write_bytes(_key_pem(server_key))
    certs.client_cert_file.write_bytes(client_cert.public_bytes(pem))
    certs.client_key_file.write_bytes(_key_pem(client_key))
    for key_file in (certs.ca_key_file, certs.key_file, certs.client_key_file):
        key_file.chmod(0o600)
    return certs
