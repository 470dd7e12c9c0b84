"""TLS 1.3 conformance probes, sent as a crafting client sends them: a bad or
broken client Finished, odd records, old legacy_version values, odd key
shares and groups, record size limits. Each refusal is checked where a real
client sees it: the client decrypts our alert with the keys it derived (the
server application keys from our Finished on, RFC 8446 §4.4.4 / App. A.2)
and the test asserts the exact alert description inside.

The scripted client is ``miniclient.MiniClient`` over a trio memory stream
(``memstream.pair``); nothing here touches a socket.
"""
from __future__ import annotations

import pytest
import trio
from cryptography.exceptions import InvalidTag

from tests.tls.memstream import pair
from tests.tls.miniclient import Keys, MiniClient, client_hello, ext
from vcproxy.tls import AlertDescription as A, InlineProvider, TLSError, TLSPeerError
from vcproxy.tls import _codec as c
from vcproxy.tls._record import record_header

MAX_PLAINTEXT = 1 << 14
X25519, SECP256R1, FFDHE2048, FFDHE3072 = 0x001D, 0x0017, 0x0100, 0x0101
UNKNOWN_GROUP, GREASE_GROUP = 0xFEFE, 0x0A0A


def sealed(keys: Keys, inner: bytes, *, length: int | None = None, flip_tag: bool = False) -> bytes:
    """One protected record of ``inner`` (TLSInnerPlaintext, type and padding
    included) under ``keys``; ``flip_tag`` breaks the AEAD tag."""
    header = record_header(23, len(inner) + 16 if length is None else length)
    body = bytearray(keys.aead.encrypt(keys.nonce(), inner, header))
    if flip_tag:
        body[-1] ^= 0x01
    return header + bytes(body)


async def read_alert(client: MiniClient) -> bytes:
    """The next record from the server, which must be an alert we can open."""
    try:
        ctype, data = await client.record()
    except InvalidTag:
        pytest.fail("the server's alert does not open under the keys the client reads with "
                    "(the server application keys once the server Finished is out)")
    assert ctype == 21, (ctype, data)
    return data


async def refused(server, client: MiniClient, probe, *, after_handshake: bool) -> tuple[TLSError, bytes]:
    """Run ``probe(client)``; return the server's failure and the alert the client read."""
    failure: list[TLSError] = []

    async def run_server():
        try:
            await server.do_handshake()
            if after_handshake:
                while await server.receive_some():
                    pass
        except TLSError as exc:
            failure.append(exc)

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(run_server)
            await probe(client)
            alert = await read_alert(client)
            await client.stream.aclose()  # ends the server's lingering drain
    assert failure, "the server did not fail"
    return failure[0], alert


def assert_refused(failure: TLSError, alert: bytes, expected: A) -> None:
    assert isinstance(failure, TLSPeerError) and failure.alert == expected, failure
    assert alert == bytes((2, expected)), f"client read alert {alert!r}, expected {expected.name}"


async def echo_after(server, client: MiniClient, **handshake_kw) -> None:
    """Handshake, then one application record each way."""
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(server.do_handshake)
            await client.handshake(**handshake_kw)
        await client.send_app(b"ping")
        assert await server.receive_some() == b"ping"
        await server.send_all(b"pong")
        assert await client.recv_app() == b"pong"


# ---- 1. alerts after our Finished are under the server application key ---------

def _raw(data_of):
    async def send(cl):
        await cl.stream.send_all(data_of(cl))
    return send


def _protected(inner_of, **kw):
    return _raw(lambda cl: sealed(cl.write, inner_of(cl), **kw))


OVERLONG = MAX_PLAINTEXT + 256 + 1
#: Records a client may send where its Finished (or, later, application data)
#: belongs, each with the alert RFC 8446 names for it.
BAD_RECORDS = {
    # a tag that does not verify: §5.2
    "broken tag": (_protected(lambda cl: b"x" * 20 + b"\x17", flip_tag=True), A.bad_record_mac),
    # too short to hold a tag at all
    "zero-length record": (_raw(lambda cl: b"\x17\x03\x03\x00\x00"), A.bad_record_mac),
    # §5.2: length > 2^14 + 256
    "over-long record": (_raw(lambda cl: record_header(23, OVERLONG) + bytes(OVERLONG)),
                         A.record_overflow),
    # §5.4: no non-zero octet in TLSInnerPlaintext
    "inner content type 0": (_protected(lambda cl: bytes(20)), A.unexpected_message),
    # §5.1: TLSInnerPlaintext.content over 2^14
    "content over 2^14": (_protected(lambda cl: b"x" * (MAX_PLAINTEXT + 1) + b"\x17"),
                          A.record_overflow),
    # §5.4: "The presence of padding does not change the overall record size
    # limitations: the full encoded TLSInnerPlaintext MUST NOT exceed 2^14 + 1"
    "padded inner over 2^14 + 1": (
        _protected(lambda cl: b"x" * 10 + b"\x17" + bytes(MAX_PLAINTEXT - 9)), A.record_overflow),
}
INSTEAD_OF_FINISHED = {
    **BAD_RECORDS,
    "bad Finished": (lambda cl: cl.send_protected(22, c.finished(bytes(32))), A.decrypt_error),
    "broken tag on the Finished": (
        _protected(lambda cl: cl.finished + b"\x16", flip_tag=True), A.bad_record_mac),
    "application data before the Finished": (
        lambda cl: cl.send_protected(23, b"GET / HTTP/1.1\r\n\r\n"), A.unexpected_message),
    "change_cipher_spec other than 0x01": (lambda cl: cl.send_plain(20, b"\x02"),
                                           A.unexpected_message),
    "padded Finished over 2^14 + 1": (
        _protected(lambda cl: cl.finished + b"\x16" + bytes(MAX_PLAINTEXT + 1 - len(cl.finished))),
        A.record_overflow),
}
AFTER_HANDSHAKE = {
    **BAD_RECORDS,
    "change_cipher_spec after the Finished": (lambda cl: cl.send_plain(20, b"\x01"),
                                              A.unexpected_message),
}


@pytest.mark.parametrize("name", list(INSTEAD_OF_FINISHED))
async def test_alert_instead_of_client_finished_is_under_application_key(config, name):
    probe, expected = INSTEAD_OF_FINISHED[name]
    server, _, client = pair(config)

    async def run(cl):
        await cl.handshake(send_finished=False)  # the client reads with server_ap now
        await probe(cl)
    failure, alert = await refused(server, client, run, after_handshake=False)
    assert_refused(failure, alert, expected)


@pytest.mark.parametrize("name", list(AFTER_HANDSHAKE))
async def test_alert_after_handshake(config, name):
    probe, expected = AFTER_HANDSHAKE[name]
    server, _, client = pair(config)

    async def run(cl):
        await cl.handshake()
        await probe(cl)
    failure, alert = await refused(server, client, run, after_handshake=True)
    assert_refused(failure, alert, expected)


# ---- 2. legacy_version below TLS 1.2 ------------------------------------------

@pytest.mark.parametrize("legacy_version", [0x0300, 0x0301, 0x0302, 0x0002], ids=hex)
async def test_old_legacy_version_with_tls13_offered_is_protocol_version(config, legacy_version):
    # RFC 8446 §4.1.2: a TLS 1.3 ClientHello sets legacy_version 0x0303;
    # App. D.5 and RFC 8996: SSL 3.0, TLS 1.0 and 1.1 are not negotiable.
    server, _, client = pair(config)

    async def send(cl):
        await cl.send_plain(22, client_hello(share=cl.share, legacy_version=legacy_version,
                                             versions=(0x0304, 0x0303)))
    failure, alert = await refused(server, client, send, after_handshake=False)
    assert_refused(failure, alert, A.protocol_version)


# ---- 3. key shares and groups -----------------------------------------------

@pytest.fixture(params=["inline", "vcrypto"])
def share_provider(request):
    """The share checks hold whatever runs the key exchange (vcrypto: the host)."""
    if request.param == "inline":
        return InlineProvider()
    return request.getfixturevalue("vcrypto_tls_provider")


#: u = 1 has small order: X25519 with it is all-zero (RFC 7748 §6.1).
SMALL_ORDER_X25519 = b"\x01" + bytes(31)


@pytest.mark.parametrize("share", [b"", bytes(32), SMALL_ORDER_X25519, bytes(31), bytes(33)],
                         ids=["empty", "all-zero", "small-order", "short", "long"])
async def test_bad_x25519_share_is_illegal_parameter(config, share_provider, share):
    # RFC 8446 §4.2.8: a share that is not a valid X25519 value is
    # illegal_parameter; RFC 7748 §6.1: an all-zero shared secret is refused.
    server, _, client = pair(config, share_provider)

    async def send(cl):
        await cl.send_plain(22, client_hello(share=share))
    failure, alert = await refused(server, client, send, after_handshake=False)
    assert_refused(failure, alert, A.illegal_parameter)


FFDHE_SHARE = b"\x02" * 256


@pytest.mark.parametrize("groups,shares", [
    ((FFDHE2048,), [(FFDHE2048, FFDHE_SHARE)]),
    ((FFDHE2048, FFDHE3072), []),
    ((UNKNOWN_GROUP,), [(UNKNOWN_GROUP, b"\x01" * 32)]),
    ((UNKNOWN_GROUP, FFDHE2048), [(UNKNOWN_GROUP, b"")]),
    ((FFDHE2048,), [(X25519, "client")]),   # a share too, but no group of ours offered
], ids=["ffdhe", "ffdhe-no-shares", "unknown", "unknown-empty-share", "ffdhe-with-x25519-share"])
async def test_only_unsupported_groups_is_handshake_failure(config, groups, shares):
    # RFC 8446 §4.1.1: no group in common → handshake_failure.
    server, _, client = pair(config)

    async def send(cl):
        ks = [(g, cl.share if s == "client" else s) for g, s in shares]
        await cl.send_plain(22, client_hello(groups=groups, key_shares=ks))
    failure, alert = await refused(server, client, send, after_handshake=False)
    assert_refused(failure, alert, A.handshake_failure)


@pytest.mark.parametrize("groups,shares", [
    ((UNKNOWN_GROUP, X25519), [(UNKNOWN_GROUP, b"\xab" * 8), (X25519, "client")]),
    ((UNKNOWN_GROUP, X25519), [(UNKNOWN_GROUP, b""), (X25519, "client")]),
    ((GREASE_GROUP, FFDHE2048, X25519), [(GREASE_GROUP, b"\x00"), (X25519, "client")]),
    ((X25519,), [(UNKNOWN_GROUP, b"\x01"), (X25519, "client")]),
], ids=["unknown-share-first", "unknown-empty-share", "grease", "unknown-share-not-in-groups"])
async def test_unknown_groups_next_to_a_known_one_are_ignored(config, groups, shares):
    server, _, client = pair(config)
    ks = [(g, client.share if s == "client" else s) for g, s in shares]
    await echo_after(server, client, ch=client_hello(groups=groups, key_shares=ks))
    assert server.named_group == "x25519"


async def test_share_of_a_known_group_not_in_supported_groups_is_still_illegal_parameter(config):
    # RFC 8446 §4.2.8: shares only for groups in supported_groups (checked for
    # the groups we implement: a common group exists, so this is the fault).
    server, _, client = pair(config)

    async def send(cl):
        await cl.send_plain(22, client_hello(groups=(SECP256R1,), key_shares=[(X25519, cl.share)]))
    failure, alert = await refused(server, client, send, after_handshake=False)
    assert_refused(failure, alert, A.illegal_parameter)


# ---- 4. record size limits: the largest records are accepted -------------

async def test_maximum_size_padded_handshake_record_is_accepted(config):
    # The client Finished padded to the full TLSInnerPlaintext of 2^14 + 1 bytes.
    server, _, client = pair(config)
    padding = MAX_PLAINTEXT + 1 - 36 - 1  # Finished (4 + 32) and the type byte
    await echo_after(server, client, finished_padding=padding)


@pytest.mark.parametrize("content,padding", [(MAX_PLAINTEXT, 0), (10, MAX_PLAINTEXT - 10)])
async def test_maximum_size_application_records_are_accepted(config, content, padding):
    server, _, client = pair(config)
    await echo_after(server, client)
    await client.send_protected(23, b"a" * content, padding=padding)
    got = b""
    while len(got) < content:
        got += await server.receive_some()
    assert got == b"a" * content
    await server.aclose()


async def test_maximum_size_plaintext_client_hello_record_is_accepted(config):
    # A ClientHello of exactly 2^14 bytes in one plaintext record (§5.1), made
    # so by the padding extension (RFC 7685); one byte more is record_overflow.
    server, _, client = pair(config)
    base = client_hello(share=client.share, extra=ext(21, b""))
    ch = client_hello(share=client.share, extra=ext(21, bytes(MAX_PLAINTEXT - len(base))))
    assert len(ch) == MAX_PLAINTEXT
    await echo_after(server, client, ch=ch)

    server, _, client = pair(config)
    ch = client_hello(share=client.share, extra=ext(21, bytes(MAX_PLAINTEXT + 1 - len(base))))

    async def send(cl):
        await cl.send_plain(22, ch)
    failure, alert = await refused(server, client, send, after_handshake=False)
    assert_refused(failure, alert, A.record_overflow)
