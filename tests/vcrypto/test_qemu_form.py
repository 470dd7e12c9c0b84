"""QEMU 7.2's forms, from bytes built here by the spec/QEMU layout (not by
our encoders): the 632-byte CREATE_CRYPTO_SESSION payload and the Linux
guest's cipher data request (one INDIRECT descriptor -> 5 entries: 72-byte
header, iv, src, dst, status). Unit tests + hypothesis on the parsers, then
hostile QEMU-form requests against a real host."""
from __future__ import annotations

import os
import struct

import pytest
import trio
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from hypothesis import given, settings
from hypothesis import strategies as st

from vcrypto.driver import Driver, Item, PayloadPool, SessionParams
from vcrypto.host.datapath import ChainError, parse_request
from vcrypto.host.keys import KeyStore
from vcrypto.host.memory import GuestMemory
from vcrypto.host.resources._crypto import perform
from vcrypto.host.sessions import SessionTable
from vcrypto.ops import Alg, Op
from vcrypto.shm.region import Region
from vcrypto.shm.virtqueue import (
    VIRTQ_DESC_F_INDIRECT, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE, SplitVirtqueue, vring_layout,
)
from vcrypto.wire import session_msg
from vcrypto.wire import vhost_user as vu
from vcrypto.wire import virtio_crypto as vc

W, N = VIRTQ_DESC_F_WRITE, VIRTQ_DESC_F_NEXT


def qemu_session(*, cipher_alg=3, key=b"", hash_alg=0, hash_result_len=0, auth_key=b"",
                 add_len=0, op_type=1, direction=1, hash_mode=0, order=0, key_len=None,
                 auth_key_len=None) -> bytes:
    """QEMU 7.2 ``VhostUserCryptoSession`` laid out by hand, field by field."""
    b = bytearray(632)
    struct.pack_into("<q", b, 0, 0)                       # session_id
    struct.pack_into("<6I", b, 8, cipher_alg, len(key) if key_len is None else key_len,
                     hash_alg, hash_result_len,
                     len(auth_key) if auth_key_len is None else auth_key_len, add_len)
    b[32:36] = bytes([op_type, direction, hash_mode, order])
    # 36..40 padding, 40..56 two pointers QEMU leaves unused
    b[56:56 + len(key)] = key
    b[120:120 + len(auth_key)] = auth_key
    return bytes(b)


@pytest.mark.parametrize("key_len, alg", [(16, Alg.AES_128_CBC), (24, Alg.AES_192_CBC),
                                          (32, Alg.AES_256_CBC)])
@pytest.mark.parametrize("direction, op", [(1, Op.CIPHER_ENCRYPT), (2, Op.CIPHER_DECRYPT)])
def test_qemu_cipher_session(key_len, alg, direction, op):
    key = os.urandom(key_len)
    req = session_msg.decode_create(qemu_session(key=key, direction=direction))
    assert isinstance(req, session_msg.QemuSymSession)
    assert req.params() == SessionParams(op, alg, key)
    reply = session_msg.encode_create_reply(req, 77, vc.VIRTIO_CRYPTO_OK)
    assert len(reply) == 632 and struct.unpack_from("<q", reply)[0] == 77
    assert reply[8:] == qemu_session(key=key, direction=direction)[8:]   # echoed as QEMU expects


@pytest.mark.parametrize("direction, order, op", [(1, 2, Op.CHAIN_SEAL), (2, 1, Op.CHAIN_OPEN)])
@pytest.mark.parametrize("hash_alg, result_len, alg", [
    (2, 20, Alg.AES_128_CBC_HMAC_SHA1), (4, 32, Alg.AES_128_CBC_HMAC_SHA256)])
def test_qemu_chain_session(direction, order, op, hash_alg, result_len, alg):
    key, akey = os.urandom(16), os.urandom(64)
    req = session_msg.decode_create(qemu_session(
        key=key, auth_key=akey, op_type=2, direction=direction, hash_mode=2, order=order,
        hash_alg=hash_alg, hash_result_len=result_len))
    assert req.params() == SessionParams(op, alg, key + akey)


@pytest.mark.parametrize("fields, status", [
    ({"op_type": 0, "hash_alg": 2, "hash_result_len": 20}, vc.VIRTIO_CRYPTO_NOTSUPP),  # hash only
    ({"op_type": 2, "hash_mode": 1, "hash_alg": 2, "hash_result_len": 20, "order": 2},
     vc.VIRTIO_CRYPTO_NOTSUPP),                                                      # plain hash
    ({"op_type": 2, "hash_mode": 2, "hash_alg": 2, "hash_result_len": 20, "order": 1,
      "auth_key": b"a" * 20}, vc.VIRTIO_CRYPTO_NOTSUPP),                # MAC-then-encrypt
    ({"op_type": 2, "hash_mode": 2, "hash_alg": 2, "hash_result_len": 12, "order": 2,
      "auth_key": b"a" * 20}, vc.VIRTIO_CRYPTO_NOTSUPP),                # truncated MAC
    ({"op_type": 2, "hash_mode": 2, "hash_alg": 2, "hash_result_len": 20, "order": 2},
     vc.VIRTIO_CRYPTO_KEY_REJECTED),                                    # no HMAC key
    ({"cipher_alg": 2}, vc.VIRTIO_CRYPTO_NOTSUPP),                      # AES-ECB
    ({"key_len": 17}, vc.VIRTIO_CRYPTO_KEY_REJECTED),
    ({"key_len": 65}, vc.VIRTIO_CRYPTO_ERR),
    ({"auth_key_len": 513, "op_type": 2}, vc.VIRTIO_CRYPTO_ERR),
    ({"direction": 3}, vc.VIRTIO_CRYPTO_ERR),
])
def test_qemu_sessions_refused(fields, status):
    fields = {"key": b"k" * 16, **fields}
    req = session_msg.decode_create(qemu_session(**fields))
    with pytest.raises(vc.WireError) as ei:
        req.params()
    assert ei.value.status == status
    reply = session_msg.encode_create_reply(req, None, ei.value.status)
    assert len(reply) == 632 and struct.unpack_from("<q", reply)[0] < 0


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=632, max_size=632))
def test_qemu_session_parser_never_crashes(payload):
    req = session_msg.decode_create(payload)
    if not isinstance(req, session_msg.QemuSymSession):   # the VCS magic at offset 8
        return
    try:
        params = req.params()
    except vc.WireError as exc:
        assert exc.status in vc.STATUS_NAMES
        return
    assert params.op in (Op.CIPHER_ENCRYPT, Op.CIPHER_DECRYPT, Op.CHAIN_SEAL, Op.CHAIN_OPEN)
    SessionTable(4, KeyStore()).create(params)          # a parsed session is a valid one


# -- the Linux guest's data request, parsed -----------------------------------

GPA = 0x100000
NUM = 64


@pytest.fixture(scope="module")
def env():
    region = Region.create("qemu-form", 1 << 20)
    mem = GuestMemory(4)
    mem.add(vu.MemRegion(GPA, region.size, GPA), os.dup(region.fd))
    lay = vring_layout(NUM)
    b = region.buf
    vq = SplitVirtqueue(NUM, b[lay.desc:lay.avail], b[lay.avail:lay.used], b[lay.used:lay.total],
                        event_idx=False)
    sessions = SessionTable(8, KeyStore())
    key = os.urandom(32)
    enc = sessions.create(session_msg.decode_create(qemu_session(key=key)).params()).id
    yield region, mem, vq, sessions, key, enc
    vq.release()
    mem.clear()


def linux_request(region, vq, sid, iv, src, *, opcode=vc.CIPHER_ENCRYPT, op_type=1,
                  iv_len=None, src_len=None, dst_len=None, dst_room=None) -> None:
    """What Linux 6.1's virtio_crypto_skcipher_algs.c puts on the queue, at
    head 0: one INDIRECT descriptor -> [header, iv, src, dst, status]."""
    hdr = bytearray(72)
    struct.pack_into("<IIQII", hdr, 0, opcode, 0, sid, 0, 0)         # header.algo = 0
    struct.pack_into("<III", hdr, 24, len(iv) if iv_len is None else iv_len,
                     len(src) if src_len is None else src_len,
                     len(src) if dst_len is None else dst_len)
    struct.pack_into("<I", hdr, 64, op_type)                          # sym_req.op_type
    region.write(0x10000, bytes(hdr))
    region.write(0x11000, iv)
    region.write(0x12000, src)
    table = [(GPA + 0x10000, 72, 0), (GPA + 0x11000, len(iv), 0), (GPA + 0x12000, len(src), 0),
             (GPA + 0x40000, len(src) if dst_room is None else dst_room, W),
             (GPA + 0x80000, 1, W)]
    for i, (a, n, f) in enumerate(table):
        region.write(0x30000 + 16 * i,
                     struct.pack("<QIHH", a, n, f | (N if i < 4 else 0), i + 1 if i < 4 else 0))
    vq.desc.write(0, GPA + 0x30000, 16 * len(table), VIRTQ_DESC_F_INDIRECT, 0)


def test_linux_cipher_request(env):
    region, mem, vq, sessions, key, sid = env
    iv, msg = os.urandom(16), os.urandom(4096)
    linux_request(region, vq, sid, iv, msg)
    req = parse_request(vq, 0, mem, sessions, 0, 1 << 20)
    assert req.error_status is None, req.error_detail
    assert (req.job.op, req.job.alg, req.dst_len) == (Op.CIPHER_ENCRYPT, Alg.AES_256_CBC, 4096)
    e = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
    want = e.update(msg) + e.finalize()
    result = perform(req.job)
    assert result == want
    sessions.release(req.session)
    assert req.finish(vc.VIRTIO_CRYPTO_OK, result) == 4096 + 1
    assert region.read(0x40000, 4096) == want and region.read(0x80000, 1) == b"\0"
    req.job.src = b""


@pytest.mark.parametrize("change, status", [
    ({"iv": b"i" * 12}, vc.VIRTIO_CRYPTO_ERR),                  # AES-CBC needs 16
    ({"src": b"s" * 100}, vc.VIRTIO_CRYPTO_ERR),                # not whole blocks
    ({"op_type": 2}, vc.VIRTIO_CRYPTO_ERR),                     # chain on a cipher session
    ({"op_type": 7}, vc.VIRTIO_CRYPTO_NOTSUPP),
    ({"opcode": vc.CIPHER_DECRYPT}, vc.VIRTIO_CRYPTO_ERR),      # the encrypt session's id
    ({"sid": 10 ** 9}, vc.VIRTIO_CRYPTO_INVSESS),
    ({"dst_len": 32, "dst_room": 32}, vc.VIRTIO_CRYPTO_ERR),    # dst shorter than src
    ({"src_len": 1 << 20}, vc.VIRTIO_CRYPTO_ERR),               # more than the buffers hold
    ({"dst_room": 16}, vc.VIRTIO_CRYPTO_ERR),                   # dst_len beyond the buffers
])
def test_linux_cipher_request_refused(env, change, status):
    region, mem, vq, sessions, key, sid = env
    args = {"sid": sid, "iv": os.urandom(16), "src": os.urandom(64), **change}
    linux_request(region, vq, args.pop("sid"), args.pop("iv"), args.pop("src"), **args)
    req = parse_request(vq, 0, mem, sessions, 0, 1 << 20)
    assert req.error_status == status, req.error_detail
    req.finish(req.error_status)
    assert region.read(0x80000, 1) == bytes([status])


@settings(max_examples=200, deadline=None)
@given(opcode=st.sampled_from([vc.CIPHER_ENCRYPT, vc.CIPHER_DECRYPT, vc.MAC, 0x9999]),
       op_type=st.integers(0, 3), fields=st.lists(st.integers(0, 2 ** 32 - 1), min_size=10,
                                                    max_size=10),
       small=st.lists(st.integers(0, 300), min_size=10, max_size=10), use_small=st.booleans())
def test_qemu_form_data_parser_never_crashes(env, opcode, op_type, fields, small, use_small):
    """Any header in the Linux guest's chain: an error status or a job whose
    lengths fit the buffers, never an exception or a leaked session ref."""
    region, mem, vq, sessions, key, sid = env
    linux_request(region, vq, sid, os.urandom(16), os.urandom(256), opcode=opcode)
    hdr = bytearray(region.read(0x10000, 72))
    struct.pack_into("<10I", hdr, 24, *(small if use_small else fields))
    struct.pack_into("<I", hdr, 64, op_type)
    region.write(0x10000, bytes(hdr))
    refs = sessions._sessions[sid].refs
    try:
        req = parse_request(vq, 0, mem, sessions, 0, 1 << 20)
    except ChainError:
        raise AssertionError("a well-formed chain must never be a ChainError")
    if req.error_status is None:
        assert len(req.job.src) <= 256 and req.dst_len <= 256
        sessions.release(req.session)
        req.job.src = b""
    req.finish(req.error_status or vc.VIRTIO_CRYPTO_ERR)
    assert sessions._sessions[sid].refs == refs


# -- hostile QEMU-form requests against a real host ------------------------------

async def _qemu_create(drv: Driver, payload: bytes) -> int:
    reply = await drv._request(vu.Request.CREATE_CRYPTO_SESSION, payload)
    assert len(reply) == 632
    return struct.unpack_from("<q", reply)[0]


async def _wait_one(q):
    with trio.fail_after(20):
        while not (comps := q.dequeue_burst()):
            await q.wait_used()
    [c] = comps
    return c


async def test_hostile_qemu_form_requests(start_host):
    host = start_host({"limits": {"max_request_bytes": 128 * 1024}})
    # as a QEMU 7.2 guest does: no stateless mode (its headers carry flag 0)
    guest = await Driver.attach(host.socket_path, indirect=True, queue_size=64, stateless=False)
    other = await Driver.attach(host.socket_path)
    key = os.urandom(16)
    sid = await _qemu_create(guest, qemu_session(key=key))
    foreign = await _qemu_create(other, qemu_session(key=key))
    assert sid > 0 and foreign > 0
    assert await _qemu_create(guest, qemu_session(key=key, cipher_alg=2)) < 0   # refused
    opool = await PayloadPool.create(other, slots=4)

    async def other_is_fine():
        iv, msg = os.urandom(16), os.urandom(64)
        with trio.fail_after(20):
            [r] = await opool.run([Item(foreign, Op.CIPHER_ENCRYPT, Alg.AES_128_CBC, msg, iv)])
        e = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
        assert r.ok and r.data == e.update(msg) + e.finalize()

    region = Region.create("guest-ram", 1 << 20)
    h = await guest.register_region(region)
    q = guest.queues[0]
    HDR, IV, SRC, DST, ST = (h.gpa + o for o in (0, 0x1000, 0x2000, 0x40000, 0x80000))

    def header(session, n=64):
        b = bytearray(72)
        struct.pack_into("<IIQII3I", b, 0, vc.CIPHER_ENCRYPT, 0, session, 0, 0, 16, n, n)
        struct.pack_into("<I", b, 64, vc.SYM_OP_CIPHER)
        region.write(0, bytes(b))
        region.write(0x1000, os.urandom(16))
        region.write(0x80000, b"\xff")

    def chain(iv=IV, src=SRC, dst=DST, n=64):
        return [(HDR, 72, 0), (iv, 16, 0), (src, n, 0), (dst, n, W), (ST, 1, W)]

    header(sid)
    assert q.enqueue_chain(chain())
    assert (await _wait_one(q)).dst_len == 64 and region.read(0x80000, 1) == b"\0"
    cases = {
        "iv outside guest memory": (sid, chain(iv=0xdead0000)),
        "dst past the end of guest memory": (sid, chain(dst=h.gpa + (1 << 20) - 8)),
        "another device's session": (foreign, chain()),
    }
    for name, (session, c) in cases.items():
        header(session)
        assert q.enqueue_chain(c), name
        await _wait_one(q)
        want = vc.VIRTIO_CRYPTO_INVSESS if session == foreign else vc.VIRTIO_CRYPTO_ERR
        assert region.read(0x80000, 1)[0] == want, name
        await other_is_fine()
    # an indirect table longer than the queue: a broken chain, used len 0
    slot = q._free.pop()
    q._tokens[slot] = "long"
    q.vq.desc.write(slot, HDR + 0x8000, 16 * (64 + 1), VIRTQ_DESC_F_INDIRECT, 0)
    q.vq.driver_add(slot)
    q.vq.driver_publish()
    os.eventfd_write(q.kick_fd, 1)
    c = await _wait_one(q)
    assert (c.token, c.status, c.dst_len) == ("long", vc.VIRTIO_CRYPTO_ERR, 0)
    await other_is_fine()
    # a guest that stops mid-request: 96 KiB split into 6 pieces, then gone
    header(sid, n=96 * 1024)
    assert q.enqueue_chain(chain(n=96 * 1024))
    await trio.sleep(0.01)
    await guest.aclose()
    for _ in range(3):
        await other_is_fine()
    await other.aclose()
    await trio.sleep(0.2)
    assert host.alive() and "Traceback" not in host.log(), host.log()
