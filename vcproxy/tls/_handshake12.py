"""The sans-IO TLS 1.2 server handshake (RFC 5246 with RFC 7627, 5746, 5077,
8422): one class per state, commands out, no crypto inside.

Theory of operation
-------------------
``ServerHandshake`` (``_handshake``) reads the ClientHello, chooses the
version (``_negotiate12.choose_version``) and, for TLS 1.2, hands over to
``start``. From there the states below drive the same command vocabulary as
TLS 1.3 (``SendHandshake``, ``SendChangeCipherSpec``, ``KeyExchange``,
``Sign``, ``HandshakeComplete``) plus two of their own:

    InstallRecordKeys(direction, epoch, suite, key, iv)   TLS 1.2 record keys
    SendAlert(level, description)                         a warning alert

TLS 1.2 sends our ECDHE share before it has the client's, so the key
exchange is two provider calls under one ephemeral scalar that the state
keeps (``ecdhe_scalar``; see ``_provider``): keygen against the base point,
then derive against the client's share. When the provider has a
pre-generated share (``key_share``: scalar and public key, used once) the
keygen call is skipped: the ServerKeyExchange signature is asked for at
ClientHello. The client's ChangeCipherSpec is not
a handshake message: the stream feeds it with ``receive_change_cipher_spec``.

Full handshake::

    ClientHello ──▶ ExpectOwnShare ──(KeyExchange vs base point, or a
        pre-generated share at once)──▶ ExpectSignature12
        ──(Sign client_random‖server_random‖params; send SH, Certificate,
           ServerKeyExchange, ServerHelloDone)──▶ ExpectClientKeyExchange
        ──▶ ExpectPreMasterSecret ──(KeyExchange vs client share)──▶ ExpectChangeCipherSpec
        ──(install read keys)──▶ ExpectFinished12
        ──(verify; NewSessionTicket, CCS, install write keys, Finished)──▶ Connected12

Abbreviated handshake (a session ticket we issued, RFC 5077 §3.1)::

    ClientHello ──(SH, CCS, write keys, Finished)──▶ ExpectChangeCipherSpec
        ──▶ ExpectFinished12 ──▶ Connected12

``Connected12`` exists only with a ``FinishedVerified`` proof. It refuses
every renegotiation (a ClientHello) with a ``no_renegotiation`` warning and
goes on (RFC 5746 §4.4 allows the refusal; the connection's data is kept).
"""
from __future__ import annotations

import dataclasses

from . import _codec as c
from . import _codec12 as c12
from ._config import CertificateEntry
from ._errors import AlertDescription, TLSUsageError
from ._commands import (
    Epoch, FinishedVerified, HandshakeComplete, HandshakeInfo, KeyExchange, SendChangeCipherSpec,
    SendHandshake, Sign, State,
)
from ._keyschedule12 import (
    CipherSuite12, KeyBlock, check_client_finished, key_block, master_secret, verify_data,
)
from ._negotiate import choose_alpn
from ._negotiate12 import (
    accept_ticket12, check_hello12, choose_group12, choose_suite_and_certificate,
)
from ._provider import BASE_POINTS, ecdhe_scalar
from ._tickets import TicketState, seal_ticket

WARNING = 1


@dataclasses.dataclass(frozen=True, slots=True)
class InstallRecordKeys:
    direction: str  # "read" | "write"
    epoch: Epoch
    suite: CipherSuite12
    key: bytes = dataclasses.field(repr=False)
    iv: bytes = dataclasses.field(repr=False)


@dataclasses.dataclass(frozen=True, slots=True)
class SendAlert:
    level: int
    description: AlertDescription


@dataclasses.dataclass(slots=True)
class Negotiated12:
    ch: c.ClientHello
    ext: c12.Hello12Extensions
    suite: CipherSuite12
    server_random: bytes
    group: str | None
    alpn: str | None
    server_name: str | None
    sni_matched: bool
    certificate: CertificateEntry | None
    scheme: str | None
    resumed: bool
    master: bytes = dataclasses.field(default=b"", repr=False)

    def info(self) -> HandshakeInfo:
        return HandshakeInfo(self.server_name, self.alpn, self.suite.name, self.group or "",
                             self.resumed, None, False, "TLSv1.2")

    def keys(self) -> KeyBlock:
        return key_block(self.suite, self.master, self.ch.random, self.server_random)


def _server_random(hs, tls13_enabled: bool) -> bytes:
    if tls13_enabled:
        # RFC 8446 §4.1.3: a TLS 1.3 server negotiating TLS 1.2 ends its random
        # with DOWNGRADE_TLS12, so a 1.3 client detects a forced downgrade.
        return hs.random_bytes(24) + c12.DOWNGRADE_TLS12
    return hs.random_bytes(32)


def start(hs, ch: c.ClientHello, message: bytes):
    """The ClientHello of a connection we serve with TLS 1.2: the first state step."""
    config = hs.config
    ext = c12.hello12_extensions(ch)
    check_hello12(config, ch, ext)
    hs.version = "1.2"
    server_random = _server_random(hs, "1.3" in config.versions)
    alpn = choose_alpn(config, ch)
    resumed = accept_ticket12(config, ch, ext, hs.now_s())
    if resumed is not None:
        state, suite = resumed
        hs.transcript = suite.new_hash()
        hs.transcript.update(message)
        neg = Negotiated12(ch, ext, suite, server_random, None, alpn, ch.server_name,
                           False, None, None, True, state.psk)
        return _resume(hs, neg)
    choice = choose_suite_and_certificate(config, ch)
    group = choose_group12(config, ch)
    hs.transcript = choice.suite.new_hash()
    hs.transcript.update(message)
    neg = Negotiated12(ch, ext, choice.suite, server_random, group, alpn, ch.server_name,
                       choice.sni_matched, choice.certificate, choice.scheme, False)
    own = hs.take_key_share(group)
    if own is not None:
        # A pre-generated share: the ServerKeyExchange signature leaves at once.
        return ExpectOwnShare(neg, own.scalar).on_key_exchange(hs, own.public, b"")
    scalar = ecdhe_scalar(group, hs.random_bytes)
    hs.emit(KeyExchange(group, BASE_POINTS[group], scalar))
    return ExpectOwnShare(neg, scalar)


def _server_hello(hs, neg: Negotiated12, *, ticket: bool) -> bytes:
    exts = c12.server_hello_extensions(
        ems=neg.ext.extended_master_secret, secure_renegotiation=neg.ext.secure_renegotiation,
        ticket=ticket, alpn=neg.alpn, sni_matched=neg.sni_matched,
        ec_point_formats=neg.ext.ec_point_formats and not neg.resumed)
    # Session ids are never issued (no server-side session cache): empty on a
    # full handshake; a resumption echoes the client's (RFC 5077 §3.4).
    session_id = neg.ch.session_id if neg.resumed else b""
    return c.server_hello(neg.server_random, session_id, neg.suite.id, exts)


def _issue_ticket(hs, neg: Negotiated12) -> bool:
    # Only EMS sessions are ticketed (RFC 7627 §5.3 then holds on resumption).
    return (neg.ext.session_ticket is not None and neg.ext.extended_master_secret
            and hs.config.tickets.enabled)


def _resume(hs, neg: Negotiated12):
    sh = _server_hello(hs, neg, ticket=False)
    hs.transcript.update(sh)
    keys = neg.keys()
    fin = c.finished(verify_data(neg.suite, neg.master, "server", hs.transcript_hash))
    hs.transcript.update(fin)
    hs.emit(SendHandshake(Epoch.INITIAL, sh))
    hs.emit(SendChangeCipherSpec())
    hs.emit(InstallRecordKeys("write", Epoch.APPLICATION, neg.suite, keys.server_key, keys.server_iv))
    hs.emit(SendHandshake(Epoch.APPLICATION, fin))
    return ExpectChangeCipherSpec(neg, keys)


class ExpectOwnShare(State):
    expects = "our ECDHE key share"
    __slots__ = ("neg", "scalar")

    def __init__(self, neg: Negotiated12, scalar: bytes):
        self.neg, self.scalar = neg, scalar

    def on_key_exchange(self, hs, own_public: bytes, shared: bytes):
        neg = self.neg
        params = c12.server_key_exchange_params(c.GROUP_IDS[neg.group], own_public)
        flight = (_server_hello(hs, neg, ticket=_issue_ticket(hs, neg))
                  + neg.certificate.certificate_message12)
        hs.emit(Sign(neg.certificate, neg.scheme, neg.ch.random + neg.server_random + params))
        return ExpectSignature12(neg, self.scalar, flight, params)


class ExpectSignature12(State):
    expects = "the ServerKeyExchange signature"
    __slots__ = ("neg", "scalar", "flight", "params")

    def __init__(self, neg, scalar, flight, params):
        self.neg, self.scalar, self.flight, self.params = neg, scalar, flight, params

    def on_signature(self, hs, signature: bytes):
        ske = c12.server_key_exchange(self.params, c.SCHEME_IDS[self.neg.scheme], signature)
        flight = self.flight + ske + c12.SERVER_HELLO_DONE_MESSAGE
        hs.transcript.update(flight)
        hs.emit(SendHandshake(Epoch.INITIAL, flight))
        return ExpectClientKeyExchange(self.neg, self.scalar)


class ExpectClientKeyExchange(State):
    expects = "ClientKeyExchange"
    __slots__ = ("neg", "scalar")

    def __init__(self, neg, scalar):
        self.neg, self.scalar = neg, scalar

    def handle(self, hs, epoch, message: bytes):
        if message[0] != c12.CLIENT_KEY_EXCHANGE:
            return super().handle(hs, epoch, message)
        point = c12.parse_client_key_exchange(message)
        hs.transcript.update(message)
        # RFC 7627 §3: session_hash = Hash(ClientHello .. ClientKeyExchange).
        session_hash = hs.transcript_hash
        hs.emit(KeyExchange(self.neg.group, point, self.scalar))
        return ExpectPreMasterSecret(self.neg, session_hash)


class ExpectPreMasterSecret(State):
    expects = "the ECDHE shared secret"
    __slots__ = ("neg", "session_hash")

    def __init__(self, neg, session_hash):
        self.neg, self.session_hash = neg, session_hash

    def on_key_exchange(self, hs, own_public: bytes, shared: bytes):
        neg = self.neg
        ems = neg.ext.extended_master_secret
        neg.master = master_secret(neg.suite, shared,
                                   session_hash=self.session_hash if ems else None,
                                   client_random=neg.ch.random,
                                   server_random=neg.server_random)
        return ExpectChangeCipherSpec(neg, neg.keys())


class ExpectChangeCipherSpec(State):
    expects = "ChangeCipherSpec"
    __slots__ = ("neg", "keys")

    def __init__(self, neg, keys):
        self.neg, self.keys = neg, keys

    def on_change_cipher_spec(self, hs):
        hs.emit(InstallRecordKeys("read", Epoch.APPLICATION, self.neg.suite,
                                  self.keys.client_key, self.keys.client_iv))
        return ExpectFinished12(self.neg, self.keys)


class ExpectFinished12(State):
    expects = "Finished"
    __slots__ = ("neg", "keys")

    def __init__(self, neg, keys):
        self.neg, self.keys = neg, keys

    def handle(self, hs, epoch, message: bytes):
        if message[0] != c.FINISHED:
            return super().handle(hs, epoch, message)
        neg = self.neg
        received = c.parse_finished(message[4:], 12)
        check_client_finished(neg.suite, neg.master, hs.transcript_hash, received)
        proof = FinishedVerified(received)
        hs.transcript.update(message)
        if not neg.resumed:
            pending = b""
            if _issue_ticket(hs, neg):
                pending = _new_session_ticket(hs, neg)
                hs.transcript.update(pending)
            fin = c.finished(verify_data(neg.suite, neg.master, "server", hs.transcript_hash))
            if pending:
                hs.emit(SendHandshake(Epoch.INITIAL, pending))
            hs.emit(SendChangeCipherSpec())
            hs.emit(InstallRecordKeys("write", Epoch.APPLICATION, neg.suite,
                                      self.keys.server_key, self.keys.server_iv))
            hs.emit(SendHandshake(Epoch.APPLICATION, fin))
        hs.transcript = None
        hs.emit(HandshakeComplete(neg.info()))
        return Connected12(proof)


class Connected12(State):
    """Application data flows; a ClientHello (renegotiation) is refused."""

    expects = "no handshake message (renegotiation is refused)"
    __slots__ = ("proof",)

    def __init__(self, proof):
        if not isinstance(proof, FinishedVerified):
            raise TLSUsageError("Connected12 requires FinishedVerified")
        self.proof = proof

    def handle(self, hs, epoch, message: bytes):
        if message[0] != c.CLIENT_HELLO:
            return super().handle(hs, epoch, message)
        # RFC 5746 §4.4 / RFC 5246 §7.4.1.2: a server that does not
        # renegotiate answers a ClientHello with a no_renegotiation
        # warning; the connection and its data go on.
        hs.emit(SendAlert(WARNING, AlertDescription.no_renegotiation))
        return self


def _new_session_ticket(hs, neg: Negotiated12) -> bytes:
    now = hs.now_s()
    state = TicketState(neg.suite.id, int(now * 1000), 0, neg.master,
                        (neg.server_name or "").lower().rstrip("."), neg.alpn or "")
    ticket = seal_ticket(hs.config.ticket_keyring.current(now), hs.random_bytes(12), state)
    return c12.new_session_ticket12(hs.config.tickets.lifetime_s, ticket)
