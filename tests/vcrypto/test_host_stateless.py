"""Stateless AEAD (virtio 1.2 VIRTIO_CRYPTO_F_AEAD_STATELESS_MODE): the key
travels with the request, no session exists. Negotiated by our driver;
a driver that does not negotiate it (a QEMU guest) keeps session mode, its
``header.flag`` 0 meaning what it always meant."""
from __future__ import annotations

import os
import struct

import trio
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

from vcrypto.driver import DataOp, Driver, SessionParams
from vcrypto.ops import Alg, Op
from vcrypto.shm.region import Region
from vcrypto.shm.virtqueue import VIRTQ_DESC_F_WRITE
from vcrypto.wire import virtio_crypto as vc

W = VIRTQ_DESC_F_WRITE
KEY, IV, AAD, SRC, DST, HDR, ST = 0, 64, 128, 256, 8192, 16384, 16448


async def _wait(q, n=1):
    out = []
    with trio.fail_after(20):
        while len(out) < n:
            out += q.dequeue_burst()
            if len(out) < n:
                await q.wait_used()
    return out


async def test_stateless_aead_both_directions_no_session(start_host):
    host = start_host()
    drv = await Driver.attach(host.socket_path)
    q = drv.queues[0]
    assert q.stateless_aead and vc.stateless_aead(drv.features)
    region = Region.create("stateless", 1 << 16)
    h = await drv.register_region(region)
    for alg, key, cls in ((Alg.AES_128_GCM, os.urandom(16), AESGCM),
                          (Alg.AES_256_GCM, os.urandom(32), AESGCM),
                          (Alg.CHACHA20_POLY1305, os.urandom(32), ChaCha20Poly1305)):
        iv, aad, msg = os.urandom(12), b"hdr", os.urandom(3000)
        for off, data in ((KEY, key), (IV, iv), (AAD, aad), (SRC, msg)):
            region.write(off, data)
        assert q.enqueue_burst([DataOp(0, Op.AEAD_SEAL, src=h.buf(SRC, len(msg)),
                                       dst=h.buf(DST, len(msg) + 16), iv=h.buf(IV, 12),
                                       aad=h.buf(AAD, 3), token="seal", key=h.buf(KEY, len(key)),
                                       alg=alg)]) == 1
        [c] = await _wait(q)
        ct = region.read(DST, c.dst_len)
        assert c.status == vc.VIRTIO_CRYPTO_OK and ct == cls(key).encrypt(iv, msg, aad)
        region.write(SRC, ct[:-1] + bytes([ct[-1] ^ 1]))   # a bad tag: BADMSG
        ops = [DataOp(0, Op.AEAD_OPEN, src=h.buf(SRC, len(ct)), dst=h.buf(DST, len(msg)),
                      iv=h.buf(IV, 12), aad=h.buf(AAD, 3), token="bad", key=h.buf(KEY, len(key)),
                      alg=alg)]
        assert q.enqueue_burst(ops) == 1
        [c] = await _wait(q)
        assert c.status == vc.VIRTIO_CRYPTO_BADMSG
        region.write(SRC, ct)
        assert q.enqueue_burst(ops) == 1
        [c] = await _wait(q)
        assert c.status == vc.VIRTIO_CRYPTO_OK and region.read(DST, c.dst_len) == msg
    stats = await drv.stats()
    assert stats["device"]["sessions"] == 0       # no session was ever created
    await drv.aclose()


async def test_hostile_stateless_requests_get_error_status(start_host):
    host = start_host()
    drv = await Driver.attach(host.socket_path)
    legacy = await Driver.attach(host.socket_path, stateless=False)
    assert not legacy.queues[0].stateless_aead
    region = Region.create("stateless-hostile", 1 << 16)
    h = await drv.register_region(region)
    hl = await legacy.register_region(region)
    key = os.urandom(16)
    region.write(KEY, key)
    region.write(IV, os.urandom(12))
    region.write(SRC, os.urandom(64))

    async def one(q, handle, hdr: bytes, key_len=16):
        region.write(HDR, hdr.ljust(72, b"\0"))
        region.write(ST, b"\xff")
        g = handle.gpa
        chain = [(g + HDR, 72, 0), (g + KEY, key_len, 0), (g + IV, 12, 0), (g + SRC, 64, 0),
                 (g + DST, 80, W), (g + ST, 1, W)]
        assert q.enqueue_chain(chain)
        await _wait(q)
        return region.read(ST, 1)[0]

    def stateless(opcode=vc.AEAD_ENCRYPT, algo=vc.AEAD_GCM, key_len=16, op=vc.OP_ENCRYPT,
                  iv_len=12, tag_len=16, src=64, dst=80, flag=0):
        return (struct.pack("<IIQII", opcode, 0, 0, flag, 0)
                + vc.AEAD_STATELESS_FLF.pack(algo, key_len, op, iv_len, tag_len, 0, src, dst))

    q = drv.queues[0]
    assert await one(q, h, stateless()) == vc.VIRTIO_CRYPTO_OK          # sanity
    assert AESGCM(key).encrypt(region.read(IV, 12), region.read(SRC, 64), None) == \
        region.read(DST, 80)
    cases = {
        "key_len not an AES key": (stateless(key_len=17), 17, vc.VIRTIO_CRYPTO_KEY_REJECTED),
        "unknown AEAD algo": (stateless(algo=9), 16, vc.VIRTIO_CRYPTO_NOTSUPP),
        "sess_para.op against the opcode": (stateless(op=vc.OP_DECRYPT), 16, vc.VIRTIO_CRYPTO_ERR),
        "iv_len 16": (stateless(iv_len=16), 16, vc.VIRTIO_CRYPTO_ERR),
        "dst too small": (stateless(dst=70), 16, vc.VIRTIO_CRYPTO_ERR),
        "lengths past the chain": (stateless(src=6000), 16, vc.VIRTIO_CRYPTO_ERR),
        "stateless sign": (stateless(opcode=vc.AKCIPHER_SIGN), 16, vc.VIRTIO_CRYPTO_NOTSUPP),
        # SESSION_MODE set: the same bytes name session 0, which does not exist
        "session mode, no session": (stateless(flag=vc.VIRTIO_CRYPTO_FLAG_SESSION_MODE), 16,
                                     vc.VIRTIO_CRYPTO_INVSESS),
    }
    for name, (hdr, key_len, want) in cases.items():
        assert await one(q, h, hdr, key_len) == want, name
    # A driver that did not negotiate the feature: flag 0 is session mode, so
    # the stateless bytes name session 0 (unknown), never a key.
    assert await one(legacy.queues[0], hl, stateless()) == vc.VIRTIO_CRYPTO_INVSESS
    # ... and its session-mode requests work as ever
    sid = await legacy.create_session(SessionParams(Op.AEAD_SEAL, Alg.AES_128_GCM, key=key))
    sess_hdr = vc.encode_data_request(vc.data_request_for(Op.AEAD_SEAL, sid, src_len=64, dst_len=80,
                                                          iv_len=12))
    region.write(HDR, sess_hdr)
    region.write(ST, b"\xff")
    g = hl.gpa
    assert legacy.queues[0].enqueue_chain([(g + HDR, 72, 0), (g + IV, 12, 0), (g + SRC, 64, 0),
                                           (g + DST, 80, W), (g + ST, 1, W)])
    await _wait(legacy.queues[0])
    assert region.read(ST, 1)[0] == vc.VIRTIO_CRYPTO_OK
    await drv.aclose()
    await legacy.aclose()
    assert host.alive(), host.log()
