"""The quicflow command through its real entry point."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from cryptography import x509


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "quicflow.cli", *args], capture_output=True, text=True, timeout=60
    )


def test_certs_writes_a_ca_signed_server_certificate(tmp_path: Path) -> None:
    """Check that `quicflow certs` writes a CA and a server certificate it signed, for the names
    asked."""
    result = _run("certs", str(tmp_path), "--name", "localhost", "--name", "10.0.0.5")
    assert result.returncode == 0, result.stderr
    ca = x509.load_pem_x509_certificate((tmp_path / "ca.pem").read_bytes())
    server = x509.load_pem_x509_certificate((tmp_path / "server.pem").read_bytes())
    assert server.issuer == ca.subject
    server.verify_directly_issued_by(ca)
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["10.0.0.5"]
    assert (tmp_path / "server.key").stat().st_mode & 0o077 == 0


def test_certs_into_an_unwritable_place_fails_with_one_line(tmp_path: Path) -> None:
    """Check that a bad target directory gives one clear error line and exit status 1."""
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    result = _run("certs", str(blocker / "sub"))
    assert result.returncode == 1
    assert result.stderr.startswith("quicflow certs: ")
    assert len(result.stderr.strip().splitlines()) == 1
