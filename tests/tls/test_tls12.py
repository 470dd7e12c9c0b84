"""TLS 1.2: key schedule against published vectors and an independent PRF
(OpenSSL's), the sans-IO state machine driven with a deterministic provider,
record protection, and hypothesis on every TLS 1.2 codec."""
from __future__ import annotations

import dataclasses
import hashlib
import itertools
import subprocess

import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tests.tls.helpers import server_config
from tests.tls.miniclient import ext
from tests.tls.miniclient12 import Hello12, MiniClient12, client_hello12, split_messages
from vcproxy.tls import AlertDescription as A
from vcproxy.tls import BadRecordMac, InlineProvider, TLSError, TLSPeerError, TLSStream
from vcproxy.tls import _codec as c
from vcproxy.tls import _codec12 as c12
from vcproxy.tls._errors import DecodeError, DecryptError, UnexpectedMessage
from vcproxy.tls._handshake import (
    Epoch, HandshakeComplete, KeyExchange, SendChangeCipherSpec, SendHandshake, ServerHandshake,
    Sign,
)
from vcproxy.tls._handshake12 import InstallRecordKeys, SendAlert
from vcproxy.tls._keyschedule12 import SUITES12, key_block, master_secret, prf
from vcproxy.tls._provider import BASE_POINTS, _inline_key_exchange
from vcproxy.tls._record12 import Protection12

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
NOW_S = 1_800_000_000.0


# ---- key schedule ---------------------------------------------------------------

# The TLS 1.2 PRF vectors published on the IETF TLS list (msg03416), 100 and
# 148 bytes of output.
PRF_VECTORS = [
    ("sha256", "9bbe436ba940f017b17652849a71db35", "a0ba9f936cda311827a6f796ffd5198c",
     "e3f229ba727be17b8d122620557cd453c2aab21d07c3d495329b52d4e61edb5a6b301791e90d35c9c9a4"
     "6b4e14baf9af0fa022f7077def17abfd3797c0564bab4fbc91666e9def9b97fce34f796789baa48082d1"
     "22ee42c5a72e5a5110fff70187347b66"),
    ("sha384", "b80b733d6ceefcdc71566ea48e5567df", "cd665cf6a8447dd6ff8b27555edb7465",
     "7b0c18e9ced410ed1804f2cfa34a336a1c14dffb4900bb5fd7942107e81c83cde9ca0faa60be9fe34f82"
     "b1233c9146a0e534cb400fed2700884f9dc236f80edd8bfa961144c9e8d792eca722a7b32fc3d416d473"
     "ebc2c5fd4abfdad05d9184259b5bf8cd4d90fa0d31e2dec479e4f1a26066f2eea9a69236a3e52655c9e9"
     "aee691c8f3a26854308d5eaa3be85e0990703d73e56f"),
]


@pytest.mark.parametrize("hash_name,secret,seed,expected", PRF_VECTORS)
def test_prf_published_vectors(hash_name, secret, seed, expected):
    out = prf(hash_name, bytes.fromhex(secret), b"test label", bytes.fromhex(seed),
              len(expected) // 2)
    assert out.hex() == expected


def _openssl_prf(digest: str, secret: bytes, seed: bytes, length: int) -> bytes:
    out = subprocess.run(
        ["openssl", "kdf", "-keylen", str(length), "-kdfopt", f"digest:{digest}",
         "-kdfopt", f"hexsecret:{secret.hex()}", "-kdfopt", f"hexseed:{seed.hex()}", "TLS1-PRF"],
        check=True, capture_output=True, text=True).stdout
    return bytes.fromhex(out.strip().replace(":", ""))


@pytest.mark.parametrize("suite_name", ["TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
                                        "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
                                        "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256"])
def test_ems_master_and_key_block_match_openssl(suite_name):
    """RFC 7627 §4 and RFC 5246 §6.3 through OpenSSL's TLS1-PRF (an independent
    implementation): EMS master secret, classic master secret, key block."""
    suite = SUITES12[suite_name]
    digest = suite.hash_name.upper()
    pms = bytes(range(32))
    session_hash = hashlib.new(suite.hash_name, b"ClientHello..ClientKeyExchange").digest()
    cr, sr = bytes([1]) * 32, bytes([2]) * 32
    ems = master_secret(suite, pms, session_hash=session_hash, client_random=cr, server_random=sr)
    assert ems == _openssl_prf(digest, pms, b"extended master secret" + session_hash, 48)
    classic = master_secret(suite, pms, session_hash=None, client_random=cr, server_random=sr)
    assert classic == _openssl_prf(digest, pms, b"master secret" + cr + sr, 48)
    kb = key_block(suite, ems, cr, sr)
    n = 2 * suite.key_len + 2 * suite.iv_len
    assert kb.client_key + kb.server_key + kb.client_iv + kb.server_iv == \
        _openssl_prf(digest, ems, b"key expansion" + sr + cr, n)
    assert len(kb.client_iv) == (4 if "GCM" in suite_name else 12)


# ---- the state machine, deterministic provider ------------------------------------

def deterministic_random():
    counter = itertools.count()
    return lambda n: hashlib.shake_256(next(counter).to_bytes(8, "big")).digest(n)


def fake_sign(message: bytes) -> bytes:
    return b"sig:" + hashlib.sha256(message).digest()


@pytest.fixture(scope="module")
def config12(test_certs):
    return server_config([test_certs["ecdsa-p256"], test_certs["rsa-2048"]],
                         alpn_protocols=["http/1.1"])


class Run:
    """One server handshake driven by hand: the test plays the provider."""

    def __init__(self, config, hello: bytes, key_share=None):
        kw = {} if key_share is None else {"key_share": key_share}
        self.hs = ServerHandshake(config, random_bytes=deterministic_random(), now_s=lambda: NOW_S, **kw)
        self.shared = key_share is not None
        self.client = Hello12(hello)
        self.signed: bytes | None = None

    def provide(self, cmds):
        """Run the blocking command at the end of ``cmds``, feed its result back."""
        out = list(cmds)
        while out and type(out[-1]) in (KeyExchange, Sign):
            cmd = out.pop()
            if type(cmd) is KeyExchange:
                assert cmd.private_key is not None  # TLS 1.2 always uses the keyed form
                out += self.hs.key_exchange_done(
                    *_inline_key_exchange(cmd.group, cmd.peer_public, cmd.private_key))
            else:
                self.signed = cmd.message
                out += self.hs.signature_done(fake_sign(cmd.message))
        return out

    def full(self):
        """ClientHello .. client Finished; returns the server's last commands."""
        first = self.hs.receive_message(Epoch.INITIAL, self.client.hello)
        if self.shared:  # a pre-generated share: the ServerKeyExchange signature is asked for at once
            assert [type(k) for k in first] == [Sign]
        else:
            assert type(first[-1]) is KeyExchange and first[-1].peer_public == BASE_POINTS["x25519"]
        [flight] = self.provide(first)
        assert type(flight) is SendHandshake and flight.epoch is Epoch.INITIAL
        self.flight = split_messages(flight.data)
        self.client.server_flight(self.flight)
        assert self.provide(self.hs.receive_message(Epoch.INITIAL,
                                                    self.client.client_key_exchange())) == []
        [read] = self.hs.receive_change_cipher_spec()
        keys = self.client.keys()
        assert read == InstallRecordKeys("read", Epoch.APPLICATION, self.client.suite,
                                         keys.client_key, keys.client_iv)
        return self.hs.receive_message(Epoch.APPLICATION, self.client.finished())


def test_full_handshake_with_a_pre_generated_key_share(config12):
    from vcproxy.tls import InlineProvider
    shares = []

    def key_share(group):
        shares.append(InlineProvider().key_share(group))
        return shares[-1]

    run = Run(config12, client_hello12(), key_share=key_share)
    cmds = run.full()
    assert isinstance(cmds[-1], HandshakeComplete)
    [share] = shares
    _, _, ske, _ = run.flight
    assert share.public in ske   # our ServerKeyExchange carries the pooled share
    # the derive used that share's scalar (the client's keys matched: Finished verified)


def test_full_handshake_commands(config12):
    run = Run(config12, client_hello12(ticket=b"", extra=ext(c12.EXT_EC_POINT_FORMATS, b"\x01\x00")))
    cmds = run.full()
    names = [c.HANDSHAKE_NAMES[m[0]] for m in run.flight]
    assert names == ["ServerHello", "Certificate", "ServerKeyExchange", "ServerHelloDone"]
    sh, _, ske, _ = run.flight
    server_random = sh[6:38]
    # RFC 8446 §4.1.3: a TLS 1.3 server negotiating TLS 1.2 marks its random
    assert server_random.endswith(c12.DOWNGRADE_TLS12)
    assert sh[38] == 0  # no session id issued (session-id resumption is not offered)
    assert _server_hello_extension_types(sh) == [c12.EXT_RENEGOTIATION_INFO, c12.EXT_EXTENDED_MASTER_SECRET,
                       c12.EXT_SESSION_TICKET, c12.EXT_EC_POINT_FORMATS, 0]
    params = ske[4:4 + 4 + ske[7]]
    assert run.signed == run.client.random + server_random + params  # RFC 5246 §7.4.3
    assert ske.endswith(c.vec16(fake_sign(run.signed)))
    assert ske[4 + len(params):6 + len(params)] == b"\x04\x03"  # ecdsa_secp256r1_sha256
    # after the verified client Finished: ticket, CCS, write keys, Finished, done
    nst, ccs, write, fin, done = cmds
    assert type(nst) is SendHandshake and nst.data[0] == c.NEW_SESSION_TICKET
    assert type(ccs) is SendChangeCipherSpec
    keys = run.client.keys()
    assert write == InstallRecordKeys("write", Epoch.APPLICATION, run.client.suite,
                                      keys.server_key, keys.server_iv)
    run.client.messages.append(nst.data)
    assert fin == SendHandshake(Epoch.APPLICATION, run.client.expected_server_finished())
    assert type(done) is HandshakeComplete
    info = done.info
    assert (info.version, info.cipher_suite, info.named_group, info.resumed, info.alpn_protocol) == \
        ("TLSv1.2", "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256", "x25519", False, None)
    # Connected: a renegotiation attempt gets a warning, and the state stays
    assert run.hs.receive_message(Epoch.APPLICATION, client_hello12()) == \
        [SendAlert(1, A.no_renegotiation)]
    assert type(run.hs.state).__name__ == "Connected12"


def _server_hello_extension_types(sh: bytes) -> list[int]:
    r = c.Reader(sh, 4 + 2 + 32)
    r.vec(1, "session_id")
    r.u16("suite"), r.u8("compression")
    exts = r.sub(2, "extensions")
    r.end("ServerHello")
    types = []
    while exts.left():
        types.append(exts.u16())
        exts.vec(2, "extension_data")
    return types


def test_same_inputs_same_bytes(config12):
    """Deterministic provider and randoms: the whole server side is reproducible."""
    hello = client_hello12(random=bytes(32))
    flights = []
    for _ in range(2):
        run = Run(config12, hello)
        run.client.key = Hello12(hello).key  # (the client's own key may differ)
        first = run.provide(run.hs.receive_message(Epoch.INITIAL, hello))
        flights.append(first[0].data)
    assert flights[0] == flights[1]


def test_ticket_resumption_is_abbreviated(config12):
    run = Run(config12, client_hello12(ticket=b""))
    cmds = run.full()
    nst = cmds[0].data
    ticket = nst[4 + 4 + 2:]
    master = run.client.master
    again = Run(config12, client_hello12(ticket=ticket, session_id=b"s" * 32))
    sh, ccs, write, fin = again.hs.receive_message(Epoch.INITIAL, again.client.hello)
    again.client.server_hello(sh.data)
    assert again.client.session_id == b"s" * 32  # echoed: RFC 5077 §3.4
    assert type(ccs) is SendChangeCipherSpec and type(write) is InstallRecordKeys
    again.client.master = master
    assert fin == SendHandshake(Epoch.APPLICATION, again.client.expected_server_finished())
    again.client.messages.append(fin.data)
    [read] = again.hs.receive_change_cipher_spec()
    assert read.key == again.client.keys().client_key
    [done] = again.hs.receive_message(Epoch.APPLICATION, again.client.finished())
    assert done.info.resumed and done.info.cipher_suite == "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256"


def test_bad_client_finished_is_decrypt_error(config12):
    run = Run(config12, client_hello12())
    run.client.finished = lambda: c.finished(bytes(12))
    with pytest.raises(DecryptError):
        run.full()


def test_finished_before_change_cipher_spec_is_unexpected(config12):
    run = Run(config12, client_hello12())
    run.client.server_flight(split_messages(
        run.provide(run.hs.receive_message(Epoch.INITIAL, run.client.hello))[0].data))
    run.provide(run.hs.receive_message(Epoch.INITIAL, run.client.client_key_exchange()))
    with pytest.raises(UnexpectedMessage, match="expected ChangeCipherSpec"):
        run.hs.receive_message(Epoch.INITIAL, run.client.finished())


def test_change_cipher_spec_before_key_exchange_is_unexpected(config12):
    run = Run(config12, client_hello12())
    run.provide(run.hs.receive_message(Epoch.INITIAL, run.client.hello))
    with pytest.raises(UnexpectedMessage, match="expected ClientKeyExchange, got ChangeCipherSpec"):
        run.hs.receive_change_cipher_spec()


def test_without_ems_when_allowed_uses_the_rfc5246_master_secret(config12):
    config = dataclasses.replace(config12, require_extended_master_secret=False)
    run = Run(config, client_hello12(ems=False, ticket=b""))
    cmds = run.full()  # (the client side derives the RFC 5246 master secret)
    assert type(cmds[-1]) is HandshakeComplete
    # only EMS sessions get a ticket (RFC 7627 §5.3 then holds on resumption)
    assert not any(type(x) is SendHandshake and x.data[0] == c.NEW_SESSION_TICKET for x in cmds)


@pytest.mark.parametrize("hello,config_kw,alert", [
    (client_hello12(ems=False), {}, A.handshake_failure),                       # RFC 7627
    (client_hello12(legacy_version=0x0302), {}, A.protocol_version),            # TLS 1.1
    (client_hello12(suites=(0xC02B, 0x5600)), {}, A.inappropriate_fallback),   # RFC 7507
    (client_hello12(groups=(0x0017,), suites=(0xC02B,)), {"versions": ["1.3"]}, A.protocol_version),
    (client_hello12(suites=(0x009C,)), {}, A.handshake_failure),                # RSA kx: never
    (client_hello12(sig_algs=None), {}, A.handshake_failure),                   # SHA-1 only
    (client_hello12(groups=(0x0100,)), {}, A.handshake_failure),                # FFDHE only
    (client_hello12(extra=ext(c12.EXT_EC_POINT_FORMATS, b"\x01\x01")), {}, A.illegal_parameter),
    (client_hello12(renegotiation_info=c.vec8(bytes(12))), {}, A.handshake_failure),  # RFC 5746
])
def test_refused_hellos(config12, hello, config_kw, alert):
    config = dataclasses.replace(config12, **config_kw) if config_kw else config12
    hs = ServerHandshake(config, random_bytes=deterministic_random(), now_s=lambda: NOW_S)
    with pytest.raises(TLSPeerError) as info:
        hs.receive_message(Epoch.INITIAL, hello)
    assert info.value.alert == alert, info.value


def test_fallback_scsv_is_fine_when_12_is_our_best(config12):
    config = dataclasses.replace(config12, versions=["1.2"])
    hs = ServerHandshake(config, random_bytes=deterministic_random(), now_s=lambda: NOW_S)
    cmds = hs.receive_message(Epoch.INITIAL, client_hello12(suites=(0xC02B, 0x5600)))
    assert type(cmds[-1]) is KeyExchange


def test_ecdsa_certificate_curve_must_be_in_client_groups(config12):
    # RFC 8422 §5.1: x25519 only excludes the P-256 certificate -> the RSA one
    hs = ServerHandshake(config12, random_bytes=deterministic_random(), now_s=lambda: NOW_S)
    hello = client_hello12(groups=(0x001D,), suites=(0xC02B, 0xC02F))  # (no P-256)
    hs.receive_message(Epoch.INITIAL, hello)
    assert hs.state.neg.suite.name == "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256"


# ---- over a stream: renegotiation refused, data kept ------------------------------

async def test_renegotiation_refused_and_data_goes_on(config12):
    a, b = trio.testing.memory_stream_pair()
    server = TLSStream(a, config12, InlineProvider())
    client = MiniClient12(b)

    async def serve():
        while data := await server.receive_some():
            await server.send_all(b"echo:" + data)
        await server.aclose()  # our close_notify

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve)
            await _renegotiate(client, server)


async def _renegotiate(client, server):
    await client.handshake()
    await client.send(23, b"one")
    assert await client.record() == (23, b"echo:one")
    await client.send(22, client_hello12())          # renegotiation attempt
    assert await client.record() == (21, bytes((1, A.no_renegotiation)))
    await client.send(23, b"two")                    # the connection goes on
    assert await client.record() == (23, b"echo:two")
    assert server.version == "TLSv1.2"
    await client.send(21, b"\x01\x00")               # close_notify
    assert (await client.record())[0] == 21


# ---- record protection -------------------------------------------------------------

@pytest.mark.parametrize("name", ["TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
                                  "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256"])
def test_protection12_round_trip_and_nonce(name):
    suite = SUITES12[name]
    provider = InlineProvider()
    key, iv = bytes(range(suite.key_len)), bytes(range(100, 100 + suite.iv_len))
    write = Protection12(suite, provider.aead(suite.aead_alg, key), iv)
    read = Protection12(suite, provider.aead(suite.aead_alg, key), iv)
    for seq, data in enumerate([b"hello", b"", b"x" * 16384]):
        item = write.seal_item(23, data)
        nonce, aad, _ = item
        assert aad == seq.to_bytes(8, "big") + b"\x17\x03\x03" + len(data).to_bytes(2, "big")
        if suite.explicit_nonce_len:  # RFC 5288 §3: salt || explicit nonce = seq
            assert nonce == iv + seq.to_bytes(8, "big")
        else:                         # RFC 7905 §2: iv xor padded seq
            assert nonce == (int.from_bytes(iv, "big") ^ seq).to_bytes(12, "big")
        record = write.wire_prefix(item) + write.session.seal(*item)
        header, payload = record[:5], record[5:]
        assert int.from_bytes(header[3:5], "big") == len(payload)
        assert read.content(header[0], read.session.open(*read.open_item(seq, header, payload))) \
            == (23, data)
    with pytest.raises(BadRecordMac):
        read.open_item(0, b"\x17\x03\x03\x00\x05", b"short")


# ---- hypothesis on every TLS 1.2 codec ---------------------------------------------

@FUZZ
@given(st.binary(max_size=300))
@example(b"\x10\x00\x00\x01\x00")
@example(b"\x10\x00\x00\x02\x05\x00")
def test_client_key_exchange_codec(data):
    try:
        point = c12.parse_client_key_exchange(data)
    except DecodeError:
        return
    assert c.handshake(c12.CLIENT_KEY_EXCHANGE, c.vec8(point)) == data


@FUZZ
@given(st.lists(st.tuples(st.sampled_from([c12.EXT_EXTENDED_MASTER_SECRET,
                                           c12.EXT_RENEGOTIATION_INFO, c12.EXT_SESSION_TICKET,
                                           c12.EXT_EC_POINT_FORMATS]),
                          st.binary(max_size=12)), max_size=4, unique_by=lambda t: t[0]))
def test_hello12_extensions_codec(exts):
    hello = c.parse_client_hello(client_hello12(
        ems=False, renegotiation_info=None, extra=b"".join(ext(t, d) for t, d in exts)))
    try:
        parsed = c12.hello12_extensions(hello)
    except TLSError as exc:
        assert isinstance(exc, TLSPeerError) and isinstance(exc.alert, A)
        return
    assert parsed.extended_master_secret == any(t == c12.EXT_EXTENDED_MASTER_SECRET for t, _ in exts)


@FUZZ
@given(st.binary(max_size=80), st.integers(0, 2**64 - 1))
def test_protection12_open_any_payload(payload, seq):
    suite = SUITES12["TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256"]
    read = Protection12(suite, InlineProvider().aead(suite.aead_alg, bytes(16)), bytes(4))
    try:
        read.session.open(*read.open_item(seq, b"\x17\x03\x03" + len(payload).to_bytes(2, "big"),
                                          payload))
    except BadRecordMac:
        return
    raise AssertionError("a random payload opened")


async def test_renegotiation_warning_while_another_task_sends(config12):
    """The receiving task sends the no_renegotiation warning itself; a
    send_all that starts while that warning is still being written waits for
    it (records never interleave) instead of failing with BusyResourceError."""
    a, b = trio.testing.lockstep_stream_pair()   # a write waits for the peer's read
    server = TLSStream(a, config12, InlineProvider())
    client = MiniClient12(b)
    got = []

    async def receive():
        got.append(await server.receive_some())   # the renegotiation hello: warns, then waits

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(server.do_handshake)
            await client.handshake()
            nursery.start_soon(receive)
            await client.send(22, client_hello12())
            await trio.testing.wait_all_tasks_blocked()   # the warning's write is blocked on us
            nursery.start_soon(server.send_all, b"meanwhile")
            await trio.testing.wait_all_tasks_blocked()
            assert await client.record() == (21, bytes((1, A.no_renegotiation)))
            assert await client.record() == (23, b"meanwhile")
            await client.send(23, b"after")
    assert got == [b"after"]


@pytest.mark.parametrize("op", ["send_all", "receive_some"])
async def test_other_task_waits_while_the_handshake_still_writes_its_finished(config12, op):
    """TLS 1.2: our CCS and Finished end the handshake. Another task's send_all,
    or receive_some answering a renegotiation hello with the warning, while that
    write has reached the client but not returned yet, waits for the handshake
    instead of writing into the transport at the same time (it failed with
    BusyResourceError, and the renegotiation test above did so ~half its runs)."""
    a, b = trio.testing.memory_stream_pair()
    release = trio.Event()

    async def deliver_then_hold():  # a socket that took our bytes, then yields
        data = a.send_stream.get_data_nowait()
        b.receive_stream.put_data(data)
        if b"\x14\x03\x03\x00\x01\x01" in data:  # the flight with our CCS
            await release.wait()

    a.send_stream.send_all_hook = deliver_then_hold
    server = TLSStream(a, config12, InlineProvider())
    client = MiniClient12(b)
    got = []

    async def receive():
        got.append(await server.receive_some())

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(server.do_handshake)
            await client.handshake()   # it has read our Finished; the write is held
            if op == "send_all":
                nursery.start_soon(server.send_all, b"meanwhile")
            else:
                nursery.start_soon(receive)
                await client.send(22, client_hello12())
            await trio.testing.wait_all_tasks_blocked()
            release.set()
            if op == "send_all":
                assert await client.record() == (23, b"meanwhile")
            else:
                assert await client.record() == (21, bytes((1, A.no_renegotiation)))
                await client.send(23, b"after")
    assert got == ([] if op == "send_all" else [b"after"])
