"""AEAD input without a copy: a record that lies in one descriptor reaches
the cipher as a view into the driver's memory; a field split across
descriptors is joined into bytes; a job that has to wait (a task, another
process) is given its own bytes, never a view into memory the driver may
unmap meanwhile."""
from __future__ import annotations

import os

import pytest
import trio
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from vcrypto.driver import Driver, Item, PayloadPool, SessionParams
from vcrypto.host.datapath import parse_request
from vcrypto.host.keys import KeyStore
from vcrypto.host.memory import GuestMemory
from vcrypto.host.resources._crypto import perform
from vcrypto.host.sessions import SessionTable
from vcrypto.ops import Alg, Op
from vcrypto.shm.region import Region
from vcrypto.shm.virtqueue import VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE, SplitVirtqueue, vring_layout
from vcrypto.wire import vhost_user as vu
from vcrypto.wire import virtio_crypto as vc

GPA = 0x4000_0000
NUM = 16


def _request(src_pieces: int):
    """One AEAD seal request in fresh memory, its src in ``src_pieces`` descriptors."""
    region = Region.create("zc", 1 << 20)
    mem = GuestMemory(4)
    mem.add(vu.MemRegion(GPA, region.size, GPA), os.dup(region.fd))
    lay = vring_layout(NUM)
    b = region.buf
    vq = SplitVirtqueue(NUM, b[lay.desc:lay.avail], b[lay.avail:lay.used], b[lay.used:lay.total],
                        event_idx=False)
    sessions = SessionTable(8, KeyStore())
    key = os.urandom(16)
    sid = sessions.create(vc.SessionParams(Op.AEAD_SEAL, Alg.AES_128_GCM, key)).id
    iv, aad, msg = os.urandom(12), b"hdr05", os.urandom(16384)
    hdr = vc.encode_data_request(vc.data_request_for(Op.AEAD_SEAL, sid, src_len=len(msg),
                                                     dst_len=len(msg) + 16, iv_len=12, aad_len=5))
    region.write(0x10000, hdr + iv + aad)
    region.write(0x20000, msg)
    step = len(msg) // src_pieces
    descs = [(GPA + 0x10000, len(hdr) + 17, 0)]
    descs += [(GPA + 0x20000 + k * step, step, 0) for k in range(src_pieces)]
    descs += [(GPA + 0x40000, len(msg) + 16, VIRTQ_DESC_F_WRITE),
              (GPA + 0x50000, 1, VIRTQ_DESC_F_WRITE)]
    for i, (a, n, f) in enumerate(descs):
        vq.desc.write(i, a, n, f | (VIRTQ_DESC_F_NEXT if i < len(descs) - 1 else 0), i + 1)
    req = parse_request(vq, 0, mem, sessions, 0, 1 << 20)
    return req, AESGCM(key).encrypt(iv, msg, aad), msg, (vq, mem, region, sessions)


@pytest.mark.parametrize("pieces", [1, 4])
def test_aead_src_is_a_view_when_whole(pieces):
    req, expected, msg, (vq, mem, region, sessions) = _request(pieces)
    assert req.error_status is None
    assert isinstance(req.job.src, memoryview if pieces == 1 else bytes)
    assert bytes(req.job.src) == msg
    assert perform(req.job) == expected
    sessions.release(req.session)
    req.finish(vc.VIRTIO_CRYPTO_OK, expected)
    assert region.read(0x40000, len(expected)) == expected
    req.job.src = b""   # the view keeps the mapping: drop it before unmapping
    vq.release()
    mem.clear()
    region.close()


@pytest.mark.daemons
async def test_aead_on_worker_processes_gets_bytes(start_host):
    """A ``workers`` resource runs jobs in other processes (pickled): every
    AEAD record still comes back right, so the job that waited held bytes."""
    host = start_host({"pool": {"resources": [{"name": "procs", "kind": "workers",
                                               "processes": 1}]}})
    key = os.urandom(16)
    async with await Driver.attach(host.socket_path) as drv:
        pool = await PayloadPool.create(drv)
        sid = await drv.create_session(SessionParams(Op.AEAD_SEAL, Alg.AES_128_GCM, key=key))
        items = [Item(sid, Op.AEAD_SEAL, Alg.AES_128_GCM, os.urandom(16384), os.urandom(12))
                 for _ in range(6)]
        with trio.fail_after(60):
            results = await pool.run(items, window=6)
    for item, r in zip(items, results):
        assert r.ok and r.data == AESGCM(key).encrypt(item.iv, item.src, None)
