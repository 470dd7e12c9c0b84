"""TLSStream's record layer in memory: records filled and batched, the
small-record threshold, the ticket's batch, AEAD sessions closed exactly
once, KeyUpdate both ways, record_size_limit, close_notify, bad and stale
records. Split from ``test_stream`` (handshake, alerts, limits, timeouts),
whose in-memory pair helpers it shares."""
from __future__ import annotations

import pytest
import trio
import trio.testing

from tests.tls.helpers import CountingProvider, server_config
from tests.tls.miniclient import client_hello, ext
from tests.tls.memstream import handshake, pair
from vcproxy.tls import AlertDescription as A, TLSError
from vcproxy.tls import _codec as c


async def test_writes_fill_records(test_certs):
    provider = CountingProvider(threshold=0)
    config = server_config([test_certs["ecdsa-p256"]], small_record_threshold_bytes=0)
    server, rec, client = pair(config, provider)
    await handshake(server, client)
    await server.send_all(b"first")     # the session ticket leaves with it
    assert await client.recv_app() == b"first"
    sent_before = len(rec.sent)
    server.write(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n")
    await server.send_all(b"hello")
    new = rec.sent[sent_before:]
    assert len(new) == 1 and new[0][0] == 23
    assert len(new[0]) == 5 + len(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello") + 1 + 16
    got = await client.recv_app()
    assert got.endswith(b"hello")
    # 40000 bytes: three full-as-possible records, sealed in one batch
    batches = provider.counts["seal_many"]
    await server.send_all(b"x" * 40000)
    assert provider.counts["seal_many"] == batches + 1
    sizes = [len(await client.recv_app()) for _ in range(3)]
    assert sizes == [16384, 16384, 40000 - 32768]


async def test_pipeline_depth_bounds_batches(test_certs):
    provider = CountingProvider(threshold=0)
    config = server_config([test_certs["ecdsa-p256"]], pipeline_depth=4,
                           small_record_threshold_bytes=0)
    server, _, client = pair(config, provider)
    await handshake(server, client)
    before = provider.counts["seal_many"]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.send_all, b"y" * (16384 * 9))
        for _ in range(9):
            assert len(await client.recv_app()) == 16384
    assert provider.counts["seal_many"] - before == 3  # 4 + 4 + 1


async def test_small_records_sealed_in_process(test_certs):
    provider = CountingProvider(threshold=100)
    config = server_config([test_certs["ecdsa-p256"]], small_record_threshold_bytes=100)
    server, _, client = pair(config, provider)
    await handshake(server, client)
    # Only the server flight was sealed (one batch): the NewSessionTicket
    # (above the threshold) is no longer sealed in a batch of its own at the
    # end of the handshake; it waits for the first send_all.
    assert provider.counts["seal_many"] == 1 and provider.counts["small_seal"] == 0
    batched = provider.counts["sealed_records"]
    await server.send_all(b"tiny")
    # "tiny" sealed in-process; the queued ticket went through the provider
    assert provider.counts["small_seal"] == 1
    assert provider.counts["seal_many"] == 2 and provider.counts["sealed_records"] == batched + 1
    await server.send_all(b"z" * 1000)
    assert provider.counts["seal_many"] == 3 and provider.counts["sealed_records"] == batched + 2
    assert await client.recv_app() == b"tiny"
    await client.send_app(b"q" * 500)
    assert await server.receive_some() == b"q" * 500


async def test_small_record_threshold_boundary(test_certs):
    # content strictly below the threshold: in-process; at it: the provider
    provider = CountingProvider(threshold=100)
    config = server_config([test_certs["ecdsa-p256"]], small_record_threshold_bytes=100)
    server, _, client = pair(config, provider)
    await handshake(server, client)
    await server.send_all(b"")                        # the queued ticket leaves
    counts = provider.counts
    before = dict(counts)
    await server.send_all(b"a" * 99)
    assert (counts["small_seal"], counts["seal_many"]) == (before["small_seal"] + 1,
                                                           before["seal_many"])
    await server.send_all(b"a" * 100)
    assert (counts["small_seal"], counts["seal_many"]) == (before["small_seal"] + 1,
                                                           before["seal_many"] + 1)
    for size in (99, 100):                            # one record per read
        await client.send_app(b"b" * size)
        assert await server.receive_some() == b"b" * size
    assert (counts["small_open"], counts["open_many"]) == (before["small_open"] + 1,
                                                           before["open_many"] + 1)
    await client.send_app(b"c" * 99)                  # both in one read: the batch path
    await client.send_app(b"d" * 100)
    got = b""
    while len(got) < 199:
        got += await server.receive_some()
    assert got == b"c" * 99 + b"d" * 100
    assert (counts["small_open"], counts["open_many"]) == (before["small_open"] + 2,
                                                           before["open_many"] + 2)
    assert counts["opened_records"] == before["opened_records"] + 2


async def test_threshold_above_the_largest_record_keeps_every_record_in_process(test_certs):
    # 2^14 + 1: full-size records too stay in-process (handshake crypto still offloaded)
    provider = CountingProvider(threshold=16385)
    config = server_config([test_certs["ecdsa-p256"]], small_record_threshold_bytes=16385)
    server, _, client = pair(config, provider)
    await handshake(server, client)
    await server.send_all(b"")                        # the queued ticket leaves
    counts = provider.counts
    batches = counts["seal_many"]
    await server.send_all(b"a" * 40000)               # 16384 + 16384 + 7232
    assert counts["seal_many"] == batches and counts["small_seal"] >= 3
    await client.send_app(b"b" * 16384)
    got = b""
    while len(got) < 16384:
        got += await server.receive_some()
    assert got == b"b" * 16384 and counts["open_many"] == 0
    with pytest.raises(ValueError, match="0..16385"):
        server_config([test_certs["ecdsa-p256"]], small_record_threshold_bytes=16386)


async def test_fatal_alert_sealed_in_process_whatever_the_threshold(test_certs):
    provider = CountingProvider(threshold=0)
    config = server_config([test_certs["ecdsa-p256"]], small_record_threshold_bytes=0)
    server, _, client = pair(config, provider)
    await handshake(server, client)
    batches = provider.counts["seal_many"]
    await client.stream.send_all(b"\x17\x03\x03\x00\x20" + bytes(32))
    await client.stream.send_eof()
    with pytest.raises(TLSError):
        await server.receive_some()
    assert provider.counts["small_seal"] == 1 and provider.counts["seal_many"] == batches
    assert await client.record() == (21, bytes((2, A.bad_record_mac)))


async def test_ticket_sealed_in_the_first_writes_batch(test_certs):
    provider = CountingProvider(threshold=0)
    config = server_config([test_certs["ecdsa-p256"]], small_record_threshold_bytes=0)
    server, rec, client = pair(config, provider)
    await handshake(server, client)
    assert provider.counts["seal_many"] == 1          # the server flight; no ticket yet
    flight = provider.counts["sealed_records"]
    sent = len(rec.sent)
    await server.send_all(b"a" * 20000)
    # ticket + two data records: one provider batch, one transport write
    assert provider.counts["seal_many"] == 2
    assert provider.counts["sealed_records"] == flight + 3
    assert len(rec.sent) == sent + 1
    ctype, data = await client.record()
    assert ctype == 22 and data[0] == c.NEW_SESSION_TICKET
    assert await client.recv_app() + await client.recv_app() == b"a" * 20000
    await server.send_all(b"b")                       # the ticket is not sent twice
    assert await client.record() == (23, b"b")


async def test_ticket_sealed_with_close_notify(test_certs):
    provider = CountingProvider(threshold=0)
    config = server_config([test_certs["ecdsa-p256"]], small_record_threshold_bytes=0)
    server, _, client = pair(config, provider)
    await handshake(server, client)
    await server.aclose()
    assert provider.counts["seal_many"] == 2          # flight, then ticket + close_notify
    ctype, data = await client.record()
    assert ctype == 22 and data[0] == c.NEW_SESSION_TICKET
    assert await client.record() == (21, b"\x01\x00")


async def test_corked_data_leaves_with_close_notify(test_certs):
    config = server_config([test_certs["ecdsa-p256"]])
    server, rec, client = pair(config)
    await handshake(server, client)
    await server.send_all(b"first")
    assert await client.recv_app() == b"first"
    sent = len(rec.sent)
    server.write(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nlast")
    await server.aclose()
    # the corked response and the alert: one transport write, in that order
    assert len(rec.sent) == sent + 1
    assert await client.recv_app() == b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nlast"
    assert await client.record() == (21, b"\x01\x00")


class _SuspendingClose(CountingProvider):
    """AEAD sessions whose aclose() suspends (``close_s``; None: never returns)."""

    def __init__(self, close_s):
        super().__init__()
        self.close_s, self.finished = close_s, 0

    def aead(self, suite_alg, key):
        session = super().aead(suite_alg, key)
        inner_close = session.aclose

        async def aclose():
            await inner_close()
            if self.close_s is None:
                await trio.sleep_forever()
            await trio.sleep(self.close_s)
            self.finished += 1

        session.aclose = aclose
        return session


async def test_session_close_that_suspends_is_awaited_to_its_end(test_certs):
    provider = _SuspendingClose(0.01)
    server, _, client = pair(server_config([test_certs["ecdsa-p256"]]), provider)
    await handshake(server, client)
    assert provider.finished == 2                     # the superseded handshake keys
    with trio.CancelScope() as scope:
        scope.cancel()                                # shielded: a cancelled close still releases
        await server.aclose()
    provider.check_sessions_closed_once()
    assert provider.finished == 4


async def test_session_close_that_hangs_is_bounded(test_certs, autojump_clock):
    provider = _SuspendingClose(None)
    server, _, client = pair(server_config([test_certs["ecdsa-p256"]]), provider)
    start = trio.current_time()
    await handshake(server, client)                   # each superseded key: LINGER_S, then on
    await server.aclose()
    provider.check_sessions_closed_once()
    assert provider.finished == 0 and trio.current_time() - start < 10


async def test_sessions_closed_once_after_close(test_certs):
    provider = CountingProvider()
    config = server_config([test_certs["ecdsa-p256"]])
    server, _, client = pair(config, provider)
    await handshake(server, client)
    await client.send_app(b"x" * 200)
    assert await server.receive_some() == b"x" * 200
    await server.send_all(b"y" * 200)
    await server.aclose()
    await server.aclose()                             # a second close releases nothing again
    # handshake read/write + application read/write
    assert len(provider.sessions) == 4
    provider.check_sessions_closed_once()


async def test_sessions_closed_once_after_fatal_alert(test_certs):
    provider = CountingProvider()
    config = server_config([test_certs["ecdsa-p256"]])
    server, _, client = pair(config, provider)
    await handshake(server, client)
    await client.stream.send_all(b"\x17\x03\x03\x00\x20" + bytes(32))
    await client.stream.send_eof()
    with pytest.raises(TLSError):
        await server.receive_some()
    provider.check_sessions_closed_once()             # released by the failure itself
    await server.aclose()
    provider.check_sessions_closed_once()             # and not again by aclose


async def test_sessions_closed_once_after_key_updates(test_certs):
    provider = CountingProvider()
    config = server_config([test_certs["ecdsa-p256"]], key_update_after_records=2)
    server, _, client = pair(config, provider)
    await handshake(server, client)
    for i in range(5):                                # server-initiated KeyUpdates
        await server.send_all(b"msg%d" % i)
        assert await client.recv_app() == b"msg%d" % i
    await client.key_update(True)                     # a client KeyUpdate (requested)
    await client.send_app(b"after")
    assert await server.receive_some() == b"after"
    await server.send_all(b"reply")
    assert await client.recv_app() == b"reply"
    superseded = [s for s in provider.sessions[:-2]]
    assert all(s.closes == 1 for s in superseded)     # closed when replaced, not at the end
    assert client.key_updates_received == 3
    await server.aclose()
    # 2 handshake + 2 application + 3 server KeyUpdates + 1 client KeyUpdate
    assert len(provider.sessions) == 8
    provider.check_sessions_closed_once()


async def test_sessions_closed_once_after_broken_transport(test_certs):
    provider = CountingProvider()
    config = server_config([test_certs["ecdsa-p256"]])
    server, _, client = pair(config, provider)
    await handshake(server, client)
    await client.stream.aclose()
    with pytest.raises(trio.BrokenResourceError):
        for _ in range(10):                           # memory streams: broken on a later write
            await server.send_all(b"z" * 100)
    await server.aclose()
    provider.check_sessions_closed_once()


async def test_sessions_closed_once_when_closed_mid_handshake(test_certs):
    provider = CountingProvider()
    config = server_config([test_certs["ecdsa-p256"]])
    server, _, client = pair(config, provider)
    failures = []

    async def run_server():
        try:
            await server.do_handshake()
        except trio.ClosedResourceError as exc:  # its transport was closed under it
            failures.append(exc)

    await client.send_plain(22, client_hello(share=client.share))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(run_server)
        await trio.testing.wait_all_tasks_blocked()  # the server waits for the Finished
        await server.aclose()
    assert failures
    assert provider.sessions
    provider.check_sessions_closed_once()


async def test_server_initiated_key_update(test_certs):
    config = server_config([test_certs["ecdsa-p256"]], key_update_after_records=2)
    server, rec, client = pair(config)
    await handshake(server, client)
    for i in range(7):
        await server.send_all(b"msg%d" % i)
        assert await client.recv_app() == b"msg%d" % i
    # records under one key: ticket, msg0 | msg1, msg2 | msg3, msg4 | msg5, msg6
    assert client.key_updates_received == 3
    await client.send_app(b"still")
    assert await server.receive_some() == b"still"


async def test_client_key_update_requested_and_batch_fallback(config):
    server, _, client = pair(config)
    await handshake(server, client)
    # app record, KeyUpdate(requested), app record: all buffered before the
    # server reads, so its batch open fails at the key change and falls back.
    await client.send_app(b"one")
    await client.key_update(True)
    await client.send_app(b"two")
    got = b""
    while len(got) < 6:
        got += await server.receive_some()
    assert got == b"onetwo"
    await server.send_all(b"reply")
    assert await client.recv_app() == b"reply"  # read under the server's updated key
    assert client.key_updates_received == 1     # the owed KeyUpdate went first


async def test_bad_record_mac_after_handshake(config):
    server, _, client = pair(config)
    await handshake(server, client)
    await client.stream.send_all(b"\x17\x03\x03\x00\x20" + bytes(32))
    await client.stream.send_eof()
    with pytest.raises(TLSError) as info:
        await server.receive_some()
    assert info.value.alert == A.bad_record_mac
    # The ticket was still queued for our first write: a failed connection
    # drops it (RFC 8446 §6.2: its PSK SHOULD be discarded), so the alert
    # is the first record after the handshake.
    assert await client.record() == (21, bytes((2, A.bad_record_mac)))


async def test_close_notify_both_ways(config):
    server, _, client = pair(config)
    await handshake(server, client)
    await client.send_app(b"last")
    await client.send_protected(21, b"\x01\x00")
    assert await server.receive_some() == b"last"
    assert await server.receive_some() == b""
    await server.aclose()
    records = [await client.record(), await client.record()]
    assert records[0][0] == 22 and records[0][1][0] == c.NEW_SESSION_TICKET
    assert records[1] == (21, b"\x01\x00")
    with pytest.raises(trio.ClosedResourceError):
        await server.send_all(b"x")


async def test_record_size_limit_honoured(config):
    server, _, client = pair(config)
    ch = client_hello(share=client.share, extra=ext(c.EXT_RECORD_SIZE_LIMIT, (256).to_bytes(2, "big")))
    info = await handshake(server, client, ch=ch)
    assert ext(c.EXT_RECORD_SIZE_LIMIT, (16385).to_bytes(2, "big")) in info["encrypted_extensions"]
    await server.send_all(b"r" * 1000)
    sizes = []
    while sum(sizes) < 1000:
        sizes.append(len(await client.recv_app()))
    assert max(sizes) == 255


async def test_empty_application_records_are_allowed(config):
    server, _, client = pair(config)
    await handshake(server, client)
    await client.send_app(b"")
    await client.send_app(b"x")
    assert await server.receive_some() == b"x"


async def test_records_under_old_key_after_key_update_are_refused(config):
    server, _, client = pair(config)
    await handshake(server, client)
    await client.send_app(b"one")
    await client.send_protected(22, c.key_update(False))  # ... but keeps the old key
    await client.send_app(b"two")
    await client.stream.send_eof()
    with pytest.raises(TLSError) as info:
        while True:
            await server.receive_some()
    assert info.value.alert in (A.unexpected_message, A.bad_record_mac)


class _BoundedTransport:
    """The memory pair's transport with a ``send_all_within`` (as the proxy's
    socket stream has): records the bounds it is given; ``stall`` makes it a
    peer that reads nothing (each send waits out its bound)."""

    def __init__(self, rec):
        self.rec, self.bounds, self.stall = rec, [], False

    def __getattr__(self, name):
        return getattr(self.rec, name)

    async def send_all_within(self, data, timeout_s):
        self.bounds.append(timeout_s)
        if self.stall:
            await trio.sleep(timeout_s)
            raise trio.TooSlowError
        await self.rec.send_all(data)


async def test_send_all_within_hands_its_bound_to_the_transport(test_certs, autojump_clock):
    """A small write on an open stream: the transport's own bounded send gets
    the time left (no deadline scope of the stream's own); a transport that
    takes nothing makes it raise TooSlowError in time, and the stream is broken."""
    server, rec, client = pair(server_config([test_certs["ecdsa-p256"]]))
    await handshake(server, client)
    await server.send_all(b"first")  # (the session ticket leaves with it)
    assert await client.recv_app() == b"first"
    transport = server.transport_stream = _BoundedTransport(rec)
    await server.send_all_within(b"response", 5.0)
    assert await client.recv_app() == b"response"
    assert len(transport.bounds) == 1 and 4.9 < transport.bounds[0] <= 5.0, transport.bounds
    transport.stall = True
    started = trio.current_time()
    with pytest.raises(trio.TooSlowError):
        await server.send_all_within(b"never read", 2.0)
    assert trio.current_time() - started == pytest.approx(2.0)
    with pytest.raises(trio.BrokenResourceError):
        await server.send_all(b"after the timeout")


async def test_send_all_within_without_a_bounded_transport_is_one_scope(test_certs, autojump_clock):
    """A transport without ``send_all_within``: the whole send is bounded."""
    server, rec, client = pair(server_config([test_certs["ecdsa-p256"]]))
    await handshake(server, client)
    await server.send_all_within(b"first", 5.0)
    assert await client.recv_app() == b"first"

    async def stalled_send(data):
        await trio.sleep_forever()

    rec.send_all = stalled_send
    started = trio.current_time()
    with pytest.raises(trio.TooSlowError):
        await server.send_all_within(b"never read", 2.0)
    assert trio.current_time() - started == pytest.approx(2.0)
