"""A QEMU-shaped vhost-user front-end, written against the wire modules only:
the message order QEMU 7.2 uses (notes/qemu-virtio-crypto.md), two memory
regions of one memfd with mmap_offset, vring addresses in the front-end's
virtual address space (not guest-physical), no EVENT_IDX feature but a guest
that uses event index, one INDIRECT descriptor per request, replies with
flags 0x5, QEMU's 632-byte session form, CLOSE without a reply,
GET_VRING_BASE at shutdown."""
from __future__ import annotations

import os
import socket
import struct

import trio

from host_refcheck import check_ecdh_result, ecdh_peer
from vcrypto.ops import Alg, Op
from vcrypto.shm.region import Region
from vcrypto.shm.virtqueue import (
    VIRTQ_DESC_F_INDIRECT, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE, DescriptorTable, SplitVirtqueue,
    vring_layout,
)
from vcrypto.wire import session_msg, transport
from vcrypto.wire import vhost_user as vu
from vcrypto.wire import virtio_crypto as vc

R = vu.Request
REGION_BYTES = 1 << 16
GPA_A, UVA_A = 0x0, 0x7F00_0000_0000
GPA_B, UVA_B = 0x10_0000, 0x7F00_0010_0000


async def test_qemu_shaped_frontend(start_host):
    host = start_host()
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    await sock.connect(host.socket_path)
    mem = Region.create("guest", 2 * REGION_BYTES)     # region A = first half, B = second
    kick = os.eventfd(0, os.EFD_NONBLOCK)
    call = os.eventfd(0, os.EFD_NONBLOCK)

    async def send(req, payload=b"", fds=()):
        await transport.send_message(sock, req, payload, fds=list(fds))

    async def reply(req):
        with trio.fail_after(10):
            msg = await transport.recv_message(sock)
        assert (msg.request, msg.flags) == (req, 0x5), msg
        return msg.payload

    await send(R.GET_FEATURES)
    offered = vu.parse_u64(await reply(R.GET_FEATURES))
    assert offered & (1 << vu.VHOST_USER_F_PROTOCOL_FEATURES)
    await send(R.GET_PROTOCOL_FEATURES)
    pf = vu.parse_u64(await reply(R.GET_PROTOCOL_FEATURES))
    assert pf & (1 << vu.ProtocolFeature.CRYPTO_SESSION)
    await send(R.SET_PROTOCOL_FEATURES, vu.u64(1 << vu.ProtocolFeature.CRYPTO_SESSION))
    await send(R.SET_OWNER)
    await send(R.GET_FEATURES)
    await reply(R.GET_FEATURES)
    await send(R.SET_VRING_CALL, vu.u64(0), fds=[call])
    err = os.eventfd(0)
    await send(R.SET_VRING_ERR, vu.u64(0), fds=[err])
    os.close(err)
    await send(R.SET_FEATURES, vu.u64((1 << vu.VIRTIO_F_VERSION_1)
                                      | (1 << vu.VHOST_USER_F_PROTOCOL_FEATURES)))
    await send(R.SET_MEM_TABLE, vu.mem_table([
        vu.MemRegion(GPA_A, REGION_BYTES, UVA_A, 0),
        vu.MemRegion(GPA_B, REGION_BYTES, UVA_B, REGION_BYTES)]), fds=[mem.fd, mem.fd])
    # the vring lives in region A, requests in region B
    num = 64
    lay = vring_layout(num)
    await send(R.SET_VRING_NUM, vu.vring_state(0, num))
    await send(R.SET_VRING_BASE, vu.vring_state(0, 0))
    await send(R.SET_VRING_ADDR, vu.VringAddr(0, 0, UVA_A + lay.desc, UVA_A + lay.used,
                                              UVA_A + lay.avail).encode())
    await send(R.SET_VRING_KICK, vu.u64(0), fds=[kick])

    # QEMU 7.2's symmetric session form: AES-CBC accepted (a session id in
    # the same 632-byte struct), AES-ECB refused with a negative id
    qemu = session_msg.QEMU72.pack(0, 3, 16, 0, 0, 0, 0, 1, 1, 0, 0, 0, 0, b"k" * 16, b"")
    await send(R.CREATE_CRYPTO_SESSION, qemu)
    r = await reply(R.CREATE_CRYPTO_SESSION)
    assert len(r) == 632 and struct.unpack_from("<q", r)[0] > 0 and r[8:] == qemu[8:]
    await send(R.CREATE_CRYPTO_SESSION, qemu[:8] + struct.pack("<I", 2) + qemu[12:])
    r = await reply(R.CREATE_CRYPTO_SESSION)
    assert len(r) == 632 and struct.unpack_from("<q", r)[0] < 0
    await send(R.CREATE_CRYPTO_SESSION,
               session_msg.encode_create(vc.SessionParams(Op.ECDH, Alg.SECP256R1)))
    sid, status = session_msg.decode_create_reply(await reply(R.CREATE_CRYPTO_SESSION))
    assert status == 0 and sid > 0

    # one request as a single INDIRECT descriptor (what the Linux guest sends)
    vq = SplitVirtqueue(num, mem.buf[lay.desc:lay.avail], mem.buf[lay.avail:lay.used],
                        mem.buf[lay.used:lay.total], event_idx=False)
    b = REGION_BYTES                       # region B's offset in the memfd
    priv, pub = ecdh_peer(Alg.SECP256R1)
    mem.write(b + 0, vc.encode_data_request(vc.data_request_for(Op.ECDH, sid, src_len=len(pub),
                                                                  dst_len=97)))
    mem.write(b + 1024, pub)
    table = DescriptorTable(mem.buf[b + 4096:b + 4096 + 4 * 16])
    table.write(0, GPA_B + 0, 72, VIRTQ_DESC_F_NEXT, 1)
    table.write(1, GPA_B + 1024, len(pub), VIRTQ_DESC_F_NEXT, 2)
    table.write(2, GPA_B + 2048, 97, VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT, 3)
    table.write(3, GPA_B + 3000, 1, VIRTQ_DESC_F_WRITE, 0)
    table.release()
    vq.desc.write(5, GPA_B + 4096, 64, VIRTQ_DESC_F_INDIRECT, 0)
    vq.driver_add(5)
    vq.driver_publish()
    os.eventfd_write(kick, 1)
    with trio.fail_after(10):
        await trio.lowlevel.wait_readable(call)
    assert vq.driver_pop_used() == (5, 98)
    assert mem.read(b + 3000, 1) == b"\x00"
    check_ecdh_result(Alg.SECP256R1, priv, mem.read(b + 2048, 97))
    with trio.fail_after(10):
        while vq.avail_event != 1:          # parked again: avail_event kept written
            await trio.sleep(0.01)

    await send(R.GET_VRING_BASE, vu.vring_state(0, 0))       # stops the ring
    assert vu.parse_vring_state(await reply(R.GET_VRING_BASE)) == (0, 1)
    # restart it where it stopped (guest driver reload) and serve again
    await send(R.SET_VRING_BASE, vu.vring_state(0, 1))
    await send(R.SET_VRING_KICK, vu.u64(0), fds=[kick])
    vq.driver_add(5)
    vq.driver_publish()
    os.eventfd_write(kick, 1)
    with trio.fail_after(10):
        while vq.driver_pending_used() == 0:
            await trio.sleep(0.01)
    assert vq.driver_pop_used() == (5, 98)

    await send(R.CLOSE_CRYPTO_SESSION, vu.u64(sid))          # no reply expected
    await send(R.GET_VRING_BASE, vu.vring_state(0, 0))
    assert vu.parse_vring_state(await reply(R.GET_VRING_BASE)) == (0, 2)
    vq.release()
    sock.close()
    os.close(kick)
    os.close(call)
    mem.close()
    assert host.alive()


async def test_vring_without_kick_fd_is_polled(start_host):
    """SET_VRING_KICK with the no-fd flag (bit 8): the host polls the ring."""
    host = start_host({"poll": {"nofd_interval_us": 2000}})
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    await sock.connect(host.socket_path)
    mem = Region.create("guest", REGION_BYTES)
    num = 8
    lay = vring_layout(num)
    for req, payload, fds in [
        (R.SET_FEATURES, vu.u64(1 << vu.VIRTIO_F_VERSION_1), []),
        (R.SET_MEM_TABLE, vu.mem_table([vu.MemRegion(GPA_B, REGION_BYTES, UVA_B)]), [mem.fd]),
        (R.SET_VRING_NUM, vu.vring_state(0, num), []),
        (R.SET_VRING_ADDR, vu.VringAddr(0, 0, UVA_B + lay.desc, UVA_B + lay.used,
                                        UVA_B + lay.avail).encode(), []),
        (R.SET_VRING_KICK, vu.u64(0 | vu.VRING_NOFD_MASK), []),
        (R.SET_VRING_CALL, vu.u64(0 | vu.VRING_NOFD_MASK), []),
    ]:
        await transport.send_message(sock, req, payload, fds=fds)
    await transport.send_message(sock, R.CREATE_CRYPTO_SESSION,
                                 session_msg.encode_create(vc.SessionParams(Op.ECDH, Alg.X25519)))
    sid, _ = session_msg.decode_create_reply((await transport.recv_message(sock)).payload)
    vq = SplitVirtqueue(num, mem.buf[lay.desc:lay.avail], mem.buf[lay.avail:lay.used],
                        mem.buf[lay.used:lay.total], event_idx=False)
    priv, pub = ecdh_peer(Alg.X25519)
    base = 8192
    mem.write(base, vc.encode_data_request(vc.data_request_for(Op.ECDH, sid, src_len=32,
                                                                dst_len=64)))
    mem.write(base + 100, pub)
    for i, (off, length, flags) in enumerate([(0, 72, 0), (100, 32, 0),
                                              (200, 64, VIRTQ_DESC_F_WRITE),
                                              (300, 1, VIRTQ_DESC_F_WRITE)]):
        vq.desc.write(i, GPA_B + base + off, length, flags | (VIRTQ_DESC_F_NEXT if i < 3 else 0),
                      i + 1)
    await trio.sleep(0.1)                   # let the host park first
    vq.driver_add(0)
    vq.driver_publish()                     # no kick: there is no kick fd
    with trio.fail_after(10):
        while vq.driver_pending_used() == 0:
            await trio.sleep(0.005)
    assert vq.driver_pop_used() == (0, 65)
    check_ecdh_result(Alg.X25519, priv, mem.read(base + 200, 64))
    vq.release()
    sock.close()
    mem.close()


async def test_get_vring_base_drains_in_flight_requests(start_host):
    """GET_VRING_BASE stops the ring only after the requests it already popped
    are completed and published: the reply's base matches used.idx."""
    from host_refcheck import der_of
    from vcrypto.driver import Driver, Item, PayloadPool

    host = start_host()
    async with await Driver.attach(host.socket_path) as drv:
        sid = await drv.create_session(vc.SessionParams(Op.SIGN, Alg.RSA_PSS_RSAE_SHA512,
                                                        key=der_of(Alg.RSA_PSS_RSAE_SHA512)))
        pool = await PayloadPool.create(drv, slots=32)
        ops = [pool._op_for(i, Item(sid, Op.SIGN, Alg.RSA_PSS_RSAE_SHA512, b"m" * 10), i)
               for i in range(32)]
        q = drv.queues[0]
        assert q.enqueue_burst(ops) == 32
        await trio.sleep(0.005)             # popped, most still signing on threads
        reply = await drv._request(R.GET_VRING_BASE, vu.vring_state(0, 0))
        _, base = vu.parse_vring_state(reply)
        assert base >= 1
        assert q.vq.used_idx == base         # every popped request published before the reply
        done = q.dequeue_burst()
        assert len(done) == base and all(c.status == 0 for c in done)
