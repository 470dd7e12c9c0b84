"""Choosing parameters from a ClientHello: version, suite, group, certificate,
signature scheme, ALPN, PSK. Pure functions over the config and the parsed
hello, each raising the alert RFC 8446 names for its failure.
"""
from __future__ import annotations

import dataclasses
import hmac

from ._codec import (
    GROUP_IDS, GROUP_NAMES, PSK_DHE_KE, TLS13, ClientHello,
)
from ._config import CertificateEntry, ServerConfig
from ._errors import (
    DecryptError, HandshakeFailure, IllegalParameter, MissingExtension, NoApplicationProtocol,
    ProtocolVersionError,
)
from ._keyschedule import SUITES, SUITES_BY_ID, CipherSuite, EarlySecret
from ._tickets import TicketState, open_ticket


def check_version(ch: ClientHello) -> None:
    # RFC 8446 §4.2.1: TLS 1.3 is negotiated only through supported_versions;
    # a client without it (or without 0x0304 in it) speaks TLS ≤ 1.2 only.
    if ch.supported_versions is None or TLS13 not in ch.supported_versions:
        offered = ("legacy_version 0x%04x" % ch.legacy_version if ch.supported_versions is None
                   else "versions " + ", ".join("0x%04x" % v for v in ch.supported_versions))
        raise ProtocolVersionError(f"ClientHello offers no TLS 1.3 ({offered})")
    if ch.legacy_version < 0x0303:
        # RFC 8446 §4.1.2: a TLS 1.3 ClientHello sets legacy_version 0x0303;
        # App. D.5 and RFC 8996: SSL 3.0, TLS 1.0 and 1.1 are not negotiable.
        raise ProtocolVersionError(f"ClientHello offers TLS 1.3 with legacy_version "
                                   f"0x{ch.legacy_version:04x} < 0x0303")
    # RFC 8446 §4.1.2: exactly one compression method, null.
    if ch.compression_methods != b"\x00":
        raise IllegalParameter("ClientHello: legacy_compression_methods must be [null]")


def choose_suite(config: ServerConfig, ch: ClientHello) -> CipherSuite:
    offered = set(ch.cipher_suites)
    for name in config.cipher_suites:
        suite = SUITES.get(name)  # (None: a TLS 1.2 suite)
        if suite is not None and suite.id in offered:
            return suite
    raise HandshakeFailure("no cipher suite in common: client offers "
                           + ", ".join("0x%04x" % s for s in ch.cipher_suites))


def choose_group(config: ServerConfig, ch: ClientHello) -> tuple[str, bytes | None]:
    """(group, client share) — share None means a HelloRetryRequest is needed."""
    if ch.key_shares is None or ch.groups is None:
        # RFC 8446 §9.2: supported_groups and key_share come together.
        missing = "key_share" if ch.key_shares is None else "supported_groups"
        raise MissingExtension(f"ClientHello without {missing}")
    common = [name for name in config.groups if GROUP_IDS[name] in ch.groups]
    if not common:
        # RFC 8446 §4.1.1: no group in common (FFDHE and ids we do not know
        # count for nothing) → handshake_failure, whatever the shares say.
        raise HandshakeFailure("no key exchange group in common: client offers "
                               + ", ".join(GROUP_NAMES.get(g, "0x%04x" % g) for g in ch.groups))
    seen = set()
    for group_id, _ in ch.key_shares:
        # RFC 8446 §4.2.8: one share per group, each in supported_groups. The
        # second rule is checked for the groups we implement only: a share of
        # a group we do not know (GREASE, RFC 8701; a newer group) is ignored.
        if group_id in seen:
            raise IllegalParameter(f"key_share: two shares for group 0x{group_id:04x}")
        if group_id in GROUP_NAMES and group_id not in ch.groups:
            raise IllegalParameter(f"key_share: group 0x{group_id:04x} not in supported_groups")
        seen.add(group_id)
    shares = dict(ch.key_shares)
    for name in common:
        share = shares.get(GROUP_IDS[name])
        if share is not None:
            # (its form — 32 bytes for X25519, an uncompressed point — and an
            # all-zero X25519 result are the provider's to refuse with
            # illegal_parameter, RFC 8446 §4.2.8.1-2, RFC 7748 §6.1)
            return name, share
    return common[0], None


def choose_certificate(config: ServerConfig, ch: ClientHello) -> tuple[CertificateEntry, str, bool]:
    """(entry, signature scheme, whether SNI matched an entry's names)."""
    if ch.signature_algorithms is None:
        raise MissingExtension("ClientHello without signature_algorithms (and no PSK)")
    offered = ch.signature_algorithms  # (a short tuple: `in` beats building a set)
    candidates, sni_matched = config.rank_certificates(ch.server_name)
    for entry in candidates:
        # our preference order, rsa_pkcs1_* left out (RFC 8446 §4.2.3): a per-config table
        for scheme, scheme_id in config.schemes13(entry):
            if scheme_id in offered:
                return entry, scheme, sni_matched
    raise HandshakeFailure("no certificate can sign with a scheme the client offers ("
                           + ", ".join("0x%04x" % s for s in ch.signature_algorithms) + ")")


def choose_alpn(config: ServerConfig, ch: ClientHello) -> str | None:
    if ch.alpn is None or not config.alpn_protocols:
        return None
    offered = set(ch.alpn)
    for proto in config.alpn_protocols:
        if proto.encode() in offered:
            return proto
    # RFC 7301 §3.2: no overlap → no_application_protocol.
    raise NoApplicationProtocol("no ALPN protocol in common: client offers "
                                + ", ".join(repr(p) for p in ch.alpn))


def check_record_size_limit(ch: ClientHello) -> int | None:
    limit = ch.record_size_limit
    if limit is not None and limit < 64:
        # RFC 8449 §4: a value below 64 MUST be answered with illegal_parameter.
        raise IllegalParameter(f"record_size_limit {limit} < 64")
    return limit


@dataclasses.dataclass(frozen=True, slots=True)
class AcceptedPsk:
    index: int
    early: EarlySecret
    state: TicketState


def accept_psk(config: ServerConfig, ch: ClientHello, suite: CipherSuite, transcript,
               now_s: float) -> AcceptedPsk | None:
    """Find a ticket we issued among the offered PSKs and verify its binder.

    ``transcript`` holds everything before this ClientHello (message_hash and
    HelloRetryRequest after a retry). An identity we cannot use is skipped (full
    handshake); a usable one with a wrong binder is fatal (RFC 8446 §4.2.11).
    """
    psks = ch.psks
    if psks is None:
        return None
    if ch.psk_modes is None:
        # RFC 8446 §4.2.9: pre_shared_key requires psk_key_exchange_modes.
        raise MissingExtension("pre_shared_key without psk_key_exchange_modes")
    if not config.tickets.enabled or PSK_DHE_KE not in ch.psk_modes:
        return None
    now_ms = int(now_s * 1000)
    keys = config.ticket_keyring.all()
    for index, (identity, obfuscated_age) in enumerate(psks.identities):
        state = open_ticket(keys, identity)
        if state is None:
            continue
        ticket_suite = SUITES_BY_ID.get(state.suite_id)
        if ticket_suite is None or ticket_suite.hash_name != suite.hash_name:
            continue
        age_ms = now_ms - state.issued_at_ms
        if age_ms < 0 or age_ms > config.tickets.lifetime_s * 1000:
            continue
        if state.server_name != (ch.server_name or "").lower().rstrip("."):
            continue
        early = EarlySecret(suite, state.psk)
        h = transcript.copy()
        h.update(ch.raw[:psks.truncated_len])
        expected = early.binder(h.digest())
        if not hmac.compare_digest(expected, psks.binders[index]):
            raise DecryptError(f"PSK binder {index} does not verify")
        return AcceptedPsk(index, early, state)
    return None
