"""Hostile drivers: every malformed request gets an error status (or its
device's connection is closed), and the host keeps serving other devices."""
from __future__ import annotations

import os
import socket
import struct

import pytest
import trio

from host_refcheck import ecdh_peer
from vcrypto.driver import Driver, DriverError, Item, PayloadPool, SessionParams
from vcrypto.ops import Alg, Op
from vcrypto.shm.region import Region
from vcrypto.shm.virtqueue import VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE
from vcrypto.wire import virtio_crypto as vc
from vcrypto.wire import vhost_user as vu

W = VIRTQ_DESC_F_WRITE


async def _healthy(drv: Driver, pool: PayloadPool, sid: int) -> None:
    """The bystander device still gets correct service."""
    _, pub = ecdh_peer(Alg.X25519)
    with trio.fail_after(30):
        [res] = await pool.run([Item(sid, Op.ECDH, Alg.X25519, pub)])
    assert res.ok and len(res.data) == 64


async def _one(q, chain, region, status_off) -> tuple[int, int]:
    """Publish one raw chain; return (the status byte the host wrote, dst bytes written)."""
    region.write(status_off, b"\xff")
    assert q.enqueue_chain(chain, token="raw")
    with trio.fail_after(10):
        while True:
            comps = q.dequeue_burst()
            if comps:
                [c] = comps
                return region.read(status_off, 1)[0], c.dst_len
            await q.wait_used()


@pytest.fixture
async def devices(start_host):
    host = start_host()
    # a legacy driver (no stateless mode): its hand-made headers carry flag 0
    victim = await Driver.attach(host.socket_path, indirect=False, stateless=False)
    bystander = await Driver.attach(host.socket_path)
    vpool = await PayloadPool.create(bystander)
    vsid = await bystander.create_session(SessionParams(Op.ECDH, Alg.X25519))
    yield host, victim, bystander, vpool, vsid
    await victim.aclose()
    await bystander.aclose()
    assert host.alive(), host.log()


async def test_hostile_descriptors_get_error_status(devices):
    host, drv, by, bypool, bysid = devices
    region = Region.create("hostile", 1 << 16)
    h = await drv.register_region(region)
    ecdh_sid = await drv.create_session(SessionParams(Op.ECDH, Alg.X25519))
    aead_sid = await drv.create_session(SessionParams(Op.AEAD_SEAL, Alg.AES_128_GCM, key=bytes(16)))
    foreign_sid = await by.create_session(SessionParams(Op.ECDH, Alg.X25519))
    _, pub = ecdh_peer(Alg.X25519)
    region.write(4096, pub)
    HDR, SRC, DST, ST = h.gpa, h.gpa + 4096, h.gpa + 8192, h.gpa + 12288

    def header(opcode, sid, src_len=32, dst_len=64, **kw):
        region.write(0, vc.encode_data_request(vc.DataRequest(opcode, 0, sid, src_len=src_len,
                                                              dst_len=dst_len, **kw)))

    def good_chain(src=(SRC, 32), dst=(DST, 64)):
        return [(HDR, 72, 0), (src[0], src[1], 0), (dst[0], dst[1], W), (ST, 1, W)]

    q = drv.queues[0]
    # sanity: the same chain with good values succeeds
    header(vc.KX_DERIVE, ecdh_sid)
    assert await _one(q, good_chain(), region, 12288) == (vc.VIRTIO_CRYPTO_OK, 64)

    cases = {
        "src outside every region": (lambda: header(vc.KX_DERIVE, ecdh_sid),
                                     good_chain(src=(0x1234, 32)), vc.VIRTIO_CRYPTO_ERR),
        "dst straddles the region end": (lambda: header(vc.KX_DERIVE, ecdh_sid),
                                         good_chain(dst=(h.gpa + (1 << 16) - 10, 64)),
                                         vc.VIRTIO_CRYPTO_ERR),
        "address + length overflows 2^64": (lambda: header(vc.KX_DERIVE, ecdh_sid),
                                            good_chain(src=((1 << 64) - 8, 32)),
                                            vc.VIRTIO_CRYPTO_ERR),
        "descriptor length 2^32-1": (lambda: header(vc.KX_DERIVE, ecdh_sid),
                                     good_chain(src=(SRC, 0xFFFFFFFF)), vc.VIRTIO_CRYPTO_ERR),
        "header src_len beyond the buffers": (lambda: header(vc.KX_DERIVE, ecdh_sid,
                                                             src_len=0xFFFFFFFF),
                                              good_chain(), vc.VIRTIO_CRYPTO_ERR),
        "header dst_len beyond the buffers": (lambda: header(vc.KX_DERIVE, ecdh_sid,
                                                             dst_len=1 << 20),
                                              good_chain(), vc.VIRTIO_CRYPTO_ERR),
        "unknown session id": (lambda: header(vc.KX_DERIVE, 987654321), good_chain(),
                               vc.VIRTIO_CRYPTO_INVSESS),
        "another device's session": (lambda: header(vc.KX_DERIVE, foreign_sid), good_chain(),
                                     vc.VIRTIO_CRYPTO_INVSESS),
        "op vs session mismatch": (lambda: header(vc.AEAD_ENCRYPT, ecdh_sid, iv_len=12,
                                                  tag_len=16),
                                   good_chain(), vc.VIRTIO_CRYPTO_ERR),
        "sign opcode on an AEAD session": (lambda: header(vc.AKCIPHER_SIGN, aead_sid),
                                           good_chain(), vc.VIRTIO_CRYPTO_ERR),
        "unknown data opcode": (lambda: header(0x9999, ecdh_sid), good_chain(),
                                vc.VIRTIO_CRYPTO_NOTSUPP),
        "header shorter than 72 bytes": (lambda: header(vc.KX_DERIVE, ecdh_sid),
                                         [(HDR, 40, 0), (ST, 1, W)], vc.VIRTIO_CRYPTO_ERR),
    }
    for name, (prepare, chain, status) in cases.items():
        prepare()
        got, _ = await _one(q, chain, region, 12288)
        assert got == status, f"{name}: got {got}, want {status}"
        await _healthy(by, bypool, bysid)
    # and the victim device itself still works after all of that
    header(vc.KX_DERIVE, ecdh_sid)
    assert await _one(q, good_chain(), region, 12288) == (vc.VIRTIO_CRYPTO_OK, 64)


async def test_broken_chains_complete_with_len_0(devices):
    """A chain whose structure is broken has no status byte to write: the
    used element carries len 0 (the driver reads it as ERR)."""
    host, drv, by, bypool, bysid = devices
    q = drv.queues[0]
    vq = q.vq
    status_gpa = q._slots_gpa + 72
    broken = {
        "self loop": [(0, 0, 0, VIRTQ_DESC_F_NEXT, 0)],
        "next out of range": [(0, 0, 0, VIRTQ_DESC_F_NEXT, 4000)],
        "readable after writable": [(0, status_gpa, 1, W | VIRTQ_DESC_F_NEXT, 1),
                                    (1, status_gpa, 1, 0, 0)],
        "no writable status": [(0, status_gpa, 1, 0, 0)],
    }
    for name, descs in broken.items():
        slot = q._free.pop()
        head = slot * 6
        for idx, addr, length, flags, nxt in descs:
            vq.desc.write(head + idx, addr, length, flags,
                          head + nxt if nxt < 6 and flags & VIRTQ_DESC_F_NEXT else nxt)
        q._tokens[slot] = name
        vq.driver_add(head)
        vq.driver_publish()
        os.eventfd_write(q.kick_fd, 1)
        with trio.fail_after(10):
            while not (comps := q.dequeue_burst()):
                await q.wait_used()
        assert [(c.token, c.status, c.dst_len) for c in comps] == [(name, vc.VIRTIO_CRYPTO_ERR, 0)]
        await _healthy(by, bypool, bysid)


async def test_corrupt_avail_index_closes_only_that_device(devices):
    host, drv, by, bypool, bysid = devices
    vq = drv.queues[0].vq
    vq._avail[1] = (vq.avail_idx + 5000) & 0xFFFF      # avail.idx far ahead of the ring
    os.eventfd_write(drv.queues[0].kick_fd, 1)
    with trio.fail_after(10):
        while True:
            try:
                await drv.capabilities()
            except DriverError:
                break
            await trio.sleep(0.05)
    await _healthy(by, bypool, bysid)


@pytest.mark.parametrize("garbage", [
    vu.encode(999, b""),                                    # unknown request
    struct.pack("<III", vu.Request.GET_FEATURES, 0x2, 0),   # wrong version bits
    struct.pack("<III", vu.Request.SET_FEATURES, 0x1, 1 << 20),  # oversized payload
    vu.encode(vu.Request.SET_FEATURES, b"\x01\x02"),         # short payload
    vu.encode(vu.Request.SET_VRING_KICK, vu.u64(0)),         # kick without an fd
    vu.encode(vu.Request.SET_MEM_TABLE, vu.mem_table([vu.MemRegion(0, 4096, 0)])),  # no fd
    vu.encode(vu.Request.SET_VRING_NUM, vu.vring_state(0, 1000)),  # not a power of two
])
async def test_garbage_control_message_closes_that_connection(devices, garbage):
    host, drv, by, bypool, bysid = devices
    raw = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with raw:
        await raw.connect(host.socket_path)
        await raw.send(garbage)
        with trio.fail_after(10):
            assert await raw.recv(100) == b""     # the host closed this device
    await _healthy(by, bypool, bysid)
    assert (await drv.capabilities())["v"] == 1   # another device is unaffected


async def test_driver_vanishing_mid_burst(devices):
    """A driver that disconnects with requests in flight (slow RSA signs on
    threads) takes only its own device down."""
    from host_refcheck import der_of
    host, drv, by, bypool, bysid = devices
    sid = await drv.create_session(SessionParams(Op.SIGN, Alg.RSA_PSS_RSAE_SHA256,
                                                 key=der_of(Alg.RSA_PSS_RSAE_SHA256)))
    pool = await PayloadPool.create(drv, slots=16)
    with trio.move_on_after(0.05):
        await pool.run([Item(sid, Op.SIGN, Alg.RSA_PSS_RSAE_SHA256, b"m" * 32)] * 64)
    await drv.aclose()
    for _ in range(3):
        await _healthy(by, bypool, bysid)
    await trio.sleep(0.5)
    assert host.alive(), host.log()
    assert "Traceback" not in host.log(), host.log()


async def test_unregistered_region_is_no_longer_addressable(devices):
    host, drv, by, bypool, bysid = devices
    pool = await PayloadPool.create(drv, slots=4)
    sid = await drv.create_session(SessionParams(Op.ECDH, Alg.X25519))
    _, pub = ecdh_peer(Alg.X25519)
    with trio.fail_after(30):
        [ok] = await pool.run([Item(sid, Op.ECDH, Alg.X25519, pub)])
    assert ok.ok
    await drv.unregister_region(pool.handle)
    with trio.fail_after(30):
        [gone] = await pool.run([Item(sid, Op.ECDH, Alg.X25519, pub)])
    assert gone.status == vc.VIRTIO_CRYPTO_ERR        # src/dst now outside every region
    await _healthy(by, bypool, bysid)


async def test_device_limit(start_host):
    host = start_host({"limits": {"max_devices": 1}})
    await trio.sleep(0.3)       # the fixture's readiness probe connection is gone by now
    async with await Driver.attach(host.socket_path) as first:
        with pytest.raises(DriverError):
            await Driver.attach(host.socket_path)
        assert (await first.capabilities())["v"] == 1


async def test_republished_heads_never_exceed_queue_size_in_flight(devices):
    """A driver republishing one head far faster than it consumes the used ring
    gets at most queue-size requests in flight, or its device reset once the
    ring runs more than its size ahead; either way the host stays healthy."""
    from host_refcheck import der_of
    host, drv, by, bypool, bysid = devices
    sid = await drv.create_session(SessionParams(Op.SIGN, Alg.RSA_PSS_RSAE_SHA256,
                                                 key=der_of(Alg.RSA_PSS_RSAE_SHA256)))
    pool = await PayloadPool.create(drv, slots=1)
    item = Item(sid, Op.SIGN, Alg.RSA_PSS_RSAE_SHA256, b"m")
    with trio.fail_after(30):
        [res] = await pool.run([item])          # leaves a valid chain at slot 0's descriptors
    assert res.ok
    q = drv.queues[0]
    vq = q.vq
    for _ in range(20):                     # 20 x 200 republished heads, never dequeued
        for _ in range(min(200, vq.num - 1)):
            vq.driver_add(0)
        vq.driver_publish()
        os.eventfd_write(q.kick_fd, 1)
        await trio.sleep(0.01)
    await _healthy(by, bypool, bysid)
    try:
        stats = await drv.stats()
    except DriverError:
        pass        # avail ran more than a ring ahead of the device: reset, also fine
    else:
        assert stats["device"]["requests"] <= 1 + 20 * 200
    assert host.alive()
    assert "Traceback" not in host.log()


async def test_unsealed_memory_is_refused(devices):
    """An fd that could be truncated under the host's mapping (SIGBUS for the
    whole host on the next access) is refused: that device is closed."""
    host, drv, by, bypool, bysid = devices
    fd = os.memfd_create("unsealed")
    os.ftruncate(fd, 1 << 16)
    raw = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with raw:
        await raw.connect(host.socket_path)
        from vcrypto.wire import transport
        await transport.send_message(raw, vu.Request.SET_MEM_TABLE,
                                     vu.mem_table([vu.MemRegion(0, 1 << 16, 0)]), fds=[fd])
        os.ftruncate(fd, 0)          # what a hostile driver would do next
        with trio.fail_after(10):
            assert await raw.recv(100) == b""
    os.close(fd)
    await _healthy(by, bypool, bysid)
    assert "not a memfd sealed against shrinking" in host.log()
