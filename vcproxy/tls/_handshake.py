"""The sans-IO TLS 1.3 server handshake (and the version choice that may hand
a connection to TLS 1.2): one class per state, commands out.

Theory of operation
-------------------
``ServerHandshake`` does no I/O and no public-key crypto. It is fed whole
handshake messages (``receive_message``) and the results of the crypto it
asked for (``key_exchange_done``, ``signature_done``,
``derive_and_sign_done``); each call returns a list of *commands* for the
I/O adapter (``TLSStream``) to execute in order:

    SendHandshake(epoch, bytes)   queue handshake bytes under that epoch's keys
    SendChangeCipherSpec()        middlebox compatibility (RFC 8446 §D.4)
    InstallKeys(direction, epoch, suite, secret)
    SkipEarlyData(max_bytes, encrypted)   refuse 0-RTT by skipping it (§4.2.10)
    KeyExchange(group, peer_public)       BLOCKING: run it, call key_exchange_done
    Sign(certificate, scheme, message)    BLOCKING: run it, call signature_done
    DeriveAndSign(key_exchange, sign)     BLOCKING: run both together, call
                                          derive_and_sign_done
    HandshakeComplete(info)               the client's Finished verified

(The commands, ``FinishedVerified`` and the ``State`` base are ``_commands``,
shared with the TLS 1.2 machine.) A blocking command is always the last of
its list.

Key shares: a full handshake (no PSK, an ECDH group) first asks the
provider for a pre-generated ephemeral key pair (``key_share``, sync, like
``random_bytes``). With one, our ServerHello is known at once; RFC 8446
§4.4.3: CertificateVerify signs Transcript-Hash(ClientHello .. Certificate),
which holds our *public* share but not the shared secret. So the derive
(keyed form: our scalar, the client's share) and the signature go out as one
``DeriveAndSign``: one provider round trip instead of two. The handshake
traffic secrets still use the transcript through ServerHello (§7.1), which
is snapshot (``hello_hash``) before EncryptedExtensions and Certificate are
hashed. Without a share (the provider has none in stock; hybrids always,
since ML-KEM encapsulation needs the client's key; PSK handshakes, which
sign nothing) the one-op ``KeyExchange`` returns our share with the secret,
then the signature follows. ``ExpectClientHello``
first chooses the version (``_negotiate12.choose_version``); a TLS 1.2
connection goes on in ``_handshake12``'s states. The TLS 1.3 states, each
named for what it waits for::

    ExpectClientHello ──(no usable key share)──▶ HelloRetryRequest sent ─┐
          │   ▲──────────────────────── ExpectClientHello(retry) ◀───────┘
          ├──(a pre-generated share)──▶ ExpectDeriveAndSign ──────┐
          ▼                                                       │
    ExpectKeyExchange ──(PSK)──────────────────────┐              │
          ▼                                        ▼              ▼
    ExpectSignature ──────────────────────▶ ExpectFinished ◀──────┘
                                                   ▼
                                            Connected(FinishedVerified)
                                               KeyUpdate both ways

A ``FinishedVerified`` value exists only once the client's Finished MAC has
been compared (``hmac.compare_digest``); the application read key is
installed only after it exists, and ``Connected`` cannot be built without
one. The application write key is installed right after our Finished (RFC
8446 §4.4.4: an alert about the client's flight goes under it), yet nothing
but that alert is sent under it before ``HandshakeComplete``.

In ``Connected``, a client KeyUpdate installs the next read key at once; if
it requested an update, ``key_update_owed`` tells the adapter to send ours
before its next application data (``initiate_key_update``, which also serves
the server-initiated update after N records).
"""
from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable

from . import _codec as c
from . import _handshake12
from ._commands import (
    Command, DeriveAndSign, Epoch, FinishedVerified, HandshakeComplete, HandshakeInfo, InstallKeys,
    KeyExchange, SendChangeCipherSpec, SendHandshake, Sign, SkipEarlyData, State,
)
from ._config import CertificateEntry, ServerConfig
from ._errors import IllegalParameter, MissingExtension, TLSUsageError
from ._keyschedule import (
    CipherSuite, EarlySecret, HandshakeSecret, MasterSecret, check_finished,
    finished_verify_data, next_traffic_secret, resumption_psk,
)
from ._negotiate import (
    AcceptedPsk, accept_psk, check_record_size_limit, check_version, choose_alpn,
    choose_certificate, choose_group, choose_suite,
)
from ._negotiate12 import choose_version
from ._provider import HYBRIDS, KeyShare
from ._tickets import TicketState, seal_ticket

#: Bytes of refused 0-RTT data we skip before calling it an attack (§4.2.10).
MAX_SKIPPED_EARLY_DATA = 1 << 16
#: Our record_size_limit: a full TLS 1.3 record (2^14 + content type byte).
OWN_RECORD_SIZE_LIMIT = (1 << 14) + 1
_CV_PREFIX = b" " * 64 + b"TLS 1.3, server CertificateVerify\x00"


def _no_key_share(group: str) -> None:
    return None


class ServerHandshake:
    """Drives one server connection's handshake; see the module docstring."""

    def __init__(self, config: ServerConfig, *, random_bytes: Callable[[int], bytes],
                 now_s: Callable[[], float],
                 key_share: Callable[[str], KeyShare | None] = _no_key_share):
        self.config = config
        self.random_bytes = random_bytes
        self.now_s = now_s
        self.key_share = key_share
        self.state: State = ExpectClientHello(None)
        self.transcript = None       # hashlib object once the suite is known
        self._out: list[Command] = []
        self._sent_ccs = False
        #: The client's record_size_limit (RFC 8449), once its hello is read.
        self.peer_record_size_limit: int | None = None
        #: "1.3" or "1.2" once the ClientHello chose it (TLS 1.2: ``_handshake12``).
        self.version: str | None = None

    # Each entry point collects the commands its state step emits; the state
    # changes only when the step returns (an exception leaves it as it was).

    def emit(self, command: Command) -> None:
        self._out.append(command)

    def receive_message(self, epoch: Epoch, message: bytes) -> list[Command]:
        """Feed one whole handshake message (header included) read under ``epoch``."""
        self._out = out = []
        self.state = self.state.handle(self, epoch, message)
        return out

    def key_exchange_done(self, own_public: bytes, shared_secret: bytes) -> list[Command]:
        self._out = out = []
        self.state = self.state.on_key_exchange(self, own_public, shared_secret)
        return out

    def receive_change_cipher_spec(self) -> list[Command]:
        """Feed the peer's ChangeCipherSpec (TLS 1.2: it switches the read keys)."""
        self._out = out = []
        self.state = self.state.on_change_cipher_spec(self)
        return out

    def signature_done(self, signature: bytes) -> list[Command]:
        self._out = out = []
        self.state = self.state.on_signature(self, signature)
        return out

    def derive_and_sign_done(self, shared_secret: bytes, signature: bytes) -> list[Command]:
        self._out = out = []
        self.state = self.state.on_derive_and_sign(self, shared_secret, signature)
        return out

    def take_key_share(self, group: str) -> KeyShare | None:
        """A pre-generated share for ``group`` from the provider, checked."""
        share = self.key_share(group)
        if share is not None and share.group != group:
            raise TLSUsageError(f"key_share({group!r}) returned a {share.group} share")
        return share

    @property
    def key_update_owed(self) -> bool:
        """The peer requested a KeyUpdate: send one before the next application data."""
        return self.state.owe_key_update

    def initiate_key_update(self) -> list[Command]:
        """Update our sending keys (server-initiated, or the one we owe the peer)."""
        self._out = out = []
        self.state = self.state.update_write_keys(self, request_peer=False)
        return out

    def send_ccs_once(self, ch: c.ClientHello) -> None:
        # RFC 8446 §D.4: compatibility mode is signalled by a non-empty session id.
        if ch.session_id and not self._sent_ccs:
            self._sent_ccs = True
            self.emit(SendChangeCipherSpec())

    @property
    def transcript_hash(self) -> bytes:
        return self.transcript.copy().digest()


@dataclasses.dataclass(slots=True)
class Retry:
    """What a HelloRetryRequest committed us to."""

    suite: CipherSuite
    group: str
    cookie: bytes


@dataclasses.dataclass(slots=True)
class Negotiated:
    ch: c.ClientHello
    suite: CipherSuite
    group: str
    peer_share: bytes
    alpn: str | None
    server_name: str | None
    sni_matched: bool
    peer_record_size_limit: int | None
    psk: AcceptedPsk | None
    certificate: CertificateEntry | None
    scheme: str | None
    hello_retry: bool

    def info(self) -> HandshakeInfo:
        return HandshakeInfo(self.server_name, self.alpn, self.suite.name, self.group,
                             self.psk is not None, self.peer_record_size_limit, self.hello_retry)


class ExpectClientHello(State):
    expects = "ClientHello"
    __slots__ = ("retry",)

    def __init__(self, retry: Retry | None):
        self.retry = retry

    def handle(self, hs: ServerHandshake, epoch: Epoch, message: bytes) -> State:
        if message[0] != c.CLIENT_HELLO:
            return super().handle(hs, epoch, message)
        ch = c.parse_client_hello(message)
        if choose_version(hs.config, ch) == "1.2":
            if self.retry is not None:
                # RFC 8446 §4.1.4: the retried hello must still be TLS 1.3.
                raise IllegalParameter("retried ClientHello after a HelloRetryRequest offers TLS 1.2 only")
            return _handshake12.start(hs, ch, message)
        hs.version = "1.3"
        check_version(ch)
        suite = choose_suite(hs.config, ch)
        retry = self.retry
        if retry is None:
            hs.transcript = suite.new_hash()
        else:
            _check_retried_hello(ch, suite, retry)
        group, peer_share = choose_group(hs.config, ch)
        if peer_share is None:
            if retry is not None:
                raise IllegalParameter(f"retried ClientHello has no {group} key share")
            return _send_hello_retry(hs, ch, suite, group)
        psk = accept_psk(hs.config, ch, suite, hs.transcript, hs.now_s())
        certificate = scheme = None
        sni_matched = False
        if psk is None:
            certificate, scheme, sni_matched = choose_certificate(hs.config, ch)
        neg = Negotiated(ch, suite, group, peer_share, choose_alpn(hs.config, ch), ch.server_name,
                         sni_matched, check_record_size_limit(ch), psk, certificate, scheme,
                         retry is not None)
        hs.transcript.update(message)
        hs.peer_record_size_limit = neg.peer_record_size_limit
        if ch.early_data and retry is None:
            # Refuse 0-RTT: the client's early records are under keys we never
            # derive; skip what fails to open under handshake keys (§4.2.10).
            hs.emit(SkipEarlyData(MAX_SKIPPED_EARLY_DATA, encrypted=True))
        # (PSK: no signature to send along, one round trip either way)
        own = (hs.take_key_share(group)
               if psk is None and group not in HYBRIDS else None)
        if own is None:
            hs.emit(KeyExchange(group, peer_share))
            return ExpectKeyExchange(neg)
        # The ServerHello is in the transcript but leaves only with the rest of
        # the flight: should the derive or the signature fail, the client then
        # gets a plaintext alert before any ServerHello, not one after it
        # where it expects records under handshake keys (§5.1, §6).
        sh = _server_hello(hs, neg, own.public)
        hello_hash = hs.transcript_hash  # RFC 8446 §7.1: handshake secrets hash CH..SH
        flight = c.encrypted_extensions(_encrypted_extensions(neg)) + neg.certificate.certificate_message
        hs.transcript.update(flight)
        # §4.4.3: the signature covers CH..Certificate (our public share, no secret)
        hs.emit(DeriveAndSign(KeyExchange(group, peer_share, own.scalar),
                              Sign(neg.certificate, neg.scheme, _CV_PREFIX + hs.transcript_hash)))
        return ExpectDeriveAndSign(neg, sh, hello_hash, flight)


def _check_retried_hello(ch: c.ClientHello, suite: CipherSuite, retry: Retry) -> None:
    # RFC 8446 §4.1.4: the second hello must agree with what the HRR chose.
    if suite is not retry.suite:
        raise IllegalParameter(f"retried ClientHello: suite {suite.name}, HRR chose {retry.suite.name}")
    if ch.cookie is None:
        raise MissingExtension("retried ClientHello without the HRR cookie")
    if ch.cookie != retry.cookie:
        raise IllegalParameter("retried ClientHello: cookie does not match")
    if ch.early_data:
        raise IllegalParameter("retried ClientHello offers early_data (RFC 8446 §4.2.10)")
    shares = ch.key_shares or []
    if len(shares) != 1 or shares[0][0] != c.GROUP_IDS[retry.group]:
        raise IllegalParameter(f"retried ClientHello must carry one {retry.group} key share")


def _send_hello_retry(hs: ServerHandshake, ch: c.ClientHello, suite: CipherSuite,
                      group: str) -> State:
    cookie = hs.random_bytes(32)
    exts = (c.EXT_SUPPORTED_VERSIONS_TLS13
            + c.extension(c.EXT_KEY_SHARE, c.GROUP_IDS[group].to_bytes(2, "big"))
            + c.extension(c.EXT_COOKIE, c.vec16(cookie)))
    hrr = c.server_hello(c.HRR_RANDOM, ch.session_id, suite.id, exts)
    # RFC 8446 §4.4.1: the transcript restarts with message_hash(Hash(ClientHello1)).
    ch1_hash = hashlib.new(suite.hash_name, ch.raw).digest()
    hs.transcript = suite.new_hash()
    hs.transcript.update(c.handshake(c.MESSAGE_HASH, ch1_hash) + hrr)
    hs.emit(SendHandshake(Epoch.INITIAL, hrr))
    hs.send_ccs_once(ch)
    if ch.early_data:
        hs.emit(SkipEarlyData(MAX_SKIPPED_EARLY_DATA, encrypted=False))
    return ExpectClientHello(Retry(suite, group, cookie))


class ExpectKeyExchange(State):
    expects = "the key exchange result"
    __slots__ = ("neg",)

    def __init__(self, neg: Negotiated):
        self.neg = neg

    def on_key_exchange(self, hs: ServerHandshake, own_public: bytes, shared: bytes) -> State:
        neg = self.neg
        suite = neg.suite
        _send_server_hello(hs, neg, own_public)
        early = neg.psk.early if neg.psk is not None else EarlySecret(suite)
        hs_secret, client_hs, server_hs = _handshake_keys(hs, neg, early, shared, hs.transcript_hash)
        flight = c.encrypted_extensions(_encrypted_extensions(neg))
        if neg.psk is not None:
            hs.transcript.update(flight)
            return _send_server_finished(hs, neg, hs_secret, client_hs, server_hs, flight)
        flight += neg.certificate.certificate_message
        hs.transcript.update(flight)
        hs.emit(SendHandshake(Epoch.HANDSHAKE, flight))
        hs.emit(Sign(neg.certificate, neg.scheme, _CV_PREFIX + hs.transcript_hash))
        return ExpectSignature(neg, hs_secret, client_hs, server_hs)


def _server_hello(hs: ServerHandshake, neg: Negotiated, own_public: bytes) -> bytes:
    """Our ServerHello, added to the transcript (not sent yet)."""
    exts = c.ext_key_share_server(c.GROUP_IDS[neg.group], own_public)
    if neg.psk is not None:
        exts += c.extension(c.EXT_PRE_SHARED_KEY, neg.psk.index.to_bytes(2, "big"))
    exts += c.EXT_SUPPORTED_VERSIONS_TLS13
    sh = c.server_hello(hs.random_bytes(32), neg.ch.session_id, neg.suite.id, exts)
    hs.transcript.update(sh)
    return sh


def _emit_server_hello(hs: ServerHandshake, neg: Negotiated, sh: bytes) -> None:
    hs.emit(SendHandshake(Epoch.INITIAL, sh))
    hs.send_ccs_once(neg.ch)


def _send_server_hello(hs: ServerHandshake, neg: Negotiated, own_public: bytes) -> None:
    _emit_server_hello(hs, neg, _server_hello(hs, neg, own_public))


def _handshake_keys(hs: ServerHandshake, neg: Negotiated, early: EarlySecret, shared: bytes,
                    hello_hash: bytes) -> tuple[HandshakeSecret, bytes, bytes]:
    """Install the handshake traffic keys (from Transcript-Hash(CH..SH))."""
    hs_secret = early.into_handshake(shared)
    client_hs, server_hs = hs_secret.traffic_secrets(hello_hash)
    hs.emit(InstallKeys("write", Epoch.HANDSHAKE, neg.suite, server_hs))
    hs.emit(InstallKeys("read", Epoch.HANDSHAKE, neg.suite, client_hs))
    return hs_secret, client_hs, server_hs


class ExpectDeriveAndSign(State):
    """ServerHello, EncryptedExtensions and Certificate are in the transcript
    (the ServerHello is sent only with the rest of the flight, once both
    results are in); the derive under our pre-generated share and the
    CertificateVerify signature are out together."""

    expects = "the key exchange result and the CertificateVerify signature"
    __slots__ = ("neg", "server_hello", "hello_hash", "flight")

    def __init__(self, neg: Negotiated, server_hello: bytes, hello_hash: bytes, flight: bytes):
        self.neg, self.server_hello, self.hello_hash, self.flight = neg, server_hello, hello_hash, flight

    def on_derive_and_sign(self, hs: ServerHandshake, shared: bytes, signature: bytes) -> State:
        # (the derive is under our share's scalar and returns the secret only:
        # the ServerHello already carries the share's public key)
        neg = self.neg
        _emit_server_hello(hs, neg, self.server_hello)
        hs_secret, client_hs, server_hs = _handshake_keys(hs, neg, EarlySecret(neg.suite), shared,
                                                          self.hello_hash)
        cv = c.certificate_verify(c.SCHEME_IDS[neg.scheme], signature)
        hs.transcript.update(cv)
        return _send_server_finished(hs, neg, hs_secret, client_hs, server_hs, self.flight + cv)


def _encrypted_extensions(neg: Negotiated) -> bytes:
    exts = b""
    if neg.sni_matched:
        exts += c.extension(c.EXT_SERVER_NAME, b"")  # RFC 6066 §3: we used the name
    if neg.alpn is not None:
        exts += c.extension(c.EXT_ALPN, c.vec16(c.vec8(neg.alpn.encode())))
    if neg.peer_record_size_limit is not None:
        exts += c.extension(c.EXT_RECORD_SIZE_LIMIT, OWN_RECORD_SIZE_LIMIT.to_bytes(2, "big"))
    return exts


class ExpectSignature(State):
    expects = "the CertificateVerify signature"
    __slots__ = ("neg", "hs_secret", "client_hs", "server_hs")

    def __init__(self, neg: Negotiated, hs_secret: HandshakeSecret, client_hs: bytes,
                 server_hs: bytes):
        self.neg, self.hs_secret, self.client_hs, self.server_hs = neg, hs_secret, client_hs, server_hs

    def on_signature(self, hs: ServerHandshake, signature: bytes) -> State:
        cv = c.certificate_verify(c.SCHEME_IDS[self.neg.scheme], signature)
        hs.transcript.update(cv)
        return _send_server_finished(hs, self.neg, self.hs_secret, self.client_hs,
                                     self.server_hs, cv)


def _send_server_finished(hs: ServerHandshake, neg: Negotiated, hs_secret: HandshakeSecret,
                          client_hs: bytes, server_hs: bytes, pending: bytes) -> State:
    suite = neg.suite
    fin = c.finished(finished_verify_data(suite, server_hs, hs.transcript_hash))
    hs.transcript.update(fin)
    hs.emit(SendHandshake(Epoch.HANDSHAKE, pending + fin))
    master = hs_secret.into_master()
    client_ap, server_ap = master.traffic_secrets(hs.transcript_hash)
    # RFC 8446 §4.4.4 / App. A.2: once our Finished is out we send under
    # server_application_traffic_secret_0, so a fatal alert about the
    # client's second flight (a bad Finished, a broken record) is under it
    # too. The read side stays on the handshake key until the client Finished
    # verifies; no application data is sent before that (the stream is OPEN
    # only after HandshakeComplete).
    hs.emit(InstallKeys("write", Epoch.APPLICATION, suite, server_ap))
    return ExpectFinished(neg, master, client_hs, client_ap, server_ap)


class ExpectFinished(State):
    expects = "Finished"
    __slots__ = ("neg", "master", "client_hs", "client_ap", "server_ap")

    def __init__(self, neg: Negotiated, master: MasterSecret, client_hs: bytes,
                 client_ap: bytes, server_ap: bytes):
        self.neg, self.master, self.client_hs = neg, master, client_hs
        self.client_ap, self.server_ap = client_ap, server_ap

    def handle(self, hs: ServerHandshake, epoch: Epoch, message: bytes) -> State:
        if message[0] != c.FINISHED:
            return super().handle(hs, epoch, message)
        suite = self.neg.suite
        verify_data = c.parse_finished(message[4:], suite.hash_len)
        check_finished(suite, self.client_hs, hs.transcript_hash, verify_data, "client Finished")
        proof = FinishedVerified(verify_data)
        hs.transcript.update(message)
        hs.emit(InstallKeys("read", Epoch.APPLICATION, suite, self.client_ap))
        if hs.config.tickets.enabled and hs.config.tickets.count:
            rms = self.master.resumption_master_secret(hs.transcript_hash)
            tickets = b"".join(_new_session_ticket(hs, self.neg, rms, i)
                               for i in range(hs.config.tickets.count))
            hs.emit(SendHandshake(Epoch.APPLICATION, tickets))
        hs.transcript = None  # nothing hashes past the client Finished
        hs.emit(HandshakeComplete(self.neg.info()))
        return Connected(proof, suite, self.client_ap, self.server_ap)


def _new_session_ticket(hs: ServerHandshake, neg: Negotiated, rms: bytes, index: int) -> bytes:
    nonce = index.to_bytes(1, "big")
    rand = hs.random_bytes(16)  # age_add and the sealing nonce: one call, not two
    age_add = int.from_bytes(rand[:4], "big")
    now = hs.now_s()
    state = TicketState(neg.suite.id, int(now * 1000), age_add,
                        resumption_psk(neg.suite, rms, nonce),
                        (neg.server_name or "").lower().rstrip("."), neg.alpn or "")
    ticket = seal_ticket(hs.config.ticket_keyring.current(now), rand[4:], state)
    return c.new_session_ticket(hs.config.tickets.lifetime_s, age_add, nonce, ticket)


class Connected(State):
    """Application data flows. Post-handshake, the client may only send KeyUpdate."""

    expects = "KeyUpdate"
    __slots__ = ("proof", "suite", "client_secret", "server_secret", "owe_key_update")

    def __init__(self, proof: FinishedVerified, suite: CipherSuite, client_secret: bytes,
                 server_secret: bytes):
        if not isinstance(proof, FinishedVerified):
            raise TLSUsageError("Connected requires FinishedVerified")
        self.proof, self.suite = proof, suite
        self.client_secret, self.server_secret = client_secret, server_secret
        self.owe_key_update = False

    def handle(self, hs: ServerHandshake, epoch: Epoch, message: bytes) -> State:
        if message[0] != c.KEY_UPDATE:
            return super().handle(hs, epoch, message)
        request = c.parse_key_update(message[4:])
        self.client_secret = next_traffic_secret(self.suite, self.client_secret)
        hs.emit(InstallKeys("read", Epoch.APPLICATION, self.suite, self.client_secret))
        if request:
            # RFC 8446 §4.6.3: we owe a KeyUpdate(update_not_requested) "prior to
            # sending [our] next Application Data record". The sender pays it, so
            # the reading side never waits on the writing side.
            self.owe_key_update = True
        return self

    def update_write_keys(self, hs: ServerHandshake, request_peer: bool) -> State:
        self.owe_key_update = False
        hs.emit(SendHandshake(Epoch.APPLICATION, c.key_update(request_peer)))
        self.server_secret = next_traffic_secret(self.suite, self.server_secret)
        hs.emit(InstallKeys("write", Epoch.APPLICATION, self.suite, self.server_secret))
        return self

