"""Sans-IO security pieces: certificate-to-id mapping, the client certificate verifier,
`MethodAuthorizer` rules, mutual-TLS config loading and `quicflow certs` client issuing."""

from __future__ import annotations

import datetime
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from quicflow import ClientConfig, MethodAuthorizer, ServerConfig
from quicflow.certs import issue_client_certificate, write_dev_certs
from quicflow.errors import ConfigError
from quicflow.transport.tls import (
    CertificateRejected,
    ClientCertificateVerifier,
    certificate_client_id,
)

NOW = datetime.datetime.now(datetime.UTC)


def _self_signed(*names: x509.GeneralName) -> x509.Certificate:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "cn-is-ignored")])
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(NOW)
        .not_valid_after(NOW + datetime.timedelta(days=1))
    )
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(list(names)), False)
    return builder.sign(key, hashes.SHA256())


def test_certificate_client_id_prefers_the_quicflow_uri() -> None:
    """Check the mapping: the quicflow://client/ URI wins over other URIs and DNS names, a
    DNS SAN is the fallback, and the common name is never used."""
    uri = x509.UniformResourceIdentifier
    assert (
        certificate_client_id(
            _self_signed(
                x509.DNSName("dns-id"), uri("spiffe://x/y"), uri("quicflow://client/uri-id")
            )
        )
        == "uri-id"
    )
    assert certificate_client_id(_self_signed(uri("spiffe://x/y"), x509.DNSName("dns-id"))) == (
        "dns-id"
    )
    assert certificate_client_id(_self_signed(uri("quicflow://client/"))) is None
    assert certificate_client_id(_self_signed()) is None


def test_verifier_checks_chain_and_validity_window(tmp_path: Path) -> None:
    """Check that the verifier accepts a client certificate of its CA inside its validity
    window and refuses it before and after, and refuses another CA's certificate."""
    certs = write_dev_certs(tmp_path / "a", client_id="alice")
    other = write_dev_certs(tmp_path / "b", client_id="alice")
    verifier = ClientCertificateVerifier.from_file(str(certs.ca_file), required=True)
    leaf = x509.load_pem_x509_certificate(certs.client_cert_file.read_bytes())
    verified = verifier.verify(leaf)
    assert verified.client_id == "alice"
    assert "CN=alice" in verified.subject
    with pytest.raises(CertificateRejected) as early:
        verifier.verify(leaf, now=NOW - datetime.timedelta(days=1))
    assert "not valid before" in early.value.reason and not early.value.expired
    with pytest.raises(CertificateRejected) as late:
        verifier.verify(leaf, now=NOW + datetime.timedelta(days=31))
    assert late.value.expired
    stranger = x509.load_pem_x509_certificate(other.client_cert_file.read_bytes())
    with pytest.raises(CertificateRejected) as info:
        verifier.verify(stranger)
    assert "not trusted" in info.value.reason


def test_method_authorizer_rules() -> None:
    """Check first-match-wins patterns, ids, roles, "*", default deny/allow, and that a
    string where a list of principals belongs is refused."""
    auth = MethodAuthorizer(
        [
            ("/admin.Admin/Read", ["*"]),
            ("/admin.Admin/*", ["role:admin", "root"]),
            ("/pub.*", ["*"]),
        ],
        roles={"ann": ["admin", "x"], "bob": ["x"]},
    )
    assert auth.allows("bob", "/admin.Admin/Read")
    assert auth.allows("ann", "/admin.Admin/Drop")
    assert auth.allows("root", "/admin.Admin/Drop")
    assert not auth.allows("bob", "/admin.Admin/Drop")
    assert auth.allows("anyone", "/pub.Feed/Get")
    assert not auth.allows("ann", "/other.Svc/Get")  # no rule: denied
    assert MethodAuthorizer({}, default_allow=True).allows("x", "/other.Svc/Get")
    with pytest.raises(ValueError, match="list of principals"):
        MethodAuthorizer({"/a/*": "admin"})


def test_mutual_tls_fields_load_from_toml_and_env(tmp_path: Path) -> None:
    """Check that the mutual-TLS fields come from TOML and environment like the others, and
    that a bad mode from the environment names the variable's field."""
    path = tmp_path / "quicflow.toml"
    path.write_text(
        '[server]\ncert_file = "s.pem"\nclient_ca_file = "ca.pem"\n'
        'client_cert_mode = "optional"\n[client]\ncert_file = "c.pem"\n'
    )
    server = ServerConfig.load(path, env={"QUICFLOW_SERVER_CLIENT_CERT_MODE": "required"})
    assert (server.client_ca_file, server.client_cert_mode) == ("ca.pem", "required")
    client = ClientConfig.load(path, env={"QUICFLOW_CLIENT_KEY_FILE": "c.key"})
    assert (client.cert_file, client.key_file) == ("c.pem", "c.key")
    with pytest.raises(ConfigError) as info:
        ServerConfig.load(path, env={"QUICFLOW_SERVER_CLIENT_CERT_MODE": "sometimes"})
    assert info.value.field == "client_cert_mode"


def test_certs_cli_issues_client_certificates_with_the_id(tmp_path: Path) -> None:
    """Check that `quicflow certs --client-id` names client.pem's id and `--add-client`
    signs more client certificates with the same CA, each verifying for its id."""

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "quicflow.cli", "certs", str(tmp_path), *args],
            capture_output=True,
            text=True,
            timeout=60,
        )

    first = run("--client-id", "gw-1")
    assert first.returncode == 0, first.stderr
    ca_before = (tmp_path / "ca.pem").read_bytes()
    more = run("--add-client", "gw-2", "--add-client", "gw-3")
    assert more.returncode == 0, more.stderr
    assert "client id gw-3" in more.stdout
    assert (tmp_path / "ca.pem").read_bytes() == ca_before  # same CA, not a new one
    verifier = ClientCertificateVerifier.from_file(str(tmp_path / "ca.pem"), required=True)
    for name, expected in (("client.pem", "gw-1"), ("client-gw-2.pem", "gw-2")):
        cert = x509.load_pem_x509_certificate((tmp_path / name).read_bytes())
        assert verifier.verify(cert).client_id == expected
    bad = run("--add-client", "no spaces")
    assert bad.returncode == 1 and bad.stderr.startswith("quicflow certs: ")
    with pytest.raises(FileNotFoundError):
        issue_client_certificate(tmp_path / "empty", "x")
