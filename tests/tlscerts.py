"""Throwaway certificates for TLS tests, made with the `cryptography` package.

One trusted CA signs the server certificate and the good, expired and second client
certificates; a second, untrusted CA signs a client and a server certificate.  All keys
are RSA 2048 (what the BCP 195 profile and DCMTK's default profile expect), written
unencrypted as PEM into a directory the test owns.
"""
from __future__ import annotations

import datetime
import hashlib
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

_DAY = datetime.timedelta(days=1)


@dataclass(frozen=True)
class Pair:
    """A certificate and its key on disk, and the certificate's SHA-256 fingerprint."""

    cert: Path
    key: Path
    sha256: str


@dataclass(frozen=True)
class PKI:
    ca: Path            # trusted CA certificate (the server's and our ca_file)
    other_ca: Path      # a CA nobody trusts here
    server: Pair        # CN "pacs.test", SAN 127.0.0.1 and localhost; server and client
    client: Pair        # CN "modality-1", valid
    client2: Pair       # CN "modality-2", valid
    expired: Pair       # CN "modality-1", expired yesterday
    foreign: Pair       # CN "modality-1", signed by other_ca
    foreign_server: Pair  # like server, signed by other_ca


def _key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _ca(cn: str) -> tuple[x509.Certificate, rsa.RSAPrivateKey]:
    key = _key()
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(_name(cn))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - _DAY).not_valid_after(now + 30 * _DAY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False,
                                         False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                           critical=False)
            .sign(key, hashes.SHA256()))
    return cert, key


def _leaf(directory: Path, name: str, cn: str, ca: tuple[x509.Certificate, rsa.RSAPrivateKey],
          key: rsa.RSAPrivateKey, server: bool, expired: bool = False) -> Pair:
    ca_cert, ca_key = ca
    now = datetime.datetime.now(datetime.timezone.utc)
    start, end = (now - 30 * _DAY, now - _DAY) if expired else (now - _DAY, now + 30 * _DAY)
    builder = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(ca_cert.subject)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(start).not_valid_after(end)
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(x509.ExtendedKeyUsage(  # a node certificate serves both ways
                   [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH] if server
                   else [ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                   ca_key.public_key()), critical=False))
    if server:
        builder = builder.add_extension(x509.SubjectAlternativeName(
            [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    cert_path, key_path = directory / f"{name}.crt", directory / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.TraditionalOpenSSL,
                                           serialization.NoEncryption()))
    key_path.chmod(0o600)
    sha256 = hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()
    return Pair(cert_path, key_path, sha256)


def make_pki(directory: Path) -> PKI:
    """Write a complete throwaway PKI into `directory` (about a second of key generation)."""
    directory.mkdir(parents=True, exist_ok=True)
    ca, other = _ca("pacs-engine test CA"), _ca("untrusted test CA")
    for path, (cert, _) in ((directory / "ca.crt", ca), (directory / "other-ca.crt", other)):
        path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    server_key, client_key = _key(), _key()
    return PKI(
        ca=directory / "ca.crt",
        other_ca=directory / "other-ca.crt",
        server=_leaf(directory, "server", "pacs.test", ca, server_key, server=True),
        client=_leaf(directory, "client", "modality-1", ca, client_key, server=False),
        client2=_leaf(directory, "client2", "modality-2", ca, _key(), server=False),
        expired=_leaf(directory, "expired", "modality-1", ca, client_key, server=False,
                      expired=True),
        foreign=_leaf(directory, "foreign", "modality-1", other, client_key, server=False),
        foreign_server=_leaf(directory, "foreign-server", "pacs.test", other, server_key,
                             server=True),
    )
