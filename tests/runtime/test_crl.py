"""Sans-IO certificate revocation (docs/security.md "Revocation"): loading ``client_crl_file``,
the verifier's CRL check (revoked, not revoked, wrong issuer, expired, bad signature), reload
when the file changes, the CRLs `quicflow certs --revoke` writes, and client_crl_check="chain"
(intermediate CAs checked against their issuer's CRL, deferred CRL signature check)."""

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


def _ca(name: str, *, issuer: Ca | None = None, path_length: int = 0) -> Ca:
    """A self-signed CA, or with ``issuer`` an intermediate CA it signs."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.cert.subject if issuer else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - DAY)
        .not_valid_after(NOW + 10 * DAY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
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
    )
    if issuer is not None:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key()), False
        )
    return Ca(builder.sign(issuer.key if issuer else key, hashes.SHA256()), key)


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


def _verifier(crl_file: str, *cas: Ca, crl_check: str = "leaf") -> ClientCertificateVerifier:
    certs = [c.cert for c in cas]
    return ClientCertificateVerifier(
        certs, required=True, revocation=RevocationChecker(crl_file, certs), crl_check=crl_check
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


# -- client_crl_check="chain": the leaf and every intermediate CA --


@dataclass
class Pki:
    root: Ca
    mid: Ca
    """An intermediate CA under ``root``; only ``root`` is trusted (client_ca_file)."""


@pytest.fixture(scope="module")
def pki() -> Pki:
    root = _ca("Chain root", path_length=1)
    return Pki(root, _ca("Chain intermediate", issuer=root))


def _both(path: Path, *crls: x509.CertificateRevocationList, pki: Pki) -> dict[str, Any]:
    crl_file = _write(path, *crls)
    return {mode: _verifier(crl_file, pki.root, crl_check=mode) for mode in ("leaf", "chain")}


def test_chain_check_refuses_a_revoked_intermediate(pki: Pki, tmp_path: Path) -> None:
    """Check that an intermediate CA the root's CRL lists is refused with "chain" (the reason
    names the intermediate) but not with "leaf"; that a good chain passes with both; and that
    "chain" still refuses a revoked leaf under the intermediate."""
    root, mid = pki.root, pki.mid
    leaf, bad_leaf = mid.issue(31), mid.issue(32)
    revoked = _both(tmp_path / "a.pem", root.crl(mid.cert.serial_number), mid.crl(32), pki=pki)
    assert revoked["leaf"].verify(leaf, [mid.cert], now=NOW).client_id == "c31"
    with pytest.raises(CertificateRejected) as refused:
        revoked["chain"].verify(leaf, [mid.cert], now=NOW)
    assert refused.value.revoked
    assert refused.value.reason.startswith(
        "intermediate CA certificate (CN=Chain intermediate) revoked at "
    )
    assert "CRL of CN=Chain root" in refused.value.reason
    good = _both(tmp_path / "b.pem", root.crl(7), mid.crl(32), pki=pki)
    for mode in ("leaf", "chain"):
        assert good[mode].verify(leaf, [mid.cert], now=NOW).client_id == "c31"
        with pytest.raises(
            CertificateRejected, match=r"^client certificate revoked at .*serial 20"
        ):
            good[mode].verify(bad_leaf, [mid.cert], now=NOW)


def test_chain_check_fails_closed_for_an_intermediate(pki: Pki, tmp_path: Path) -> None:
    """Check the fail-closed policy for the intermediate: with no CRL from the root, or an
    expired one, "chain" refuses (revocation unknown) what "leaf" accepts."""
    root, mid = pki.root, pki.mid
    leaf = mid.issue(41)
    missing = _both(tmp_path / "a.pem", mid.crl(), pki=pki)
    assert missing["leaf"].verify(leaf, [mid.cert], now=NOW).client_id == "c41"
    with pytest.raises(CertificateRejected) as refused:
        missing["chain"].verify(leaf, [mid.cert], now=NOW)
    assert not refused.value.revoked
    assert refused.value.reason == (
        "intermediate CA certificate (CN=Chain intermediate) revocation unknown: "
        "no CRL from its issuer (CN=Chain root) in client_crl_file"
    )
    stale = root.crl(this_update=NOW - 3 * DAY, next_update=NOW - DAY / 2)
    expired = _both(tmp_path / "b.pem", stale, mid.crl(), pki=pki)
    assert expired["leaf"].verify(leaf, [mid.cert], now=NOW).client_id == "c41"
    with pytest.raises(CertificateRejected, match=r"revocation unknown: the CRL of CN=Chain root"):
        expired["chain"].verify(leaf, [mid.cert], now=NOW)
    # The leaf's own CRL (from the intermediate) is still needed in both modes.
    no_mid_crl = _both(tmp_path / "c.pem", root.crl(), pki=pki)
    for mode in ("leaf", "chain"):
        with pytest.raises(
            CertificateRejected, match=r"^client certificate revocation unknown: no CRL from"
        ):
            no_mid_crl[mode].verify(leaf, [mid.cert], now=NOW)


def test_intermediate_crl_signature_is_checked_at_the_handshake(
    pki: Pki, other: Ca, tmp_path: Path
) -> None:
    """Check the deferred signature check: a CRL naming the intermediate (not in
    client_ca_file) loads, but counts only if the intermediate of the verified chain signed
    it; one signed by another key is ignored (fail closed), in both modes."""
    root, mid = pki.root, pki.mid
    leaf = mid.issue(51)
    forged = mid.crl(signer=other.key)
    assert [e.issuer for e in load_crls(_write(tmp_path / "f.pem", forged), [root.cert])] == [
        mid.cert.subject
    ]
    verifiers = _both(tmp_path / "a.pem", root.crl(), forged, pki=pki)
    for mode in ("leaf", "chain"):
        with pytest.raises(
            CertificateRejected, match=r"no CRL from its issuer \(CN=Chain intermediate\)"
        ):
            verifiers[mode].verify(leaf, [mid.cert], now=NOW)
    # A CRL naming a CA of client_ca_file must still be signed by it at load time.
    with pytest.raises(ConfigError, match=r"client_crl_file: CRL #1 .*not signed by a CA"):
        load_crls(_write(tmp_path / "r.pem", root.crl(signer=other.key)), [root.cert])


def test_server_config_validates_client_crl_check(tmp_path: Path) -> None:
    """Check ServerConfig.client_crl_check: "leaf" is the default, "chain" is accepted with a
    CRL file, a bad value and "chain" without client_crl_file are ConfigErrors naming it."""
    certs = write_dev_certs(tmp_path)
    crl, _ = revoke_client_certificates(tmp_path)
    mtls: dict[str, Any] = {
        "port": 0,
        "cert_file": str(certs.cert_file),
        "key_file": str(certs.key_file),
        "client_ca_file": str(certs.ca_file),
        "client_cert_mode": "required",
    }
    assert ServerConfig(**mtls, client_crl_file=str(crl)).client_crl_check == "leaf"
    config = ServerConfig(**mtls, client_crl_file=str(crl), client_crl_check="chain")
    assert config.client_crl_check == "chain"
    with pytest.raises(ConfigError, match=r"client_crl_check: must be one of 'leaf', 'chain'"):
        ServerConfig(**mtls, client_crl_file=str(crl), client_crl_check="all")
    with pytest.raises(ConfigError, match="client_crl_check: 'chain' needs client_crl_file"):
        ServerConfig(**mtls, client_crl_check="chain")
