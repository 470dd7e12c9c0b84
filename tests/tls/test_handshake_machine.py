"""The sans-IO state machine driven directly: HelloRetryRequest with cookie,
PSK resumption and binders, 0-RTT refusal, and misuse errors."""
from __future__ import annotations

import hashlib

import pytest

from tests.tls.helpers import server_config, split_handshake_messages
from tests.tls.miniclient import client_hello, ext
from vcproxy.tls import AlertDescription as A
from vcproxy.tls import TicketConfig, TLSError, TLSUsageError
from vcproxy.tls import _codec as c
from vcproxy.tls._handshake import (
    Epoch, ExpectClientHello, HandshakeComplete, InstallKeys, SendHandshake,
    ServerHandshake, Sign, SkipEarlyData,
)
from vcproxy.tls._keyschedule import SUITES, EarlySecret, finished_verify_data
from vcproxy.tls._tickets import TicketState, open_ticket, seal_ticket

SUITE = SUITES["TLS_AES_128_GCM_SHA256"]
P256, X25519 = 0x0017, 0x001D


def machine(config, now_s=1000.0):
    counter = iter(range(1, 1 << 30))
    return ServerHandshake(config, random_bytes=lambda n: bytes([next(counter) % 256]) * n,
                           now_s=lambda: now_s)


@pytest.fixture
def x25519_only(test_certs):
    return server_config([test_certs["ecdsa-p256"]], groups=["x25519"],
                         tickets=TicketConfig(lifetime_s=900))


def _hrr_cookie(hrr: bytes) -> bytes:
    r = c.Reader(hrr, 4 + 2)
    assert r.take(32) == c.HRR_RANDOM
    r.vec(1, "sid")
    r.u16()
    r.u8()
    exts = r.sub(2, "exts")
    found = {}
    while exts.left():
        t = exts.u16()
        found[t] = exts.vec(2, "ext")
    assert found[c.EXT_KEY_SHARE] == X25519.to_bytes(2, "big")
    return found[c.EXT_COOKIE][2:]


def _hello2(cookie: bytes | None, share_group=X25519, early=False):
    extra = ext(c.EXT_COOKIE, c.vec16(cookie)) if cookie is not None else b""
    if early:
        extra += ext(c.EXT_EARLY_DATA, b"")
    return client_hello(share=bytes(32), share_group=share_group, groups=(P256, X25519), extra=extra)


def test_hello_retry_request_then_retried_hello(x25519_only):
    hs = machine(x25519_only)
    ch1 = client_hello(share=bytes(65), share_group=P256, groups=(P256, X25519),
                       extra=ext(c.EXT_EARLY_DATA, b""), session_id=b"i" * 32)
    cmds = hs.receive_message(Epoch.INITIAL, ch1)
    hrr = cmds[0].data
    assert isinstance(cmds[0], SendHandshake) and cmds[0].epoch is Epoch.INITIAL
    assert SkipEarlyData(1 << 16, encrypted=False) in cmds  # 0-RTT refused across HRR
    assert isinstance(hs.state, ExpectClientHello) and hs.state.retry is not None
    cookie = _hrr_cookie(hrr)
    ch2 = _hello2(cookie)
    [kx] = hs.receive_message(Epoch.INITIAL, ch2)
    assert kx.group == "x25519"
    # the transcript restarts with message_hash(ClientHello1), then the HRR
    expected = hashlib.sha256(c.handshake(c.MESSAGE_HASH, hashlib.sha256(ch1).digest()) + hrr
                              + ch2)
    assert hs.transcript_hash == expected.digest()
    assert hs.state.neg.hello_retry


@pytest.mark.parametrize("cookie,share_group,early,alert", [
    (None, X25519, False, A.missing_extension),
    (b"not the cookie", X25519, False, A.illegal_parameter),
    ("good", P256, False, A.illegal_parameter),        # still not the group asked for
    ("good", X25519, True, A.illegal_parameter),       # early_data after HRR
])
def test_bad_retried_hello(x25519_only, cookie, share_group, early, alert):
    hs = machine(x25519_only)
    hrr = hs.receive_message(Epoch.INITIAL, client_hello(
        share=bytes(65), share_group=P256, groups=(P256, X25519)))[0].data
    if cookie == "good":
        cookie = _hrr_cookie(hrr)
    with pytest.raises(TLSError) as info:
        hs.receive_message(Epoch.INITIAL, _hello2(cookie, share_group, early))
    assert info.value.alert == alert


def _psk_hello(config, *, psk=b"p" * 32, sni="localhost", issued_ms=999_000, binder=None,
               modes=b"\x01", foreign_key=False, ticket_sni=None):
    key = bytes(32) if foreign_key else config.ticket_keyring.current(1000.0)
    ticket_sni = sni if ticket_sni is None else ticket_sni
    ticket = seal_ticket(key, b"n" * 12, TicketState(SUITE.id, issued_ms, 7, psk, ticket_sni, ""))
    extra = ext(c.EXT_PSK_KEY_EXCHANGE_MODES, c.vec8(modes))
    identities = c.vec16(c.vec16(ticket) + (7 + 10).to_bytes(4, "big"))
    psk_ext = ext(c.EXT_PRE_SHARED_KEY, identities + c.vec16(c.vec8(bytes(32))))
    ch = bytearray(client_hello(share=bytes(32), extra=extra + psk_ext, sni=sni))
    truncated = c.parse_client_hello(bytes(ch)).psks.truncated_len
    good = EarlySecret(SUITE, psk).binder(hashlib.sha256(bytes(ch[:truncated])).digest())
    ch[-32:] = binder if binder is not None else good
    return bytes(ch)


def test_psk_resumption_with_valid_binder(x25519_only):
    hs = machine(x25519_only)
    [kx] = hs.receive_message(Epoch.INITIAL, _psk_hello(x25519_only))
    cmds = hs.key_exchange_done(bytes(32), bytes(32))
    sh = cmds[0].data
    assert c.extension(c.EXT_PRE_SHARED_KEY, b"\x00\x00") in sh
    assert not any(isinstance(k, Sign) for k in cmds)          # no certificate on resumption
    flight = [k for k in cmds if isinstance(k, SendHandshake) and k.epoch is Epoch.HANDSHAKE]
    assert flight[0].data[0] == c.ENCRYPTED_EXTENSIONS
    client_hs = [k for k in cmds if isinstance(k, InstallKeys) and k.direction == "read"][0].secret
    # the write key turns to the application secret right after our Finished (§4.4.4)
    assert cmds[-2].data[-36:-32] == b"\x14\x00\x00\x20"
    assert (cmds[-1].direction, cmds[-1].epoch) == ("write", Epoch.APPLICATION)
    fin = c.finished(finished_verify_data(SUITE, client_hs, hs.transcript_hash))
    done = hs.receive_message(Epoch.HANDSHAKE, fin)
    assert isinstance(done[-1], HandshakeComplete) and done[-1].info.resumed
    assert [(k.direction, k.epoch) for k in done if isinstance(k, InstallKeys)] == [
        ("read", Epoch.APPLICATION)]


def test_psk_with_bad_binder_is_decrypt_error(x25519_only):
    hs = machine(x25519_only)
    with pytest.raises(TLSError) as info:
        hs.receive_message(Epoch.INITIAL, _psk_hello(x25519_only, binder=b"\x00" * 32))
    assert info.value.alert == A.decrypt_error


@pytest.mark.parametrize("kw", [
    {"issued_ms": 0},                         # 1000 s old, lifetime_s is 900 here
    {"foreign_key": True},                    # not sealed by us
    {"ticket_sni": "other.example.com"},      # issued for another name
    {"modes": b"\x00"},                       # psk_ke only: we need (EC)DHE
])
def test_unusable_ticket_falls_back_to_full_handshake(x25519_only, kw):
    hs = machine(x25519_only)
    [kx] = hs.receive_message(Epoch.INITIAL, _psk_hello(x25519_only, **kw))
    cmds = hs.key_exchange_done(bytes(32), bytes(32))
    assert isinstance(cmds[-1], Sign)


def test_psk_without_modes_is_missing_extension(x25519_only):
    ch = _psk_hello(x25519_only)
    # drop psk_key_exchange_modes by renaming it to an unknown extension type
    i = ch.index(c.EXT_PSK_KEY_EXCHANGE_MODES.to_bytes(2, "big") + b"\x00\x02\x01\x01")
    ch = ch[:i] + b"\xfa\xfa" + ch[i + 2:]
    with pytest.raises(TLSError) as info:
        machine(x25519_only).receive_message(Epoch.INITIAL, ch)
    assert info.value.alert == A.missing_extension


def test_tickets_round_trip_and_rotate(x25519_only):
    ring = x25519_only.ticket_keyring
    state = TicketState(SUITE.id, 1, 2, b"k" * 32, "a", "h2")
    t = seal_ticket(ring.current(0.0), b"x" * 12, state)
    assert open_ticket(ring.all(), t) == state
    ring.current(1e9)                                  # far past rotate_after_s
    assert open_ticket(ring.all(), t) == state         # previous key still opens
    ring.current(2e9)
    assert open_ticket(ring.all(), t) is None          # two rotations later: gone


def test_misuse_is_a_usage_error(x25519_only):
    hs = machine(x25519_only)
    with pytest.raises(TLSUsageError):
        hs.key_exchange_done(b"", b"")
    with pytest.raises(TLSUsageError):
        hs.initiate_key_update()


# ---- pre-generated key shares (the provider's key_share) -------------------

def _sharing_machine(config, shares):
    """A machine whose provider hands out ``shares`` (group -> KeyShare) and records each ask."""
    asked = []

    def key_share(group):
        asked.append(group)
        return shares.get(group)

    counter = iter(range(1, 1 << 30))
    hs = ServerHandshake(config, random_bytes=lambda n: bytes([next(counter) % 256]) * n,
                         now_s=lambda: 1000.0, key_share=key_share)
    return hs, asked


def _x25519_share():
    from vcproxy.tls import InlineProvider
    return InlineProvider().key_share("x25519")


def test_full_handshake_with_a_key_share_sends_derive_and_signature_together(x25519_only):
    from vcproxy.tls._handshake import KeyExchange
    share = _x25519_share()
    hs, asked = _sharing_machine(x25519_only, {"x25519": share})
    cmds = hs.receive_message(Epoch.INITIAL, client_hello(share=bytes(32), session_id=b"s" * 32))
    assert asked == ["x25519"]
    # only the one blocking step: the ServerHello (in the transcript already)
    # leaves with the rest of the flight, so a failed step is alerted in
    # plaintext before any ServerHello
    assert [type(k).__name__ for k in cmds] == ["DeriveAndSign"]
    step = cmds[-1]
    assert step.key_exchange == KeyExchange("x25519", bytes(32), share.scalar)
    assert step.sign.message.endswith(hs.transcript_hash)  # through Certificate
    with pytest.raises(TLSUsageError):                       # not what this state waits for
        hs.key_exchange_done(share.public, bytes(32))
    cmds = hs.derive_and_sign_done(bytes(32), b"sig")
    # ServerHello (with our share) and the compatibility CCS come first
    assert [type(k).__name__ for k in cmds[:2]] == ["SendHandshake", "SendChangeCipherSpec"]
    assert cmds[0].epoch == Epoch.INITIAL and share.public in cmds[0].data
    assert [(k.direction, k.epoch) for k in cmds if isinstance(k, InstallKeys)] == [
        ("write", Epoch.HANDSHAKE), ("read", Epoch.HANDSHAKE), ("write", Epoch.APPLICATION)]
    [flight] = [k for k in cmds[2:] if isinstance(k, SendHandshake)]
    assert [m[0] for m in split_handshake_messages(flight.data)] == [
        c.ENCRYPTED_EXTENSIONS, c.CERTIFICATE, c.CERTIFICATE_VERIFY, c.FINISHED]


def test_psk_resumption_does_not_take_a_key_share(x25519_only):
    # nothing to sign on resumption: the one-op exchange is one round trip anyway
    hs, asked = _sharing_machine(x25519_only, {"x25519": _x25519_share()})
    [kx] = hs.receive_message(Epoch.INITIAL, _psk_hello(x25519_only))
    assert asked == [] and kx.private_key is None


def test_hello_retry_takes_the_key_share_for_the_retried_hello_only(x25519_only):
    from vcproxy.tls._commands import DeriveAndSign
    hs, asked = _sharing_machine(x25519_only, {"x25519": _x25519_share()})
    hrr = hs.receive_message(Epoch.INITIAL, client_hello(
        share=bytes(65), share_group=P256, groups=(P256, X25519)))[0].data
    assert asked == []
    cmds = hs.receive_message(Epoch.INITIAL, _hello2(_hrr_cookie(hrr)))
    assert asked == ["x25519"] and isinstance(cmds[-1], DeriveAndSign)


def test_no_key_share_in_stock_runs_the_one_op_exchange(x25519_only):
    from vcproxy.tls._handshake import KeyExchange
    hs, asked = _sharing_machine(x25519_only, {})
    [kx] = hs.receive_message(Epoch.INITIAL, client_hello(share=bytes(32)))
    assert asked == ["x25519"] and kx == KeyExchange("x25519", bytes(32))


def test_a_key_share_of_another_group_is_a_usage_error(x25519_only):
    from vcproxy.tls import InlineProvider
    hs, _ = _sharing_machine(x25519_only, {"x25519": InlineProvider().key_share("secp256r1")})
    with pytest.raises(TLSUsageError, match="secp256r1 share"):
        hs.receive_message(Epoch.INITIAL, client_hello(share=bytes(32)))
