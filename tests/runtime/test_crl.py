"""Sans-IO certificate revocation (docs/security.md "Revocation"): loading ``client_crl_file``,
the verifier's CRL check (revoked, not revoked, wrong issuer, expired, bad signature), reload
when the file changes, and the CRLs `quicflow certs --revoke` writes."""

from __future__ import annotations

import datetime
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from quicflow import ServerConfig, cli
from quicflow.certs import issue_client_certificate, revoke_client_certificates, write_dev_certs
from quicflow.errors import ConfigError
from quicflow.transport.crl import RevocationChecker, load_crls
from quicflow.transport.tls import CertificateRejected, ClientCertificateVerifier

NOW = datetime.datetime.now(datetime.UTC)
DAY = datetime.timedelta(days=1)


@dataclass
class Ca:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    def issue(self, serial: int) -> x509.Certificate:
        key = ec.generate_private_key(ec.SECP256R1())
        return (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"c{serial}")]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(serial)
            .not_valid_before(NOW - DAY)
            .not_valid_after(NOW + DAY)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), False)
            .add_extension(
                x509.SubjectAlternativeName(
                    [x509.UniformResourceIdentifier(f"quicflow://client/c{serial}")]
                ),
                False,
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), False
            )
            .sign(self.key, hashes.SHA256())
        )

    def crl(
        self,
        *revoked: int,
        next_update: datetime.datetime | None = None,
        signer: ec.EllipticCurvePrivateKey | None = None,
        this_update: datetime.datetime | None = None,
    ) -> x509.CertificateRevocationList:
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(self.cert.subject)
            .last_update(this_update or NOW - DAY)
            .next_update(next_update or NOW + DAY)
        )
        for serial in revoked:
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder()
                .serial_number(serial)
                .revocation_date(NOW - DAY)
                .build()
            )
        return builder.sign(signer or self.key, hashes.SHA256())


def _ca(name: str) -> Ca:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - DAY)
        .not_valid_after(NOW + 10 * DAY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
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
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .sign(key, hashes.SHA256())
    )
    return Ca(cert, key)


@pytest.fixture(scope="module")
def ca() -> Ca:
    return _ca("CRL test CA")


@pytest.fixture(scope="module")
def other() -> Ca:
    return _ca("Other CA")


def _write(path: Path, *crls: x509.CertificateRevocationList, der: bool = False) -> str:
    if der:
        (crl,) = crls
        path.write_bytes(crl.public_bytes(Encoding.DER))
    else:
        path.write_bytes(b"".join(c.public_bytes(Encoding.PEM) for c in crls))
    return str(path)


def _verifier(crl_file: str, *cas: Ca) -> ClientCertificateVerifier:
    certs = [c.cert for c in cas]
    return ClientCertificateVerifier(
        certs, required=True, revocation=RevocationChecker(crl_file, certs)
    )


def test_revoked_leaf_is_refused_and_others_pass(ca: Ca, tmp_path: Path) -> None:
    """Check that a serial the issuer's CRL lists is refused with a reason naming the
    revocation, and that a certificate the CRL does not list still verifies."""
    verifier = _verifier(_write(tmp_path / "crl.pem", ca.crl(7, 9)), ca)
    with pytest.raises(CertificateRejected) as refused:
        verifier.verify(ca.issue(9), now=NOW)
    assert refused.value.revoked and not refused.value.expired
    assert refused.value.reason.startswith("client certificate revoked at ")
    assert "serial 9" in refused.value.reason and "CN=CRL test CA" in refused.value.reason
    assert verifier.verify(ca.issue(8), now=NOW).client_id == "c8"


def test_crl_from_another_issuer_does_not_cover_the_leaf(ca: Ca, other: Ca, tmp_path: Path) -> None:
    """Check that with both CAs trusted but only the other CA's CRL loaded, a leaf of the
    first CA is refused (fail closed: no CRL from its issuer), even one the other CRL lists."""
    verifier = _verifier(_write(tmp_path / "crl.pem", other.crl(5)), ca, other)
    for serial in (5, 6):
        with pytest.raises(CertificateRejected, match=r"no CRL from its issuer \(CN=CRL test CA\)"):
            verifier.verify(ca.issue(serial), now=NOW)
    with pytest.raises(CertificateRejected, match="revoked"):
        verifier.verify(other.issue(5), now=NOW)
    assert verifier.verify(other.issue(6), now=NOW).client_id == "c6"


def test_expired_crl_fails_closed(ca: Ca, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Check the documented policy: a CRL past its nextUpdate loads (with a warning) but
    refuses every certificate of its issuer, revoked or not, until it is replaced."""
    stale = ca.crl(3, this_update=NOW - 3 * DAY, next_update=NOW - DAY / 2)
    with caplog.at_level(logging.WARNING, logger="quicflow.transport"):
        verifier = _verifier(_write(tmp_path / "crl.pem", stale), ca)
    assert "expired" in caplog.text
    for serial in (3, 4):
        with pytest.raises(CertificateRejected, match="the CRL of CN=CRL test CA expired at"):
            verifier.verify(ca.issue(serial), now=NOW)
    # The same CRL was fine while it was current.
    assert verifier.verify(ca.issue(4), now=NOW - DAY * 3 / 4).client_id == "c4"


def test_crl_with_a_bad_signature_is_refused(ca: Ca, other: Ca, tmp_path: Path) -> None:
    """Check signatures twice: at load time a CRL naming the CA but signed by another key is
    a ConfigError naming client_crl_file; at handshake time a CRL is used only if the leaf's
    own issuer key signed it (two CAs with one name, different keys)."""
    forged = ca.crl(1, signer=other.key)
    with pytest.raises(ConfigError, match=r"client_crl_file: CRL #1 .*not signed by a CA"):
        load_crls(_write(tmp_path / "forged.pem", forged), [ca.cert, other.cert])
    twin = _ca("CRL test CA")  # same subject, its own key
    verifier = _verifier(_write(tmp_path / "crl.pem", ca.crl()), ca, twin)
    assert verifier.verify(ca.issue(2), now=NOW).client_id == "c2"
    with pytest.raises(CertificateRejected, match="no CRL from its issuer"):
        verifier.verify(twin.issue(2), now=NOW)


def test_load_errors_name_the_field(ca: Ca, tmp_path: Path) -> None:
    """Check the load-time errors: unreadable file, a PEM file without CRL, garbage that is
    not DER either; and that DER and several PEM CRLs in one file load."""
    with pytest.raises(ConfigError, match="client_crl_file: cannot read"):
        load_crls(str(tmp_path / "missing.pem"), [ca.cert])
    (tmp_path / "cert.pem").write_bytes(ca.cert.public_bytes(Encoding.PEM))
    with pytest.raises(ConfigError, match="client_crl_file: no '-----BEGIN X509 CRL-----'"):
        load_crls(str(tmp_path / "cert.pem"), [ca.cert])
    (tmp_path / "junk").write_bytes(b"\x30\x03junk")
    with pytest.raises(ConfigError, match=r"client_crl_file: not a CRL \(neither PEM nor DER\)"):
        load_crls(str(tmp_path / "junk"), [ca.cert])
    assert [
        len(e.serials) for e in load_crls(_write(tmp_path / "d", ca.crl(1), der=True), [ca.cert])
    ] == [1]
    two = load_crls(_write(tmp_path / "two.pem", ca.crl(1), ca.crl(1, 2)), [ca.cert])
    assert [sorted(e.serials) for e in two] == [[1], [1, 2]]


def test_newest_crl_of_an_issuer_decides(ca: Ca, tmp_path: Path) -> None:
    """Check that of two CRLs from one issuer the later thisUpdate wins (an older one
    listing a serial the newer one dropped does not revoke it)."""
    older = ca.crl(11, this_update=NOW - 2 * DAY)
    newer = ca.crl(12, this_update=NOW - DAY)
    verifier = _verifier(_write(tmp_path / "crl.pem", newer, older), ca)
    assert verifier.verify(ca.issue(11), now=NOW).client_id == "c11"
    with pytest.raises(CertificateRejected, match="revoked"):
        verifier.verify(ca.issue(12), now=NOW)


def test_changed_file_is_reloaded_and_a_bad_one_keeps_the_old(
    ca: Ca, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Check reload without restart: a replaced CRL file takes effect at the next check; an
    invalid replacement is logged and the CRLs loaded before stay in use."""
    path = tmp_path / "crl.pem"
    verifier = _verifier(_write(path, ca.crl()), ca)
    leaf = ca.issue(21)
    assert verifier.verify(leaf, now=NOW).client_id == "c21"
    _write(path, ca.crl(21))
    os.utime(path, ns=(1, 1))  # a distinct stamp even on a coarse-mtime file system
    with pytest.raises(CertificateRejected, match="revoked"):
        verifier.verify(leaf, now=NOW)
    path.write_bytes(b"-----BEGIN X509 CRL-----\nbroken\n-----END X509 CRL-----\n")
    with caplog.at_level(logging.ERROR, logger="quicflow.transport"):
        with pytest.raises(CertificateRejected, match="revoked"):
            verifier.verify(leaf, now=NOW)
        with pytest.raises(CertificateRejected, match="revoked"):
            verifier.verify(leaf, now=NOW)
    assert caplog.text.count("keeping the CRLs loaded before") == 1


def test_server_config_validates_client_crl_file(tmp_path: Path) -> None:
    """Check ServerConfig: the CRL file is loaded at construction (errors name
    client_crl_file), it needs client_ca_file, and a CRL from another CA is refused."""
    certs = write_dev_certs(tmp_path / "a")
    write_dev_certs(tmp_path / "b")
    crl, _ = revoke_client_certificates(tmp_path / "a")
    other_crl, _ = revoke_client_certificates(tmp_path / "b")
    base: dict[str, Any] = {
        "port": 0,
        "cert_file": str(certs.cert_file),
        "key_file": str(certs.key_file),
    }
    mtls = {**base, "client_ca_file": str(certs.ca_file), "client_cert_mode": "required"}
    assert ServerConfig(**mtls, client_crl_file=str(crl)).client_crl_file == str(crl)
    with pytest.raises(ConfigError, match="client_crl_file: needs client_ca_file"):
        ServerConfig(**base, client_crl_file=str(crl))
    with pytest.raises(ConfigError, match=r"client_crl_file: CRL #1 .*not signed by a CA"):
        ServerConfig(**mtls, client_crl_file=str(other_crl))
    with pytest.raises(ConfigError, match="client_crl_file: no '-----BEGIN X509 CRL"):
        ServerConfig(**mtls, client_crl_file=str(certs.ca_file))


def test_revoke_client_certificates_updates_the_crl(tmp_path: Path) -> None:
    """Check the dev CRL tool: revoking keeps earlier entries, bumps the CRL number, is
    idempotent per certificate, refuses unknown ids, and refresh-only keeps the list."""
    certs = write_dev_certs(tmp_path, client_id="alice")
    bob, _ = issue_client_certificate(tmp_path, "bob")
    serial = {
        "alice": x509.load_pem_x509_certificate(certs.client_cert_file.read_bytes()).serial_number,
        "bob": x509.load_pem_x509_certificate(bob.read_bytes()).serial_number,
    }
    path, added = revoke_client_certificates(tmp_path, ("bob",), days=2)
    assert added == [serial["bob"]]
    _, added = revoke_client_certificates(tmp_path, ("alice", "bob"))
    assert added == [serial["alice"]]
    _, added = revoke_client_certificates(tmp_path)
    assert added == []
    crl = x509.load_pem_x509_crl(path.read_bytes())
    assert {r.serial_number for r in crl} == set(serial.values())
    assert crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == 3
    assert [
        e.issuer
        for e in load_crls(str(path), [x509.load_pem_x509_certificate(certs.ca_file.read_bytes())])
    ]
    with pytest.raises(ValueError, match="no client certificate for client id 'carol'"):
        revoke_client_certificates(tmp_path, ("carol",))


def test_certs_cli_revoke(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Check `quicflow certs DIR --revoke ID`: exit 0, prints the serial and crl.pem, the
    CRL verifies against the CA; an unknown id fails with one line and exit status 1."""
    write_dev_certs(tmp_path, client_id="gw-1")
    assert cli.main(["certs", str(tmp_path), "--revoke", "gw-1", "--days", "3"]) == 0
    out = capsys.readouterr().out
    cert = x509.load_pem_x509_certificate((tmp_path / "client.pem").read_bytes())
    assert f"revoked: serial {cert.serial_number:x}" in out and "crl.pem" in out
    ca_cert = x509.load_pem_x509_certificate((tmp_path / "ca.pem").read_bytes())
    (entry,) = load_crls(str(tmp_path / "crl.pem"), [ca_cert])
    assert entry.serials == {cert.serial_number}
    assert entry.next_update is not None
    assert entry.next_update - entry.this_update == datetime.timedelta(days=3)
    assert cli.main(["certs", str(tmp_path), "--revoke", "gw-9"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("quicflow certs: cannot revoke: no client certificate for client id")
    assert len(err.strip().splitlines()) == 1
