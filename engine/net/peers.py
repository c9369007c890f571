"""The known-peer table: which calling AE titles may associate, from where, with what.

A calling AE title is only a claim; an entry binds it to what the connection
proves: the source address (IP or network) and, over TLS, the verified client
certificate (subject CN and/or SHA-256 fingerprint).  A listed AE title that
does not meet its entry is always refused (someone is using its name); an
unlisted one is refused only with `deny_unknown`, so a fresh install stays open.
Refusals are A-ASSOCIATE-RJ 1/1/3 (calling AE title not recognised); the reason
goes to the log only, never to the peer.  The older `[network]
allowed_calling_ae_titles` list means: those AE titles are known (without
constraints) and every other one is unknown and refused.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Iterable

from engine.config import PeerConfig, SecurityConfig
from engine.net.tls import PeerIdentity

_Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class KnownPeer:
    ae_title: str
    networks: tuple[_Network, ...] = ()
    certificate_cn: str = ""
    certificate_sha256: str = ""

    @classmethod
    def from_config(cls, peer: PeerConfig) -> "KnownPeer":
        return cls(peer.ae_title.strip(),
                   tuple(ipaddress.ip_network(a, strict=False) for a in peer.addresses),
                   peer.certificate_cn, peer.certificate_sha256.replace(":", "").lower())

    def mismatch(self, who: PeerIdentity) -> str | None:
        """Why `who` is not this peer, or None when every constraint holds."""
        if self.networks and not _in_networks(who.ip, self.networks):
            return f"source address {who.ip} is not one of its addresses"
        if (self.certificate_cn or self.certificate_sha256) and not who.certificate_sha256:
            return "no verified TLS client certificate (its entry requires one)"
        if self.certificate_cn and self.certificate_cn.casefold() not in {
                cn.casefold() for cn in who.certificate_cns}:
            return (f"client certificate CN {', '.join(who.certificate_cns) or '(none)'!r} "
                    f"is not {self.certificate_cn!r}")
        if self.certificate_sha256 and self.certificate_sha256 != who.certificate_sha256:
            return "client certificate fingerprint differs from its entry"
        return None


def _in_networks(ip: str, networks: tuple[_Network, ...]) -> bool:
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped  # ::ffff:10.0.0.5 on a dual-stack socket
    return any(address in network for network in networks)


class PeerTable:
    """Decides, per A-ASSOCIATE-RQ, whether the calling AE title may associate."""

    def __init__(self, peers: Iterable[KnownPeer] = (), deny_unknown: bool = False) -> None:
        self.peers = {peer.ae_title: peer for peer in peers}
        self.deny_unknown = deny_unknown

    @classmethod
    def from_config(cls, security: SecurityConfig,
                    allowed_calling_ae_titles: Iterable[str] = ()) -> "PeerTable":
        peers = [KnownPeer.from_config(p) for p in security.peers]
        listed = {p.ae_title for p in peers}
        allowed = [ae.strip() for ae in allowed_calling_ae_titles]
        peers += [KnownPeer(ae) for ae in dict.fromkeys(allowed) if ae not in listed]
        return cls(peers, security.deny_unknown or bool(allowed))

    @property
    def active(self) -> bool:
        """False when the table can refuse nobody (nothing to check per association)."""
        return bool(self.peers) or self.deny_unknown

    def refusal(self, calling_ae_title: str, who: PeerIdentity) -> str | None:
        """Why the association must be refused (for the log), or None to admit it."""
        peer = self.peers.get(calling_ae_title.strip())
        if peer is None:
            return "calling AE title is not a known peer" if self.deny_unknown else None
        why = peer.mismatch(who)
        return f"does not match its known-peer entry: {why}" if why else None


__all__ = ["KnownPeer", "PeerTable"]
