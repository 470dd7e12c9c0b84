"""TLSStream behaviour in memory: the handshake's alerts, limits and
timeouts, 0-RTT refusal, SNI, resumption, provider failures — driven by a
scripted client or Python's ssl. The record layer (batching, KeyUpdate,
close_notify, session release) is in ``test_stream_records``; both use the
in-memory pair in ``memstream`` and the ``config`` fixture in conftest."""
from __future__ import annotations

import dataclasses

import ssl

import pytest
import trio
import trio.testing

from tests.tls.helpers import CountingProvider, server_config
from tests.tls.memclient import MemoryTLSClient, client_context
from tests.tls.memstream import handshake, pair
from tests.tls.miniclient import MiniClient, client_hello, ext
from vcproxy.tls import (
    AlertDescription as A, HandshakeTimeout, InlineProvider, TLSError, TLSPeerError, TLSStream,
)
from vcproxy.tls import _codec as c


async def expect_alert(server: TLSStream, client: MiniClient, send, alert: A):
    """``send`` the client's bytes; the server must fail with ``alert`` and send it."""
    failure = []

    async def run_server():
        try:
            await server.do_handshake()
        except TLSError as exc:
            failure.append(exc)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run_server)
        await send(client)
        ctype, data = await client.record()
        await client.stream.aclose()  # ends the server's lingering drain
    assert failure and failure[0].alert == alert, failure
    assert isinstance(failure[0], TLSPeerError)
    assert (ctype, data) == (21, bytes((2, alert))), (ctype, data)


def _hello_sender(**kw):
    async def send(client):
        kw.setdefault("share", client.share)
        await client.send_plain(22, client_hello(**kw))
    return send


DUPLICATE_SNI = ext(0, c.vec16(b"\x00" + c.vec16(b"x")))


@pytest.mark.parametrize("send,alert", [
    (_hello_sender(versions=(0x0303,)), A.handshake_failure),        # TLS 1.2 without EMS
    (_hello_sender(suites=(0x1304,)), A.handshake_failure),
    (_hello_sender(extra=DUPLICATE_SNI), A.illegal_parameter),
    (_hello_sender(share=None), A.missing_extension),
    (_hello_sender(groups=(0x0017,)), A.illegal_parameter),          # share not in groups
    (_hello_sender(sig_algs=(0x0401,)), A.handshake_failure),         # rsa_pkcs1 only
    (_hello_sender(alpn=[b"h2"]), A.no_application_protocol),
    (_hello_sender(extra=ext(c.EXT_RECORD_SIZE_LIMIT, b"\x00\x10")), A.illegal_parameter),
    (_hello_sender(extra=ext(c.EXT_COOKIE, b"\x00")), A.decode_error),  # truncated vector
])
async def test_bad_hello_gets_the_right_alert(config, send, alert):
    server, _, client = pair(config)
    await expect_alert(server, client, send, alert)


@pytest.mark.parametrize("versions,alert", [(None, A.protocol_version),
                                            ((0x0303, 0x0302), A.protocol_version),
                                            ((), A.decode_error)])
async def test_hello_without_tls13_is_refused(config, versions, alert):
    server, _, client = pair(dataclasses.replace(config, versions=("1.3",)))
    await expect_alert(server, client, _hello_sender(versions=versions), alert)


async def test_python_ssl_tls12_only_client_gets_protocol_version(config):
    # (a server configured for TLS 1.3 only)
    a, b = trio.testing.memory_stream_pair()
    server = TLSStream(a, dataclasses.replace(config, versions=("1.3",)), InlineProvider())
    ctx = client_context(maximum_version=ssl.TLSVersion.TLSv1_2,
                         minimum_version=ssl.TLSVersion.TLSv1_2)
    client = MemoryTLSClient(b, ctx)

    async def run_client():
        with pytest.raises(ssl.SSLError, match="PROTOCOL_VERSION"):
            await client.handshake()
        await b.aclose()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(run_client)
        with pytest.raises(TLSError) as info:
            await server.do_handshake()
    assert info.value.alert == A.protocol_version


async def test_handshake_too_large_message_refused(test_certs):
    config = server_config([test_certs["ed25519"]], max_handshake_message_bytes=4096)

    async def send(client):
        await client.send_plain(22, b"\x01\x00\x20\x00" + b"\x00" * 100)  # claims 8192 bytes
    server, _, client = pair(config)
    await expect_alert(server, client, send, A.illegal_parameter)


@pytest.mark.parametrize("record,alert", [
    (b"\x17\x03\x03\x00\x05hello", A.unexpected_message),      # app data before keys
    (b"\x47ET / HTTP/1.1\r\n\r\n", A.unexpected_message),       # plain HTTP
    (b"\x16\x03\x01\x48\x01" + b"\x00" * 10, A.record_overflow),
    (b"\x16\x03\x01\x00\x04\x01\x00\x00\x00", A.decode_error),  # empty ClientHello
    (b"\x16\x03\x01\x00\x04\x02\x00\x00\x00", A.unexpected_message),  # ServerHello to a server
    (b"\x15\x03\x03\x00\x02\x02\x28", None),                    # the client's fatal alert
])
async def test_bad_first_records(config, record, alert):
    server, _, client = pair(config)
    if alert is None:
        await client.stream.send_all(record)
        await client.stream.send_eof()
        with pytest.raises(TLSError) as info:
            await server.do_handshake()
        assert info.value.alert == A.handshake_failure
        return

    async def send(cl):
        await cl.stream.send_all(record)
    await expect_alert(server, client, send, alert)


async def test_handshake_timeout(config, autojump_clock):
    server, _, _ = pair(config)
    start = trio.current_time()
    with pytest.raises(HandshakeTimeout):
        await server.do_handshake()
    assert trio.current_time() - start >= config.handshake_timeout_s
    with pytest.raises(trio.BrokenResourceError):
        await server.send_all(b"x")


async def test_bad_client_finished_is_decrypt_error(config):
    server, _, client = pair(config)

    async def run_client():
        await client.handshake(bad_finished=True)
        await client.stream.aclose()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(run_client)
        with pytest.raises(TLSError) as info:
            await server.do_handshake()
    assert info.value.alert == A.decrypt_error


async def test_ccs_tolerated_in_handshake_refused_after(config):
    server, rec, client = pair(config)
    ch = client_hello(share=client.share, session_id=b"s" * 32)
    await handshake(server, client, ch=ch, ccs_before_finished=True)
    assert _CCS in b"".join(rec.sent)  # compatibility mode: the server sent one too
    await client.send_app(b"ok")
    assert await server.receive_some() == b"ok"
    await client.send_plain(20, b"\x01")
    await client.stream.send_eof()
    with pytest.raises(TLSError) as info:
        await server.receive_some()
    assert info.value.alert == A.unexpected_message


_CCS = b"\x14\x03\x03\x00\x01\x01"


async def test_early_data_is_refused_and_skipped(config):
    server, _, client = pair(config)
    ch = client_hello(share=client.share, extra=ext(c.EXT_EARLY_DATA, b""))

    async def early(cl):  # 0-RTT records under keys the server never derives
        for _ in range(3):
            await cl.stream.send_all(b"\x17\x03\x03\x00\x40" + bytes(64))
    info = await handshake(server, client, ch=ch, after_hello=early)
    ee = info["encrypted_extensions"]
    assert c.EXT_EARLY_DATA.to_bytes(2, "big") not in ee[6:]  # not accepted
    await client.send_app(b"after")
    assert await server.receive_some() == b"after"


async def test_sni_selects_exact_then_wildcard_then_default():
    from tests.tls.certs import make_cert
    a, b = make_cert("ecdsa-p256", sans=("a.test",)), make_cert("ecdsa-p256", sans=("*.b.test",))
    config = server_config([a, b])

    async def peer_names(server_name):
        s1, s2 = trio.testing.memory_stream_pair()
        server = TLSStream(s1, config, InlineProvider())
        ctx = client_context(a.ca_pem)
        ctx.check_hostname = False
        client = MemoryTLSClient(s2, ctx, server_hostname=server_name)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(server.do_handshake)
            await client.handshake()
        return [v for _, v in client.obj.getpeercert()["subjectAltName"]], server.server_name

    assert await peer_names("a.test") == (["a.test"], "a.test")
    assert await peer_names("x.b.test") == (["*.b.test"], "x.b.test")
    assert (await peer_names("other.test"))[0] == ["a.test"]   # default: the first entry
    assert (await peer_names(None))[0] == ["a.test"]


async def test_python_ssl_resumption_in_memory(config):
    ctx = client_context()

    async def connect(session=None):
        s1, s2 = trio.testing.memory_stream_pair()
        server = TLSStream(s1, config, InlineProvider())
        client = MemoryTLSClient(s2, ctx, session=session)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(server.do_handshake)
            await client.handshake()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(server.send_all, b"data")
            assert await client.recv() == b"data"   # the ticket arrived before it
        return server, client

    server1, client1 = await connect()
    assert not server1.resumed
    server2, client2 = await connect(client1.obj.session)
    assert server2.resumed and client2.obj.session_reused
    assert server2.named_group == "x25519"  # psk_dhe_ke: still a fresh key exchange


async def test_client_hello_split_over_records(config):
    server, _, client = pair(config)
    await handshake(server, client, fragment=50)
    await client.send_app(b"ok")
    assert await server.receive_some() == b"ok"


async def test_handshake_bytes_left_at_key_change_are_refused(config):
    async def send(cl):
        # ClientHello and the start of another message in one record
        await cl.send_plain(22, client_hello(share=cl.share) + b"\x14\x00")
    server, _, client = pair(config)
    await expect_alert(server, client, send, A.unexpected_message)


async def test_handshake_bytes_left_at_the_finished_key_change_are_refused(test_certs):
    # Finished and the start of another message in one record: the read key
    # change after the Finished is refused, and no session leaks from it.
    provider = CountingProvider()
    server, _, client = pair(server_config([test_certs["ecdsa-p256"]]), provider)
    failure = []

    async def run_server():
        try:
            await server.do_handshake()
        except TLSError as exc:
            failure.append(exc)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run_server)
        await client.handshake(after_finished=b"\x14\x00")
        await client.stream.aclose()
    assert failure and failure[0].alert == A.unexpected_message
    assert "key change" in str(failure[0]), failure
    provider.check_sessions_closed_once()



@pytest.mark.parametrize("key_shares", [True, False], ids=["key-share", "one-op"])
async def test_provider_failure_is_local_error_with_internal_error_alert(config, key_shares):
    from vcproxy.tls import CryptoProviderError, TLSLocalError

    class BrokenSigner(InlineProvider):
        async def sign(self, key, scheme, message):
            raise RuntimeError("signer offline")

        def key_share(self, group):
            return super().key_share(group) if key_shares else None

    server, rec, client = pair(config, BrokenSigner())

    async def run_client():
        await client.send_plain(22, client_hello(share=client.share))
        while await client.stream.receive_some():
            pass
        await client.stream.aclose()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(run_client)
        with pytest.raises(CryptoProviderError) as info:
            await server.do_handshake()
    assert isinstance(info.value, TLSLocalError) and info.value.alert == A.internal_error
    assert "signer offline" in str(info.value)
    sent = b"".join(rec.sent)
    if key_shares:
        # derive and signature were asked for together, before any key was
        # installed: the queued ServerHello is dropped, the alert is plaintext
        assert sent == b"\x15\x03\x03\x00\x02\x02" + bytes([A.internal_error])
    else:  # the one-op exchange came first: ServerHello, then the sealed alert
        assert sent[0] == 22 and sent[-(5 + 2 + 1 + 16):][0] == 23


async def test_hello_retry_with_refused_early_data_over_the_stream(test_certs):
    import hashlib
    config = server_config([test_certs["ecdsa-p256"]], groups=["x25519"])
    server, _, client = pair(config)
    ch1 = client_hello(share=bytes([4]) + bytes(64), share_group=0x0017, groups=(0x0017, 0x001D),
                       extra=ext(c.EXT_EARLY_DATA, b""))

    async def run_client():
        await client.send_plain(22, ch1)
        for _ in range(2):  # 0-RTT records the server cannot read: skipped
            await client.stream.send_all(b"\x17\x03\x03\x00\x30" + bytes(48))
        hrr = await client.message()
        assert hrr[6:38] == c.HRR_RANDOM
        cookie = hrr[hrr.index(c.EXT_COOKIE.to_bytes(2, "big")) + 6:]
        client.transcript = hashlib.sha256(
            c.handshake(c.MESSAGE_HASH, hashlib.sha256(ch1).digest()) + hrr)
        ch2 = client_hello(share=client.share, groups=(0x0017, 0x001D),
                           extra=ext(c.EXT_COOKIE, c.vec16(cookie)))
        await client.handshake(ch2)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run_client)
        await server.do_handshake()
    assert server.info.hello_retry and server.named_group == "x25519"
    await client.send_app(b"after retry")
    assert await server.receive_some() == b"after retry"


@pytest.mark.parametrize("key_shares", [True, False], ids=["key-share", "one-op"])
async def test_handshake_timeout_while_the_provider_stalls(test_certs, autojump_clock, key_shares):
    # A provider op cut off by the timeout leaves the stream broken (records in
    # flight are lost), yet the timeout must still close the transport and
    # release the sessions, as a timeout while reading does.
    class StalledSigner(CountingProvider):
        async def sign(self, key, scheme, message):
            await trio.sleep_forever()

        def key_share(self, group):
            return super().key_share(group) if key_shares else None

    provider = StalledSigner()
    config = server_config([test_certs["ecdsa-p256"]])
    server, _, client = pair(config, provider)
    await client.send_plain(22, client_hello(share=client.share))
    with pytest.raises(HandshakeTimeout):
        await server.do_handshake()
    if key_shares:  # the derive went out with the signature: no key was installed yet
        assert provider.counts["key_exchange"] == 1 and provider.sessions == []
        with pytest.raises(EOFError):                 # nothing sent, the transport closed
            await client.record()
        return
    provider.check_sessions_closed_once()             # the handshake keys, without aclose
    with pytest.raises(EOFError):                     # ServerHello, then the transport closed
        while True:
            await client.record()
    with pytest.raises(trio.BrokenResourceError):
        await server.send_all(b"x")
