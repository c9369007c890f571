"""The known-peer table, the TLS contexts and identities it judges, and where it plugs in."""
from __future__ import annotations

import ssl

import pytest

from engine.config import ConfigError, PeerConfig, SecurityConfig, TLSConfig, config_from_mapping
from engine.net.acse import REJECT_CALLING_AE_NOT_RECOGNIZED, AcceptorPolicy, AssociationNegotiator
from engine.net.peers import KnownPeer, PeerTable
from engine.net.requestor import AssociationFailed, tls_context
from engine.net.tls import PeerIdentity, client_context, peer_identity, server_context
from tests.rawclient import associate_rq_bytes
from tests.tlscerts import PKI, make_pki

FINGERPRINT = "ab" * 32
VERIFICATION = [("1.2.840.10008.1.1", ["1.2.840.10008.1.2"])]


def table(*peers: PeerConfig, deny_unknown: bool = False, allowed=()) -> PeerTable:
    return PeerTable.from_config(SecurityConfig(deny_unknown, peers), allowed)


def tls_peer(ip: str = "127.0.0.1", cns=("modality-1",), sha256=FINGERPRINT) -> PeerIdentity:
    return PeerIdentity(ip, True, cns, sha256)


# --- the table --------------------------------------------------------------------------
def test_an_empty_table_admits_everyone_and_is_inactive():
    peers = table()
    assert not peers.active
    assert peers.refusal("ANYONE", PeerIdentity("10.1.2.3")) is None


def test_unknown_ae_titles_are_refused_only_with_deny_unknown():
    assert table(PeerConfig("CT1")).refusal("MR9", PeerIdentity("10.0.0.1")) is None
    why = table(PeerConfig("CT1"), deny_unknown=True).refusal("MR9", PeerIdentity("10.0.0.1"))
    assert why == "calling AE title is not a known peer"
    assert table(deny_unknown=True).active


def test_a_known_ae_title_without_constraints_is_admitted_from_anywhere():
    peers = table(PeerConfig("CT1"), deny_unknown=True)
    assert peers.refusal("CT1", PeerIdentity("203.0.113.9")) is None
    assert peers.refusal("  CT1 ", PeerIdentity("203.0.113.9")) is None  # padding spaces


@pytest.mark.parametrize("ip, admitted", [
    ("10.0.0.5", True), ("10.0.1.200", True), ("10.0.2.1", False), ("192.168.7.7", True),
    ("192.168.7.8", False), ("::ffff:10.0.1.9", True), ("2001:db8::42", True),
    ("2001:db9::1", False), ("", False), ("not-an-ip", False)])
def test_source_addresses_and_networks(ip, admitted):
    peers = table(PeerConfig("CT1", ("10.0.0.5", "10.0.1.0/24", "192.168.7.7",
                                     "2001:db8::/32")))
    why = peers.refusal("CT1", PeerIdentity(ip))
    assert (why is None) == admitted
    if not admitted:
        assert f"source address {ip} is not one of its addresses" in why


def test_a_known_ae_title_from_elsewhere_is_refused_even_without_deny_unknown():
    peers = table(PeerConfig("CT1", ("10.0.0.5",)), deny_unknown=False)
    assert peers.refusal("CT1", PeerIdentity("10.0.0.6")) is not None


def test_certificate_cn_is_required_and_compared_without_case():
    peers = table(PeerConfig("CT1", certificate_cn="Modality-1"))
    assert peers.refusal("CT1", tls_peer(cns=("modality-1",))) is None
    assert "no verified TLS client certificate" in peers.refusal("CT1", PeerIdentity("1.2.3.4"))
    assert "no verified TLS client certificate" in peers.refusal(
        "CT1", PeerIdentity("1.2.3.4", tls=True))  # TLS, but no certificate
    assert "CN 'modality-2' is not 'Modality-1'" in peers.refusal(
        "CT1", tls_peer(cns=("modality-2",)))


def test_certificate_fingerprint_must_match_exactly():
    peers = table(PeerConfig("CT1", certificate_sha256=FINGERPRINT))
    assert peers.refusal("CT1", tls_peer()) is None
    assert "fingerprint differs" in peers.refusal("CT1", tls_peer(sha256="cd" * 32))


def test_every_constraint_of_an_entry_must_hold():
    peers = table(PeerConfig("CT1", ("10.0.0.0/8",), "modality-1", FINGERPRINT))
    assert peers.refusal("CT1", tls_peer("10.9.9.9")) is None
    assert peers.refusal("CT1", tls_peer("11.0.0.1")) is not None
    assert peers.refusal("CT1", tls_peer("10.9.9.9", cns=("x",))) is not None
    assert peers.refusal("CT1", tls_peer("10.9.9.9", sha256="00" * 32)) is not None


def test_allowed_calling_ae_titles_fold_into_the_table():
    peers = table(PeerConfig("CT1", ("10.0.0.5",)), allowed=("OLD1", "CT1", " OLD2 "))
    assert peers.deny_unknown  # the old list always meant "nobody else"
    assert peers.refusal("OLD1", PeerIdentity("203.0.113.1")) is None
    assert peers.refusal("OLD2", PeerIdentity("203.0.113.1")) is None
    assert peers.refusal("CT1", PeerIdentity("203.0.113.1")) is not None  # entry still binds
    assert peers.refusal("NEW", PeerIdentity("10.0.0.5")) is not None


def test_known_peer_from_config_normalises_the_fingerprint():
    peer = KnownPeer.from_config(PeerConfig("CT1", certificate_sha256=":".join(
        ["AB"] * 32)))
    assert peer.certificate_sha256 == FINGERPRINT


# --- config ---------------------------------------------------------------------------------
def tls_section(**extra):
    return {"port": 2762, "certificate": "/c.pem", "key": "/k.pem", "ca_file": "/ca.pem",
            **extra}


def test_peers_parse_from_the_config():
    config = config_from_mapping({"tls": tls_section(), "security": {
        "deny_unknown": True, "peers": [
            {"ae_title": "CT1", "addresses": ["10.0.0.5", "10.1.0.0/16"]},
            {"ae_title": " MR1 ", "certificate_cn": "mr1.example",
             "certificate_sha256": ":".join(["AB"] * 32)}]}})
    assert config.security == SecurityConfig(True, (
        PeerConfig("CT1", ("10.0.0.5", "10.1.0.0/16")),
        PeerConfig("MR1", (), "mr1.example", FINGERPRINT)))
    # with_overrides round-trips the parsed table
    assert config.with_overrides(security={"deny_unknown": True}) == config


@pytest.mark.parametrize("peers, message", [
    ([{"ae_title": "CT1"}, {"ae_title": "CT1 "}], "listed twice"),
    ([{"ae_title": "CT1", "addresses": ["10.0.0.300"]}], "not an IP address"),
    ([{"ae_title": "CT1", "addresses": "10.0.0.1"}], "addresses"),
    ([{"ae_title": "CT1", "certificate_sha256": "abc"}], "64 hex digits"),
    ([{"ae_title": "CT1", "colour": "blue"}], "colour"),
    ([{"ae_title": ""}], "ae_title"),
    ([{"ae_title": "SEVENTEEN_CHARS__"}], "ae_title"),
    ([{"addresses": ["10.0.0.1"]}], "ae_title"),
    (["CT1"], "expected a table"),
    ({"ae_title": "CT1"}, "array of tables"),
])
def test_bad_peer_entries_raise_config_error(peers, message):
    with pytest.raises(ConfigError, match=message):
        config_from_mapping({"security": {"peers": peers}})


def test_a_certificate_bound_peer_needs_a_tls_listener_and_ca():
    with pytest.raises(ConfigError, match="bound to a client certificate"):
        config_from_mapping({"security": {"peers": [{"ae_title": "CT1",
                                                      "certificate_cn": "ct1"}]}})


# --- where the table plugs in: A-ASSOCIATE-RQ negotiation ------------------------------------
def test_negotiator_asks_admit_last_and_rejects_1_1_3_without_caching_it():
    negotiator = AssociationNegotiator(AcceptorPolicy("PACS", 1 << 20))
    raw = associate_rq_bytes(VERIFICATION, calling="CT1")
    asked = []
    refused = negotiator.negotiate(raw, admit=lambda ae: asked.append(ae) or False)
    assert asked == ["CT1"]
    assert not refused.accepted and refused.reject_reason == REJECT_CALLING_AE_NOT_RECOGNIZED
    assert refused.response[0] == 0x03 and tuple(refused.response[7:10]) == (1, 1, 3)
    assert negotiator.negotiate(raw, admit=lambda ae: True).accepted
    assert negotiator.negotiate(raw).accepted


def test_negotiator_does_not_ask_admit_for_requests_it_rejects_anyway():
    negotiator = AssociationNegotiator(AcceptorPolicy("PACS", 1 << 20,
                                                      require_called_ae_title=True))
    asked = []
    result = negotiator.negotiate(associate_rq_bytes(VERIFICATION, called="OTHER"),
                                  admit=lambda ae: asked.append(ae) or True)
    assert result.reject_reason == (1, 1, 7) and asked == []
    result = negotiator.negotiate(associate_rq_bytes(VERIFICATION), over_limit=True,
                                  admit=lambda ae: asked.append(ae) or True)
    assert result.reject_reason == (2, 3, 2) and asked == []


# --- TLS contexts and the identity of a TLS peer ---------------------------------------------
@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> PKI:
    return make_pki(tmp_path_factory.mktemp("pki"))


def tls(pki: PKI, **extra) -> TLSConfig:
    return TLSConfig(**{"port": 2762, "certificate": str(pki.server.cert),
                        "key": str(pki.server.key), "ca_file": str(pki.ca), **extra})


def handshake(server: ssl.SSLContext, client: ssl.SSLContext):
    """A complete handshake between two in-memory SSL objects (no sockets); the server's."""
    s_in, s_out, c_in, c_out = (ssl.MemoryBIO() for _ in range(4))
    server_side = server.wrap_bio(s_in, s_out, server_side=True)
    client_side = client.wrap_bio(c_in, c_out, server_hostname="127.0.0.1")
    done = set()
    for _ in range(20):  # a handshake is a few flights
        for name, side, out, peer_in in (("c", client_side, c_out, s_in),
                                         ("s", server_side, s_out, c_in)):
            try:
                side.do_handshake()
                done.add(name)
            except ssl.SSLWantReadError:
                pass
            peer_in.write(out.read())
        if done == {"c", "s"}:
            return server_side
    raise AssertionError("handshake did not finish")


def test_bcp195_settings(pki):
    for ctx in (server_context(tls(pki)), client_context(tls(pki))):
        assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2
        assert ctx.options & ssl.OP_NO_COMPRESSION and ctx.options & ssl.OP_NO_RENEGOTIATION
        tls12 = [c for c in ctx.get_ciphers() if c["protocol"] == "TLSv1.2"]
        assert tls12 and all(c["kea"] in ("kx-ecdhe", "kx-dhe") and c["aead"] for c in tls12)
    assert server_context(tls(pki, min_version="1.3")).minimum_version == \
        ssl.TLSVersion.TLSv1_3


def test_client_verification_modes(pki):
    assert server_context(tls(pki)).verify_mode == ssl.CERT_REQUIRED
    assert server_context(tls(pki, require_client_certificate=False)).verify_mode == \
        ssl.CERT_OPTIONAL
    assert server_context(tls(pki, require_client_certificate=False, ca_file="")
                          ).verify_mode == ssl.CERT_NONE
    client = client_context(tls(pki))
    assert client.verify_mode == ssl.CERT_REQUIRED and client.check_hostname
    assert not client_context(tls(pki, check_hostname=False)).check_hostname


@pytest.mark.parametrize("option, value, message", [
    ("certificate", "/nonexistent/cert.pem", "cannot load certificate"),
    ("ca_file", "/nonexistent/ca.pem", "cannot load ca_file"),
])
def test_unreadable_files_raise_config_error_naming_them(pki, option, value, message):
    with pytest.raises(ConfigError, match=message):
        server_context(tls(pki, **{option: value}))


def test_a_key_that_is_not_the_certificates_raises_config_error(pki):
    with pytest.raises(ConfigError, match="cannot load certificate"):
        server_context(tls(pki, key=str(pki.client2.key)))


def test_peer_identity_of_a_verified_client_certificate(pki):
    client = client_context(tls(pki, certificate=str(pki.client.cert),
                                key=str(pki.client.key)))
    server_side = handshake(server_context(tls(pki)), client)
    assert peer_identity("10.0.0.5", server_side) == PeerIdentity(
        "10.0.0.5", True, ("modality-1",), pki.client.sha256)


def test_peer_identity_without_a_client_certificate(pki):
    server_side = handshake(server_context(tls(pki, require_client_certificate=False)),
                            client_context(tls(pki, certificate="", key="")))
    assert peer_identity("10.0.0.5", server_side) == PeerIdentity("10.0.0.5", True)
    assert peer_identity("10.0.0.5", None) == PeerIdentity("10.0.0.5")


def test_a_tls_destination_is_never_reached_in_clear():
    assert tls_context(False, None) is None
    with pytest.raises(AssociationFailed, match="requires TLS"):
        tls_context(True, None)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    assert tls_context(True, ctx) is ctx and tls_context(False, ctx) is None
