"""A private CA and a server certificate for the broker's TLS listener.

``ensure_tls(DIR, hosts)`` makes ``ca.crt``/``ca.key`` once and a ``server.crt``/``server.key``
signed by it, for 127.0.0.1, localhost and the given hosts. Later runs keep the CA (clients
already trust its ``ca.crt``) and issue the server certificate again only when a host is new or
it is about to expire. Clients pass ``ca.crt`` as ``--ca-file`` (or ``$FEDMQ_CA_FILE``).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ..errors import ConfigError
from .private_files import write_private

CA_DAYS = 3650
SERVER_DAYS = 825
RENEW_BEFORE = dt.timedelta(days=30)
DEFAULT_NAMES = ("127.0.0.1", "localhost")
_WILDCARD_ADDRESSES = {"0.0.0.0", "::", ""}


@dataclass(frozen=True)
class TlsFiles:
    ca_cert: Path
    server_cert: Path
    server_key: Path


def tls_files(folder: Path) -> TlsFiles:
    folder = Path(folder)
    return TlsFiles(folder / "ca.crt", folder / "server.crt", folder / "server.key")


def server_names(hosts: Iterable[str]) -> list[str]:
    """127.0.0.1, localhost and the hosts, without the any-address a broker may listen on."""
    names = list(DEFAULT_NAMES)
    for host in hosts:
        if host not in _WILDCARD_ADDRESSES and host not in names:
            names.append(host)
    return names


def ensure_tls(folder: Path, hosts: Iterable[str] = ()) -> TlsFiles:
    """Make (once) the CA and a server certificate valid for ``server_names(hosts)``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    files = tls_files(folder)
    ca_key_path = folder / "ca.key"
    if files.ca_cert.exists() != ca_key_path.exists():
        raise ConfigError(f"{folder} holds only one of ca.crt and ca.key",
                          hint="restore the missing file, or empty the folder for a new CA (clients then need the new ca.crt)")
    if not files.ca_cert.exists():
        ca_key = ec.generate_private_key(ec.SECP256R1())
        write_private(ca_key_path, _private_pem(ca_key))
        files.ca_cert.write_bytes(_make_ca(ca_key).public_bytes(serialization.Encoding.PEM))
    names = server_names(hosts)
    if not _server_cert_fits(files, names):
        ca_key = serialization.load_pem_private_key(ca_key_path.read_bytes(), password=None)
        ca_cert = x509.load_pem_x509_certificate(files.ca_cert.read_bytes())
        names = _union(_cert_names(files.server_cert), names)
        key = ec.generate_private_key(ec.SECP256R1())
        write_private(files.server_key, _private_pem(key))
        files.server_cert.write_bytes(_make_server_cert(key, ca_key, ca_cert, names).public_bytes(serialization.Encoding.PEM))
    return files


def _private_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _make_ca(key: ec.EllipticCurvePrivateKey) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fedmq private CA")])
    return (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_now() - dt.timedelta(minutes=5)).not_valid_after(_now() + dt.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                                     key_encipherment=False, data_encipherment=False, key_agreement=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )


def _make_server_cert(key: ec.EllipticCurvePrivateKey, ca_key, ca_cert: x509.Certificate,
                      names: list[str]) -> x509.Certificate:
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .issuer_name(ca_cert.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(_now() - dt.timedelta(minutes=5)).not_valid_after(_now() + dt.timedelta(days=SERVER_DAYS))
        .add_extension(x509.SubjectAlternativeName([_general_name(n) for n in names]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )


def _general_name(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def _cert_names(path: Path) -> list[str]:
    if not path.exists():
        return []
    try:
        san = x509.load_pem_x509_certificate(path.read_bytes()).extensions.get_extension_for_class(
            x509.SubjectAlternativeName).value
    except (ValueError, x509.ExtensionNotFound):
        return []
    return [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] + san.get_values_for_type(x509.DNSName)


def _union(old: list[str], new: list[str]) -> list[str]:
    return new + [n for n in old if n not in new]


def _server_cert_fits(files: TlsFiles, names: list[str]) -> bool:
    """True when the server certificate exists, names every host and is not about to expire."""
    if not (files.server_cert.exists() and files.server_key.exists()):
        return False
    try:
        cert = x509.load_pem_x509_certificate(files.server_cert.read_bytes())
    except ValueError:
        return False
    if cert.not_valid_after_utc - _now() < RENEW_BEFORE:
        return False
    have = {_normal(n) for n in _cert_names(files.server_cert)}
    return all(_normal(n) in have for n in names)


def _normal(name: str) -> str:
    try:
        return str(ipaddress.ip_address(name))
    except ValueError:
        return name.lower()
