"""The data path without I/O: descriptor chains in memory -> validated
requests. Fields may be split or merged across descriptors in any way
(virtio-crypto treats the readable and writable parts as byte streams)."""
from __future__ import annotations

import os

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import given, settings
from hypothesis import strategies as st

from vcrypto.host.datapath import ChainError, parse_request
from vcrypto.host.keys import KeyStore
from vcrypto.host.memory import GuestMemory
from vcrypto.host.resources._crypto import perform
from vcrypto.host.sessions import SessionTable
from vcrypto.ops import Alg, Op
from vcrypto.shm.region import Region
from vcrypto.shm.virtqueue import (
    VIRTQ_DESC_F_INDIRECT, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE, DescriptorTable, SplitVirtqueue,
    vring_layout,
)
from vcrypto.wire import vhost_user as vu
from vcrypto.wire import virtio_crypto as vc

GPA = 0x4000_0000
NUM = 16


@pytest.fixture(scope="module")
def env():
    region = Region.create("dp", 1 << 20)
    mem = GuestMemory(4)
    mem.add(vu.MemRegion(GPA, region.size, GPA), os.dup(region.fd))
    lay = vring_layout(NUM)
    b = region.buf
    vq = SplitVirtqueue(NUM, b[lay.desc:lay.avail], b[lay.avail:lay.used], b[lay.used:lay.total],
                        event_idx=False)
    sessions = SessionTable(8, KeyStore())
    key = os.urandom(16)
    sid = sessions.create(vc.SessionParams(Op.AEAD_SEAL, Alg.AES_128_GCM, key)).id
    yield region, mem, vq, sessions, key, sid
    vq.release()
    mem.clear()


def _cuts(data_len: int, cuts: list[int]) -> list[tuple[int, int]]:
    points = sorted({c % data_len for c in cuts if 0 < c % data_len} | {0, data_len})
    return [(a, b - a) for a, b in zip(points, points[1:])]


@settings(max_examples=60, deadline=None)
@given(rcuts=st.lists(st.integers(1, 10_000), max_size=4),
       wcuts=st.lists(st.integers(1, 10_000), max_size=3),
       indirect=st.booleans())
def test_fields_split_across_descriptors(env, rcuts, wcuts, indirect):
    region, mem, vq, sessions, key, sid = env
    iv, aad, msg = os.urandom(12), os.urandom(7), os.urandom(300)
    hdr = vc.encode_data_request(vc.data_request_for(Op.AEAD_SEAL, sid, src_len=300,
                                                     dst_len=316, iv_len=12, aad_len=7))
    readable = hdr + iv + aad + msg
    rbase, wbase = 0x10000, 0x20000
    region.write(rbase, readable)
    region.write(wbase, bytes(317))
    # readable stream in up to 5 pieces, writable (dst 316 + status 1) in up to 4
    r_pieces = _cuts(len(readable), rcuts)
    w_pieces = _cuts(317, wcuts)
    descs = [(GPA + rbase + off, n, 0) for off, n in r_pieces] + \
            [(GPA + wbase + off, n, VIRTQ_DESC_F_WRITE) for off, n in w_pieces]
    assert len(descs) <= NUM
    if indirect:
        table = DescriptorTable(region.buf[0x30000:0x30000 + 16 * len(descs)])
        for i, (a, n, f) in enumerate(descs):
            table.write(i, a, n, f | (VIRTQ_DESC_F_NEXT if i < len(descs) - 1 else 0), i + 1)
        table.release()
        vq.desc.write(3, GPA + 0x30000, 16 * len(descs), VIRTQ_DESC_F_INDIRECT, 0)
        head = 3
    else:
        order = list(range(NUM - 1, NUM - 1 - len(descs), -1))   # descending indices
        for k, (a, n, f) in enumerate(descs):
            nxt = order[k + 1] if k + 1 < len(descs) else 0
            vq.desc.write(order[k], a, n, f | (VIRTQ_DESC_F_NEXT if k + 1 < len(descs) else 0), nxt)
        head = order[0]
    req = parse_request(vq, head, mem, sessions, 0, 1 << 20)
    assert req.error_status is None, req.error_detail
    assert (req.job.iv, req.job.aad, req.job.src) == (iv, aad, msg)
    written = req.finish(vc.VIRTIO_CRYPTO_OK, perform(req.job))
    sessions.release(req.session)
    assert written == 317
    out = region.read(wbase, 317)
    assert out[:316] == AESGCM(key).encrypt(iv, msg, aad) and out[316] == vc.VIRTIO_CRYPTO_OK


@pytest.mark.parametrize("pieces", [1, 4])
def test_aead_src_is_a_view_when_whole(env, pieces):
    """Zero copy: an AEAD record in one descriptor reaches the cipher as a view
    into the driver's memory; split across descriptors it is joined into bytes."""
    region, mem, vq, sessions, key, sid = env
    iv, aad, msg = os.urandom(12), b"hdr05", os.urandom(16384)
    hdr = vc.encode_data_request(vc.data_request_for(Op.AEAD_SEAL, sid, src_len=len(msg),
                                                     dst_len=len(msg) + 16, iv_len=12, aad_len=5))
    region.write(0x10000, hdr + iv + aad)
    region.write(0x20000, msg)
    step = len(msg) // pieces
    descs = [(GPA + 0x10000, len(hdr) + 17, 0)]
    descs += [(GPA + 0x20000 + k * step, step, 0) for k in range(pieces)]
    descs += [(GPA + 0x40000, len(msg) + 16, VIRTQ_DESC_F_WRITE),
              (GPA + 0x50000, 1, VIRTQ_DESC_F_WRITE)]
    for i, (a, n, f) in enumerate(descs):
        vq.desc.write(i, a, n, f | (VIRTQ_DESC_F_NEXT if i < len(descs) - 1 else 0), i + 1)
    req = parse_request(vq, 0, mem, sessions, 0, 1 << 20)
    assert req.error_status is None
    assert isinstance(req.job.src, memoryview if pieces == 1 else bytes)
    assert bytes(req.job.src) == msg
    expected = AESGCM(key).encrypt(iv, msg, aad)
    assert perform(req.job) == expected
    sessions.release(req.session)
    req.finish(vc.VIRTIO_CRYPTO_OK, expected)
    assert region.read(0x40000, len(expected)) == expected
    req.job.src = b""   # the view keeps the mapping: drop it before the fixture unmaps


def test_chain_errors(env):
    region, mem, vq, sessions, key, sid = env
    with pytest.raises(ChainError, match="head"):
        parse_request(vq, NUM, mem, sessions, 0, 1 << 20)
    vq.desc.write(0, GPA, 16 * (NUM + 1), VIRTQ_DESC_F_INDIRECT, 0)      # table too long
    with pytest.raises(ChainError, match="indirect table"):
        parse_request(vq, 0, mem, sessions, 0, 1 << 20)
    vq.desc.write(0, GPA, 16, VIRTQ_DESC_F_INDIRECT | VIRTQ_DESC_F_NEXT, 1)
    with pytest.raises(ChainError, match="NEXT"):
        parse_request(vq, 0, mem, sessions, 0, 1 << 20)
    table = DescriptorTable(region.buf[0x30000:0x30000 + 32])             # nested indirect
    table.write(0, GPA, 16, VIRTQ_DESC_F_INDIRECT, 0)
    table.release()
    vq.desc.write(0, GPA + 0x30000, 32, VIRTQ_DESC_F_INDIRECT, 0)
    with pytest.raises(ChainError, match="nested"):
        parse_request(vq, 0, mem, sessions, 0, 1 << 20)
