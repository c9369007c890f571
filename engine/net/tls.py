"""SSL contexts for DICOM TLS (PS3.15 B.9/B.10, the BCP 195 profiles) and who a peer is.

Both directions use the standard `ssl` module with the same settings: TLS 1.2 or
newer, and on TLS 1.2 only ECDHE/DHE key exchange with AEAD ciphers (forward
secrecy, no CBC, no RSA key transport), at OpenSSL security level 2 (RSA keys of
2048 bits and more, no SHA-1 signatures).  TLS 1.3 suites are all AEAD already.
Contexts are built once at start-up; a missing or unreadable file is a
`ConfigError` naming the option, before anything listens.
"""
from __future__ import annotations

import hashlib
import ssl
from dataclasses import dataclass

from engine.config import ConfigError, TLSConfig

#: TLS 1.2 cipher suites: ephemeral key exchange and AEAD only (BCP 195 / RFC 9325 4.2).
BCP195_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:DHE+AESGCM:DHE+CHACHA20:!aNULL:!eNULL:@SECLEVEL=2"

_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}


def _base(purpose: int, tls: TLSConfig) -> ssl.SSLContext:
    ctx = ssl.SSLContext(purpose)
    ctx.minimum_version = _VERSIONS[tls.min_version]
    ctx.set_ciphers(BCP195_CIPHERS)
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    if tls.certificate:
        try:
            ctx.load_cert_chain(tls.certificate, tls.key)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"[tls] cannot load certificate {tls.certificate!r} with key "
                              f"{tls.key!r}: {_why(exc)}") from exc
    if tls.ca_file:
        try:
            ctx.load_verify_locations(cafile=tls.ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"[tls] cannot load ca_file {tls.ca_file!r}: {_why(exc)}") from exc
    return ctx


def _why(exc: BaseException) -> str:
    return getattr(exc, "strerror", None) or getattr(exc, "reason", None) or str(exc)


def server_context(tls: TLSConfig) -> ssl.SSLContext:
    """The TLS listener's context: our certificate; client certificates checked against
    ca_file, required when `require_client_certificate`, else verified when presented."""
    ctx = _base(ssl.PROTOCOL_TLS_SERVER, tls)
    ctx.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    if tls.require_client_certificate:
        ctx.verify_mode = ssl.CERT_REQUIRED
    elif tls.ca_file:
        ctx.verify_mode = ssl.CERT_OPTIONAL
    else:
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def client_context(tls: TLSConfig) -> ssl.SSLContext:
    """Outgoing TLS associations: the peer's certificate must chain to ca_file (and name
    the host when `check_hostname`); ours, if configured, is offered as client certificate."""
    ctx = _base(ssl.PROTOCOL_TLS_CLIENT, tls)
    ctx.check_hostname = tls.check_hostname
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


@dataclass(frozen=True)
class PeerIdentity:
    """What we know of the other end of a connection when its A-ASSOCIATE-RQ arrives."""

    ip: str
    tls: bool = False
    #: Subject common names of the client certificate (verified against ca_file).
    certificate_cns: tuple[str, ...] = ()
    #: SHA-256 of the client certificate (DER), lowercase hex; "" without one.
    certificate_sha256: str = ""


def peer_identity(ip: str, ssl_object: ssl.SSLObject | ssl.SSLSocket | None) -> PeerIdentity:
    """The identity of a connection; a certificate counts only if it was verified (an
    unverified one is never requested: CERT_NONE asks for none)."""
    if ssl_object is None:
        return PeerIdentity(ip)
    der = ssl_object.getpeercert(binary_form=True)
    decoded = ssl_object.getpeercert() if der else None
    if not der or not decoded:
        return PeerIdentity(ip, tls=True)
    cns = tuple(value for rdn in decoded.get("subject", ()) for key, value in rdn
                if key == "commonName")
    return PeerIdentity(ip, True, cns, hashlib.sha256(der).hexdigest())


__all__ = ["BCP195_CIPHERS", "PeerIdentity", "client_context", "peer_identity",
           "server_context"]
