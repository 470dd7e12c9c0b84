"""The engine-backend on its own: hostile slots, idle behaviour, metrics, and
the TLS pipeline (a 256 KiB send_all = one opdone, one suspension)."""
from __future__ import annotations

import os
import re
import urllib.request

import trio
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

import engine_daemons
import tls_support
from vcproxy.tls import TLSStream
from vcproxy.vcrypto_provider import VcryptoProvider
from vcrypto.engine import SessionMeta, SlotStatus
from vcrypto.engine.frontend import Frontend
from vcrypto.ops import Alg, Op


async def test_garbage_slot_gets_bad_request_and_backend_keeps_serving(local_backend):
    fe = Frontend(local_backend.socket_path)
    await fe.start()
    key = os.urandom(16)
    h = await fe.open_session(SessionMeta(Op.AEAD_SEAL, Alg.AES_128_GCM, key))
    await fe.run(h, [(b"warm", b"n" * 12, b"")])
    att = fe._att
    region = att.region
    # Act as a buggy/hostile frontend: a slot whose src points outside its
    # chunk, and one naming a session that does not exist.
    slot_a, slot_b = att.free_slots.pop(), att.free_slots.pop()
    j = att.free_opdones.pop()
    region.opdones.reset(j, 2)
    region.write_request(slot_a, Op.AEAD_SEAL, Alg.AES_128_GCM, j, h.sid, b"x", 17, b"n" * 12)
    region.u32[region.slot_offset(slot_a) // 4 + 4] = 0  # src_offset = 0: the header
    region.write_request(slot_b, Op.AEAD_SEAL, Alg.AES_128_GCM, j, 999999, b"x", 17, b"n" * 12)
    ev = trio.Event()
    att.waiting[j] = ev
    region.ring.push_many([slot_a, slot_b])
    att.has_work.set()
    os.eventfd_write(att.doorbell, 1)
    with trio.fail_after(10):
        await ev.wait()
    assert region.result(slot_a)[0] is SlotStatus.BAD_REQUEST
    assert region.result(slot_b)[0] is SlotStatus.INVALID
    # still serving, correctly
    [(st, out)] = await fe.run(h, [(b"after", b"m" * 12, b"")])
    assert (st, out) == (SlotStatus.OK, AESGCM(key).encrypt(b"m" * 12, b"after", None))
    stats = await fe.backend_stats()
    assert stats["bad_requests"] == 2
    await fe.aclose()


async def test_a_frontend_cannot_use_another_frontends_session(local_backend):
    """Session ids are small integers: a request naming a session this
    frontend never opened or acquired (another worker's traffic key) is
    INVALID and never runs; nor does a forged cache hit acquire one."""
    owner, thief = Frontend(local_backend.socket_path), Frontend(local_backend.socket_path)
    assert await owner.start() and await thief.start()
    key = os.urandom(16)
    h = await owner.open_session(SessionMeta(Op.AEAD_SEAL, Alg.AES_128_GCM, key))
    [(st, _)] = await owner.run(h, [(b"warm", b"n" * 12, b"")])
    assert st is SlotStatus.OK
    att = thief._att
    region = att.region
    slot, j = att.free_slots.pop(), att.free_opdones.pop()
    region.opdones.reset(j, 1)
    region.write_request(slot, Op.AEAD_SEAL, Alg.AES_128_GCM, j, h.sid, b"secret", 22, b"n" * 12)
    ev = trio.Event()
    att.waiting[j] = ev
    region.ring.push_many([slot])
    att.has_work.set()
    os.eventfd_write(att.doorbell, 1)
    with trio.fail_after(10):
        await ev.wait()
    assert region.result(slot)[0] is SlotStatus.INVALID
    # an acquire naming the sid with other metadata (the MD5 is readable by all) is refused
    reply = await thief.control_request(att, {"t": "acquire", "sid": h.sid,
                                               "meta": SessionMeta(Op.AEAD_SEAL, Alg.AES_128_GCM,
                                                                   bytes(16)).canonical().hex()})
    assert reply["ok"] is False
    await owner.aclose()
    await thief.aclose()


async def test_idle_backend_sleeps_instead_of_spinning(local_backend):
    fe = Frontend(local_backend.socket_path)
    await fe.start()
    h = await fe.open_session(SessionMeta(Op.AEAD_SEAL, Alg.AES_128_GCM, os.urandom(16)))
    await fe.run(h, [(b"x" * 100, b"n" * 12, b"")] * 20)
    before = await fe.backend_stats()
    cpu0 = _cpu_s(local_backend.pid)
    await trio.sleep(1.5)
    after = await fe.backend_stats()
    cpu1 = _cpu_s(local_backend.pid)
    # A handful of loop passes (the stats requests themselves), not a dead loop.
    assert after["poll_passes"] - before["poll_passes"] < 20
    assert after["sleeps"] - before["sleeps"] < 20
    assert cpu1 - cpu0 < 0.1, "backend burned CPU while idle"
    await fe.aclose()


def _cpu_s(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def test_metrics_endpoint(tmp_path):
    d = engine_daemons.backend(tmp_path, extra=["--metrics", "127.0.0.1:0"]).start()
    try:
        fe = Frontend(d.socket_path)
        await fe.start()
        h = await fe.open_session(SessionMeta(Op.AEAD_SEAL, Alg.AES_128_GCM, os.urandom(16)))
        await fe.run(h, [(b"x", b"n" * 12, b"")] * 5)
        with trio.fail_after(10):
            while not (m := re.search(rb'"event":"metrics_listening".*"port":(\d+)', d.log_path.read_bytes())):
                await trio.sleep(0.05)
        port = int(m.group(1))
        body = await trio.to_thread.run_sync(
            lambda: urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode())
        for name in ("vcrypto_engine_requests_total", "vcrypto_engine_batch_fill_bucket",
                     "vcrypto_engine_inflight", "vcrypto_engine_queue_seconds_total",
                     "vcrypto_engine_exec_seconds_total", "vcrypto_engine_cache_hits_total",
                     "vcrypto_engine_device_errors_total", "vcrypto_engine_sleeps_total",
                     "vcrypto_engine_calls_total", "vcrypto_engine_cache_misses_total",
                     "vcrypto_engine_device_up", "vcrypto_engine_host_kicks_total",
                     "vcrypto_engine_host_stalls_total"):
            assert name in body, name
        # a ratio is the query's job (hits and misses are exported), not the endpoint's
        assert "cache_hit_ratio" not in body
        assert re.search(r"vcrypto_engine_requests_total 5\.0", body)
        await fe.aclose()
    finally:
        d.stop()


async def test_256k_send_all_is_one_opdone_one_suspension(host_and_backend):
    _h, backend = host_and_backend
    provider = VcryptoProvider(backend.socket_path)
    fe = provider.frontend
    cert, key = tls_support.self_signed()
    cfg = tls_support.config(cert, key)
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    deltas = {}

    async def serve_one(stream):
        tls = TLSStream(stream, cfg, provider)
        await tls.do_handshake()
        await tls.receive_some()
        await tls.send_all(b"w" * 1000)  # warm: the write session exists
        before = (fe.stats.opdones, fe.stats.opdone_waits, fe.stats.submitted)
        await tls.send_all(b"x" * 262144)
        after = (fe.stats.opdones, fe.stats.opdone_waits, fe.stats.submitted)
        deltas.update(opdones=after[0] - before[0], waits=after[1] - before[1],
                      records=after[2] - before[2])
        await tls.aclose()

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.serve_listeners, serve_one, listeners)
            got = await trio.to_thread.run_sync(
                tls_support.client_exchange, port, cert, [b"BIG 263144"])
            nursery.cancel_scope.cancel()
    assert got == [b"w" * 1000 + b"x" * 262144]
    # 256 KiB = 16 full records: one seal_many, one opdone, one suspension.
    assert deltas == {"opdones": 1, "waits": 1, "records": 16}, deltas
    await provider.aclose()


async def test_poll_mode_under_load_then_sleeps_at_idle(tmp_path):
    """With a poll budget the backend polls while arrivals are dense (frontends
    then need almost no doorbells) and still parks once work stops."""
    d = engine_daemons.backend(tmp_path, extra=["--poll-budget-us", "3000"]).start()
    try:
        fe = Frontend(d.socket_path)
        await fe.start()
        h = await fe.open_session(SessionMeta(Op.AEAD_SEAL, Alg.AES_128_GCM, os.urandom(16)))
        item = (b"x" * 256, b"n" * 12, b"")

        async def worker():
            for _ in range(40):
                await fe.run(h, [item] * 16)

        with trio.fail_after(60):
            async with trio.open_nursery() as n:
                for _ in range(8):
                    n.start_soon(worker)
        busy = await fe.backend_stats()
        assert busy["poll_passes"] > 0
        assert fe.stats.doorbells < fe.stats.opdones  # not one doorbell per batch
        await trio.sleep(0.5)
        idle0 = await fe.backend_stats()
        await trio.sleep(1.0)
        idle1 = await fe.backend_stats()
        assert idle1["poll_passes"] - idle0["poll_passes"] < 50  # no dead loop at idle
        await fe.aclose()
    finally:
        d.stop()


async def test_garbage_control_messages_close_only_that_connection(local_backend):
    import socket as pysocket

    fe = Frontend(local_backend.socket_path)
    await fe.start()
    h = await fe.open_session(SessionMeta(Op.AEAD_SEAL, Alg.AES_128_GCM, b"k" * 16))
    for junk in (b"\xff\xff\xff\x7f", (5).to_bytes(4, "little") + b"notjs",
                 (9).to_bytes(4, "little") + b'{"t":"x"}',
                 (12).to_bytes(4, "little") + b'{"t":"open"}'):
        s = pysocket.socket(pysocket.AF_UNIX, pysocket.SOCK_STREAM)
        s.settimeout(5)
        s.connect(local_backend.socket_path)
        s.sendall(junk)
        assert s.recv(100) == b""  # closed by the backend
        s.close()
    [(st, _)] = await fe.run(h, [(b"still", b"n" * 12, b"")])
    assert st is SlotStatus.OK and fe.stats.fallback_requests == 0
    await fe.aclose()


async def _spread_stream(socket_path: str, requests: int = 240, gap_s: float = 0.0) -> dict:
    """Single requests from tasks started one per trio scheduling batch (each
    submits in its own batch, so each rings its own doorbell; none waits for
    another's result): the backend's counts for them."""
    fe = Frontend(socket_path)
    assert await fe.start()
    key = os.urandom(16)
    h = await fe.open_session(SessionMeta(Op.AEAD_SEAL, Alg.AES_128_GCM, key))
    bad = []
    before = await fe.backend_stats()

    async def one(k):
        iv = k.to_bytes(12, "big")
        [(st, out)] = await fe.run(h, [(b"p" * 64, iv, b"")])
        if st is not SlotStatus.OK or out != AESGCM(key).encrypt(iv, b"p" * 64, None):
            bad.append(k)

    with trio.fail_after(60):
        async with trio.open_nursery() as n:
            for k in range(requests):
                n.start_soon(one, k)
                await trio.sleep(gap_s)
    st = await fe.backend_stats()
    await fe.aclose()
    assert bad == []
    return {"requests": st["requests"] - before["requests"], "batches": st["batches"] - before["batches"]}


async def test_adaptive_batch_hold_batches_a_spread_stream(tmp_path):
    """With a batch hold ("full or deadline", held only while the arrival
    rate says the batch fills in time) a dense stream of single requests, each
    with a doorbell of its own, leaves in batches of many; the same stream
    without the hold leaves in batches of one to a few (each doorbell wakes
    the backend, which sends what it found). Results stay correct."""
    (tmp_path / "held").mkdir()
    (tmp_path / "plain").mkdir()
    held = engine_daemons.backend(tmp_path / "held", extra=["--batch-deadline-us", "20000"]).start()
    plain = engine_daemons.backend(tmp_path / "plain").start()
    try:
        with_hold = await _spread_stream(held.socket_path)
        without = await _spread_stream(plain.socket_path)
    finally:
        held.stop()
        plain.stop()
    assert with_hold["requests"] == without["requests"] == 240
    assert with_hold["batches"] * 4 <= with_hold["requests"], (with_hold, without)   # >= 4 per batch
    assert with_hold["batches"] * 10 <= without["batches"] * 7, (with_hold, without)


def test_drain_pass_takes_every_ring_within_its_quota(tmp_path):
    """Fairness, sans-IO: one drain pass takes at most ``ring_quota`` requests
    from each ring, round-robin from a rotating start, so a request on a quiet
    frontend's ring is taken before a flooding frontend's ring is emptied."""
    import socket

    from vcrypto.engine.backend import Backend, BackendConfig
    from vcrypto.engine.backend._control_plane import FrontendConn
    from vcrypto.engine.backend._device import LocalDevice
    from vcrypto.engine.contract import FrontendRegion
    from vcrypto.shm.region import Region

    cfg = BackendConfig(socket_path=str(tmp_path / "b.sock"), ring_quota=32)
    backend = Backend(cfg, LocalDevice)
    backend._connect_device()
    conns = []
    try:
        meta = SessionMeta(Op.AEAD_SEAL, Alg.AES_128_GCM, b"k" * 16)
        for fid in (1, 2):
            a, b = socket.socketpair()
            conns += [a, b]
            fe = FrontendConn(fid, a)
            fe.shm = Region.create(f"fair-{fid}", cfg.geometry.region_bytes)
            fe.region = FrontendRegion(fe.shm.buf, cfg.geometry, create=True)
            backend.control.order.append(fe)
            backend.control.frontends[fid] = fe
        heavy, light = backend.control.order
        sid = backend.open_session(heavy.refs, meta)["sid"]
        backend.open_session(light.refs, meta)
        for fe, n in ((heavy, 200), (light, 1)):
            for slot in range(n):
                fe.region.opdones.reset(slot, 1)
                fe.region.write_request(slot, Op.AEAD_SEAL, Alg.AES_128_GCM, slot, sid, b"x" * 64,
                                        80, b"n" * 12)
            fe.region.ring.push_many(list(range(n)))
        for _ in range(2):   # whichever ring the rotating start picks first
            backend._batch.clear()
            taken = backend._drain_rings()
            by_ring = [dr.region_id for dr in backend._batch]
            assert taken == len(by_ring) <= 2 * cfg.ring_quota
            assert by_ring.count(heavy.fid) == cfg.ring_quota
            if light.region.ring.empty() and light.fid in by_ring:
                break
        assert light.region.ring.empty() and light.fid in by_ring
    finally:
        backend._batch.clear()
        backend.close()
        for s in conns:
            s.close()


async def test_release_never_overtakes_a_request_already_on_the_ring(host_and_backend):
    """A cancelled task's last record is on the ring when its connection closes
    and releases the session; the release travels on the control socket. The
    backend must take the ring first: the request runs at the host with its own
    reference (OK, the right bytes), never finds its session gone (INVALID)."""
    _host, backend = host_and_backend
    fe = Frontend(backend.socket_path, linger_s=0)
    await fe.start()
    # a signing session (traffic keys have none), Ed25519: the answer is checkable
    key = ed25519.Ed25519PrivateKey.generate()
    der = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    h = await fe.open_session(SessionMeta(Op.SIGN, Alg.ED25519, der))
    await fe.run(h, [(b"warm", b"", b"")])  # the backend holds the session now
    att = fe._att
    region = att.region
    with trio.fail_after(10):  # idle: only a doorbell or a control message wakes it
        while not att.shared.backend_sleeping:
            await trio.sleep(0.01)
    before = (await fe.backend_stats())["device_stats"]["device"]["requests"]
    slot, j = att.free_slots.pop(), att.free_opdones.pop()
    region.opdones.reset(j, 1)
    region.write_request(slot, Op.SIGN, Alg.ED25519, j, h.sid, b"last record", 64)
    ev = trio.Event()
    att.waiting[j] = ev
    region.ring.push_many([slot])  # no doorbell: the backend is not told
    att.has_work.set()
    await fe.close_session(h, linger=False)  # the release message wakes it
    with trio.fail_after(10):
        await ev.wait()
    assert region.result(slot) == (SlotStatus.OK, key.sign(b"last record"))
    stats = await fe.backend_stats()
    assert stats["device_stats"]["device"]["requests"] == before + 1
    assert stats["bad_requests"] == 0
    await fe.aclose()


def test_queue_size_below_a_request_chain_is_refused_at_start(tmp_path):
    """A data queue shorter than an AEAD request's chain would make the host
    refuse every such request: the backend refuses the flag instead."""
    import subprocess
    import sys

    for bad in ("4", "100"):
        r = subprocess.run([sys.executable, "-m", "vcrypto.engine.backend", "--socket",
                            str(tmp_path / "b.sock"), "--no-host", "--queue-size", bad],
                           capture_output=True, text=True, timeout=60, cwd=engine_daemons.REPO)
        assert r.returncode == 2 and "--queue-size" in r.stderr and "power of two" in r.stderr, r
    assert not (tmp_path / "b.sock").exists()
