from __future__ import annotations

import contextlib
import ipaddress
import socket
import ssl
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID
from theoden_server.certs import create_ca, create_server_certificate, create_test_pki


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return create_test_pki(tmp_path_factory.mktemp("pki"))


@contextlib.contextmanager
def tls_server(cert: Path, key: Path) -> Iterator[int]:
    """Serve b"hello" over TLS on an ephemeral loopback port until the block ends."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                raw, _ = listener.accept()
            except (TimeoutError, OSError):
                continue
            with raw:
                raw.settimeout(5)
                try:
                    with context.wrap_socket(raw, server_side=True) as tls:
                        tls.sendall(b"hello")
                except (ssl.SSLError, OSError):
                    pass  # the client refused our certificate: that is what some tests want

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        thread.join(5)
        listener.close()


def fetch(port: int, context: ssl.SSLContext, server_hostname: str) -> bytes:
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname=server_hostname) as tls,
    ):
        return tls.recv(5)


def test_pki_files_and_permissions(pki: dict[str, Path]) -> None:
    assert {p.name for p in pki.values()} == {"ca.pem", "ca-key.pem", "server.pem", "server-key.pem"}
    assert stat.S_IMODE(pki["key"].stat().st_mode) == 0o600
    assert stat.S_IMODE(pki["ca_key"].stat().st_mode) == 0o600
    assert stat.S_IMODE(pki["cert"].stat().st_mode) == 0o644
    assert b"PRIVATE KEY" in pki["key"].read_bytes()


def test_server_certificate_profile(pki: dict[str, Path]) -> None:
    cert = x509.load_pem_x509_certificate(pki["cert"].read_bytes())
    ca = x509.load_pem_x509_certificate(pki["ca"].read_bytes())

    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert cert.issuer == ca.subject
    cert.verify_directly_issued_by(ca)
    ca_constraints = ca.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert ca_constraints.ca is True
    assert ca_constraints.path_length == 0


@pytest.mark.parametrize("hostname", ["localhost", "127.0.0.1"])
def test_client_pinning_our_ca_verifies_the_server(pki: dict[str, Path], hostname: str) -> None:
    context = ssl.create_default_context(cafile=str(pki["ca"]))
    with tls_server(pki["cert"], pki["key"]) as port:
        assert fetch(port, context, hostname) == b"hello"


def test_client_with_strict_x509_checks_accepts_the_server(pki: dict[str, Path]) -> None:
    # Python 3.13 turns VERIFY_X509_STRICT on by default: our certificates must already pass it
    context = ssl.create_default_context(cafile=str(pki["ca"]))
    context.verify_flags |= ssl.VERIFY_X509_STRICT
    with tls_server(pki["cert"], pki["key"]) as port:
        assert fetch(port, context, "localhost") == b"hello"


def test_wrong_hostname_fails_verification(pki: dict[str, Path]) -> None:
    context = ssl.create_default_context(cafile=str(pki["ca"]))
    with tls_server(pki["cert"], pki["key"]) as port, pytest.raises(ssl.SSLCertVerificationError, match="mismatch"):
        fetch(port, context, "hospital.example.org")


def test_client_with_system_trust_store_rejects_our_certificate(pki: dict[str, Path]) -> None:
    context = ssl.create_default_context()  # system CAs only
    with tls_server(pki["cert"], pki["key"]) as port, pytest.raises(ssl.SSLCertVerificationError):
        fetch(port, context, "localhost")


def test_certificate_from_another_ca_is_rejected(pki: dict[str, Path], tmp_path: Path) -> None:
    other_ca, _ = create_ca(tmp_path / "other")
    context = ssl.create_default_context(cafile=str(other_ca))
    with tls_server(pki["cert"], pki["key"]) as port, pytest.raises(ssl.SSLCertVerificationError):
        fetch(port, context, "localhost")


def test_custom_hosts_and_days(tmp_path: Path) -> None:
    ca_cert, ca_key = create_ca(tmp_path, days=10)
    cert_path, _ = create_server_certificate(
        tmp_path, ca_cert=ca_cert, ca_key=ca_key, hosts=["fl.hospital.example", "10.0.0.5", "::1"], days=400
    )
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["fl.hospital.example"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("10.0.0.5"), ipaddress.ip_address("::1")]
    ca = x509.load_pem_x509_certificate(ca_cert.read_bytes())
    assert cert.not_valid_after_utc <= ca.not_valid_after_utc  # never outlives its CA


def test_existing_files_are_not_overwritten(tmp_path: Path) -> None:
    _, ca_key = create_ca(tmp_path)
    before = ca_key.read_bytes()
    with pytest.raises(FileExistsError, match="refusing to overwrite"):
        create_ca(tmp_path)
    assert ca_key.read_bytes() == before
    create_ca(tmp_path, overwrite=True)
    assert ca_key.read_bytes() != before


def test_mismatched_ca_key_and_bad_arguments_are_refused(tmp_path: Path) -> None:
    ca_cert, _ = create_ca(tmp_path / "a")
    _, other_key = create_ca(tmp_path / "b")
    with pytest.raises(ValueError, match="is not the key of"):
        create_server_certificate(tmp_path, ca_cert=ca_cert, ca_key=other_key)
    with pytest.raises(ValueError, match="at least one host"):
        create_server_certificate(tmp_path, ca_cert=ca_cert, ca_key=other_key, hosts=[])
    with pytest.raises(ValueError, match="days must be positive"):
        create_ca(tmp_path / "c", days=0)
