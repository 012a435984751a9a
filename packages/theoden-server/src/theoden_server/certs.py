"""A small private PKI for HTTPS: a certificate authority and server certificates signed by it.

Meant for tests, demos and sites without their own PKI. Clients trust the server by pinning ``ca.pem``
(never by turning verification off). Keys are ECDSA P-256, written unencrypted with mode 0600.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from theoden_server.security import write_private_file

__all__ = ["create_ca", "create_server_certificate", "create_test_pki"]

_BACKDATE = dt.timedelta(minutes=5)  # tolerate a little clock skew between the machines


def _check_days(days: int) -> None:
    if days <= 0:
        raise ValueError(f"days must be positive, got {days}")


def _refuse_overwrite(paths: Sequence[Path], overwrite: bool) -> None:
    existing = [str(p) for p in paths if p.exists()]
    if existing and not overwrite:
        raise FileExistsError(f"refusing to overwrite {', '.join(existing)}")


def _write_certificate(path: Path, certificate: x509.Certificate) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    os.chmod(tmp, 0o644)  # certificates are public
    os.replace(tmp, path)


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    write_private_file(path, pem)


def create_ca(
    out_dir: Path, *, common_name: str = "TheODen test CA", days: int = 365, overwrite: bool = False
) -> tuple[Path, Path]:
    """Create a self-signed CA in ``out_dir`` and return the paths of ``ca.pem`` and ``ca-key.pem``.

    The CA may sign end-entity certificates only (path length 0). Its key file has mode 0600.

    Raises:
        FileExistsError: the files exist and ``overwrite`` is false.
    """
    _check_days(days)
    out_dir = Path(out_dir)
    cert_path, key_path = out_dir / "ca.pem", out_dir / "ca-key.pem"
    _refuse_overwrite([cert_path, key_path], overwrite)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = dt.datetime.now(dt.UTC)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + dt.timedelta(days=days))
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
        .add_extension(ski, critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
        .sign(key, hashes.SHA256())
    )
    _write_key(key_path, key)
    _write_certificate(cert_path, certificate)
    return cert_path, key_path


def _subject_alternative_names(hosts: Sequence[str]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return names


def create_server_certificate(
    out_dir: Path,
    *,
    ca_cert: Path,
    ca_key: Path,
    hosts: Sequence[str] = ("localhost", "127.0.0.1"),
    days: int = 365,
    overwrite: bool = False,
) -> tuple[Path, Path]:
    """Create a server certificate signed by the CA and return the paths of ``server.pem`` and ``server-key.pem``.

    ``hosts`` are the DNS names and IP addresses clients connect to; each goes into the certificate's
    subject alternative names, which is what clients check. The key file has mode 0600.

    Raises:
        FileExistsError: the files exist and ``overwrite`` is false.
        ValueError: no hosts, or the CA key does not belong to the CA certificate.
    """
    _check_days(days)
    hosts = [h.strip() for h in hosts if h.strip()]
    if not hosts:
        raise ValueError("at least one host name or IP address is needed for a server certificate")
    out_dir = Path(out_dir)
    cert_path, key_path = out_dir / "server.pem", out_dir / "server-key.pem"
    _refuse_overwrite([cert_path, key_path], overwrite)
    authority, authority_key = _load_authority(Path(ca_cert), Path(ca_key))
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    not_after = min(now + dt.timedelta(days=days), authority.not_valid_after_utc)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
        .issuer_name(authority.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(not_after)
        .add_extension(x509.SubjectAlternativeName(_subject_alternative_names(hosts)), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(_authority_key_identifier(authority, authority_key), critical=False)
        .sign(authority_key, hashes.SHA256())
    )
    _write_key(key_path, key)
    _write_certificate(cert_path, certificate)
    return cert_path, key_path


def _authority_key_identifier(
    authority: x509.Certificate, key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
) -> x509.AuthorityKeyIdentifier:
    # Prefer the CA's own key identifier: a site CA may not compute it the way cryptography does.
    try:
        ski = authority.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    except x509.ExtensionNotFound:
        return x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key())
    return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)


def _load_authority(
    ca_cert: Path, ca_key: Path
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey]:
    authority = x509.load_pem_x509_certificate(ca_cert.read_bytes())
    try:
        key = serialization.load_pem_private_key(ca_key.read_bytes(), password=None)
    except TypeError:
        raise ValueError(f"{ca_key} is encrypted; give an unencrypted copy of the CA key") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise ValueError(f"{ca_key}: only EC and RSA CA keys are supported")
    spki = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    if key.public_key().public_bytes(*spki) != authority.public_key().public_bytes(*spki):
        raise ValueError(f"{ca_key} is not the key of {ca_cert}")
    return authority, key


def create_test_pki(out_dir: Path, *, hosts: Sequence[str] = ("localhost", "127.0.0.1")) -> dict[str, Path]:
    """Create a throw-away CA and server certificate in ``out_dir`` (replacing earlier ones).

    Returns:
        ``{"ca": ca.pem, "ca_key": ca-key.pem, "cert": server.pem, "key": server-key.pem}``.
    """
    ca_cert, ca_key = create_ca(out_dir, overwrite=True)
    cert, key = create_server_certificate(out_dir, ca_cert=ca_cert, ca_key=ca_key, hosts=hosts, overwrite=True)
    return {"ca": ca_cert, "ca_key": ca_key, "cert": cert, "key": key}
