"""Choosing the protocol version, and the TLS 1.2 parameters, from a ClientHello.

Pure functions over the config and the parsed hello, each raising the alert
its RFC names. ``choose_version`` runs first for every ClientHello; the TLS
1.3 path then goes on in ``_negotiate``, the TLS 1.2 path here.
"""
from __future__ import annotations

import dataclasses

from ._codec import GROUP_IDS, GROUP_NAMES, SCHEME_IDS, TLS12, TLS13, ClientHello
from ._codec12 import Hello12Extensions
from ._config import GROUPS_ECDHE, CertificateEntry, ServerConfig
from ._errors import (
    AlertDescription, HandshakeFailure, IllegalParameter, ProtocolVersionError, TLSPeerError,
)
from ._keyschedule12 import SUITES12, SUITES12_BY_ID, CipherSuite12
from ._tickets import TicketState, open_ticket

_VERSION_NAMES = {TLS13: "1.3", TLS12: "1.2"}
#: The key types each TLS 1.2 suite's "auth" part can be served with.
_AUTH_KEY_TYPES = {"ecdsa": ("ecdsa-p256", "ecdsa-p384", "ed25519"), "rsa": ("rsa",)}
_CERT_CURVES = {"ecdsa-p256": "secp256r1", "ecdsa-p384": "secp384r1"}


class InappropriateFallback(TLSPeerError):
    """RFC 7507 §3: TLS_FALLBACK_SCSV from a client that could do better."""

    alert = AlertDescription.inappropriate_fallback


def choose_version(config: ServerConfig, ch: ClientHello) -> str:
    """ "1.3" or "1.2": the highest version both sides enable.

    RFC 8446 §4.2.1: with supported_versions, legacy_version is ignored;
    without it, legacy_version is the client's highest version. Everything
    below TLS 1.2 is refused (RFC 8996).
    """
    if ch.supported_versions is not None:
        offered = [_VERSION_NAMES[v] for v in ch.supported_versions if v in _VERSION_NAMES]
        client_max = max(offered, default=None)
    else:
        offered = ["1.2"] if ch.legacy_version >= TLS12 else []
        client_max = "1.2" if offered else None
    common = [v for v in config.versions if v in offered]
    if not common:
        what = ("legacy_version 0x%04x" % ch.legacy_version if ch.supported_versions is None
                else "versions " + ", ".join("0x%04x" % v for v in ch.supported_versions))
        raise ProtocolVersionError(f"ClientHello offers no version we serve ({what}; we serve "
                                   + ", ".join(config.versions) + ")")
    if TLS_FALLBACK_SCSV_ID in ch.cipher_suites and max(config.versions) > client_max:
        raise InappropriateFallback(f"TLS_FALLBACK_SCSV with TLS {client_max}, we serve "
                                    f"{max(config.versions)}")
    return max(common)


TLS_FALLBACK_SCSV_ID = 0x5600


@dataclasses.dataclass(frozen=True, slots=True)
class Choice12:
    suite: CipherSuite12
    certificate: CertificateEntry
    scheme: str
    sni_matched: bool


def choose_suite_and_certificate(config: ServerConfig, ch: ClientHello) -> Choice12:
    """The first suite of ours the client offers that one of the SNI's
    certificates can serve with a signature scheme the client offers."""
    if ch.signature_algorithms is None:
        # RFC 5246 §7.4.1.4.1: no extension means SHA-1, which we never sign with.
        raise HandshakeFailure("TLS 1.2 ClientHello without signature_algorithms (SHA-1 only)")
    offered_suites = set(ch.cipher_suites)
    offered_schemes = set(ch.signature_algorithms)
    candidates, sni_matched = config.rank_certificates(ch.server_name)
    for name in config.cipher_suites:
        suite = SUITES12.get(name)
        if suite is None or suite.id not in offered_suites:
            continue
        for entry in candidates:
            if entry.key_type not in _AUTH_KEY_TYPES[suite.auth]:
                continue
            curve = _CERT_CURVES.get(entry.key_type)
            if curve is not None and ch.groups is not None and GROUP_IDS[curve] not in ch.groups:
                # RFC 8422 §5.1: the client's supported_groups also bound the
                # curve of an ECDSA server certificate in TLS 1.2.
                continue
            for scheme in config.signature_schemes:
                if scheme in entry.schemes and SCHEME_IDS[scheme] in offered_schemes:
                    return Choice12(suite, entry, scheme, sni_matched)
    raise HandshakeFailure("no TLS 1.2 suite in common with a certificate and signature scheme "
                           "the client accepts: client offers suites "
                           + ", ".join("0x%04x" % s for s in ch.cipher_suites))


def choose_group12(config: ServerConfig, ch: ClientHello) -> str:
    # draft-ietf-tls-ecdhe-mlkem: the hybrids are TLS 1.3 only, never a TLS 1.2
    # curve, even when a client lists them (ServerConfig keeps one ECDHE group
    # whenever 1.2 is served).
    groups = [name for name in config.groups if name in GROUPS_ECDHE]
    if ch.groups is None:
        # RFC 8422 §4: without supported_groups the server may pick any curve.
        return "secp256r1" if "secp256r1" in groups else groups[0]
    for name in groups:
        if GROUP_IDS[name] in ch.groups:
            return name
    raise HandshakeFailure("no ECDHE group in common: client offers "
                           + ", ".join(GROUP_NAMES.get(g, "0x%04x" % g) for g in ch.groups))


def check_hello12(config: ServerConfig, ch: ClientHello, ext: Hello12Extensions) -> None:
    if 0 not in ch.compression_methods:
        # RFC 5246 §7.4.1.2: the null method MUST be offered.
        raise IllegalParameter("ClientHello: legacy_compression_methods without null")
    if config.require_extended_master_secret and not ext.extended_master_secret:
        # RFC 7627 §5.2: a server MAY abort a handshake without the extension.
        raise HandshakeFailure("TLS 1.2 ClientHello without extended_master_secret (RFC 7627)")


def accept_ticket12(config: ServerConfig, ch: ClientHello, ext: Hello12Extensions,
                    now_s: float) -> tuple[TicketState, CipherSuite12] | None:
    """The session a TLS 1.2 session ticket (RFC 5077) resumes, or None (full handshake).

    Tickets are sealed under the same rotating keys as TLS 1.3 tickets; a
    TLS 1.2 ticket carries a TLS 1.2 suite id (and the master secret as its
    secret), so neither version resumes the other's tickets. Only sessions
    with the extended master secret are ticketed, so a resuming client must
    offer it too (RFC 7627 §5.3).
    """
    if not ext.session_ticket or not config.tickets.enabled:
        return None
    state = open_ticket(config.ticket_keyring.all(), ext.session_ticket)
    if state is None:
        return None
    suite = SUITES12_BY_ID.get(state.suite_id)
    if suite is None or suite.name not in config.cipher_suites or suite.id not in ch.cipher_suites:
        return None
    age_ms = int(now_s * 1000) - state.issued_at_ms
    if age_ms < 0 or age_ms > config.tickets.lifetime_s * 1000:
        return None
    if state.server_name != (ch.server_name or "").lower().rstrip("."):
        return None
    if not ext.extended_master_secret:
        # RFC 7627 §5.3: the original session used EMS, this hello does not.
        raise HandshakeFailure("resumption without extended_master_secret of an EMS session")
    return state, suite
