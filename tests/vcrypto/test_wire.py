"""virtio-crypto and vhost-user codecs: round trips, documented offsets, and
any bytes -> a value or a typed error (never anything else)."""
from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vcrypto.ops import ALL_CAPABILITIES, CHAIN_PARTS, CIPHER_KEY_BYTES, SYM_OPS, Alg, Op
from vcrypto.wire import session_msg
from vcrypto.wire import vhost_user as vu
from vcrypto.wire import virtio_crypto as vc

KEYS = {Alg.AES_128_GCM: b"k" * 16, Alg.AES_256_GCM: b"k" * 32, Alg.CHACHA20_POLY1305: b"c" * 32}


def _params():
    for op, alg in sorted(ALL_CAPABILITIES, key=lambda c: (c[0].value, c[1].value)):
        if op in (Op.AEAD_SEAL, Op.AEAD_OPEN):
            yield vc.SessionParams(op, alg, KEYS[alg])
        elif op is Op.SIGN:
            yield vc.SessionParams(op, alg, b"\x30\x82der-bytes")
            yield vc.SessionParams(op, alg, key_ref="site-key")
        elif op in SYM_OPS:
            yield vc.SessionParams(op, alg, sym_key(op, alg))
        else:
            yield vc.SessionParams(op, alg)


def sym_key(op, alg, mac_key=b"m" * 20):
    """A valid key for a cipher / MAC / chain session."""
    if op is Op.MAC:
        return mac_key
    cipher = CHAIN_PARTS[alg][0] if alg in CHAIN_PARTS else alg
    return b"c" * CIPHER_KEY_BYTES[cipher] + (mac_key if alg in CHAIN_PARTS else b"")


@pytest.mark.parametrize("params", list(_params()), ids=repr)
def test_session_create_round_trip(params):
    wire = vc.encode_session_create(params)
    assert len(wire) == vc.CTRL_REQ_BYTES + len(params.key or (params.key_ref or "").encode())
    assert vc.decode_session_create(wire) == params
    framed = session_msg.encode_create(params)
    assert session_msg.decode_create(framed) == params


def test_session_create_layout_is_virtio_crypto():
    wire = vc.encode_session_create(vc.SessionParams(Op.AEAD_SEAL, Alg.AES_256_GCM, b"k" * 32))
    opcode, algo, flag, queue = struct.unpack_from("<IIII", wire, 0)
    assert (opcode, algo, flag, queue) == ((3 << 8) | 2, 1, 0, 0)   # AEAD_CREATE_SESSION, GCM
    assert struct.unpack_from("<IIIII", wire, 16) == (1, 32, 16, 0, 1)  # algo key tag aad op=ENCRYPT
    assert wire[72:] == b"k" * 32
    rsa = vc.encode_session_create(vc.SessionParams(Op.SIGN, Alg.RSA_PKCS1_SHA384, b"DER"))
    assert struct.unpack_from("<IIIII", rsa, 16) == (1, 2, 3, 1, 7)  # RSA PRIVATE len PKCS1 SHA384
    ec = vc.encode_session_create(vc.SessionParams(Op.SIGN, Alg.ECDSA_SECP384R1_SHA384, b"DER"))
    assert struct.unpack_from("<II", ec, 0)[0] == (4 << 8) | 4           # AKCIPHER_CREATE_SESSION
    assert struct.unpack_from("<IIIII", ec, 16) == (3, 2, 3, 4, 0)   # ECDSA, curve P-384


def test_data_request_layout():
    req = vc.data_request_for(Op.AEAD_OPEN, 0x1122334455, src_len=116, dst_len=100, iv_len=12,
                              aad_len=5)
    wire = vc.encode_data_request(req)
    assert len(wire) == 72
    assert struct.unpack_from("<IIQII", wire, 0) == (0x301, 0, 0x1122334455, 0, 0)
    assert struct.unpack_from("<IIIIII", wire, 24) == (12, 5, 116, 100, 16, 0)
    assert wire[48:] == bytes(24)
    assert vc.decode_data_request(wire) == req
    sign = vc.encode_data_request(vc.data_request_for(Op.SIGN, 7, src_len=32, dst_len=72))
    assert struct.unpack_from("<I", sign)[0] == 0x402 and struct.unpack_from("<II", sign, 24) == (32, 72)
    out = bytearray(b"\xaa" * 80)
    vc.encode_data_request(req, memoryview(out)[:72])
    assert bytes(out[:72]) == wire and out[72:] == b"\xaa" * 8


@pytest.mark.parametrize("mutate, status", [
    (lambda b: b[:40], vc.VIRTIO_CRYPTO_ERR),                              # short
    (lambda b: struct.pack("<I", 0x777) + b[4:], vc.VIRTIO_CRYPTO_NOTSUPP),   # opcode
    (lambda b: b[:20] + struct.pack("<I", 99) + b[24:], vc.VIRTIO_CRYPTO_ERR),  # key_len mismatch
    (lambda b: b[:24] + struct.pack("<I", 8) + b[28:], vc.VIRTIO_CRYPTO_NOTSUPP),  # tag_len
    (lambda b: b[:32] + struct.pack("<I", 3) + b[36:], vc.VIRTIO_CRYPTO_ERR),   # direction
])
def test_session_create_rejects(mutate, status):
    good = vc.encode_session_create(vc.SessionParams(Op.AEAD_SEAL, Alg.AES_128_GCM, b"k" * 16))
    with pytest.raises(vc.WireError) as ei:
        vc.decode_session_create(mutate(good))
    assert ei.value.status == status


def test_qemu_72_session_form():
    raw = session_msg.QEMU72.pack(0, 3, 16, 0, 0, 0, 0, 1, 1, 0, 0, 0, 0, b"k" * 16, b"")
    req = session_msg.decode_create(raw)
    assert isinstance(req, session_msg.QemuSymSession) and req.cipher_alg == 3
    reply = session_msg.encode_create_reply(req, None, vc.VIRTIO_CRYPTO_NOTSUPP)
    assert len(reply) == 632 and struct.unpack_from("<q", reply)[0] < 0
    ok = session_msg.encode_create_reply(vc.SessionParams(Op.ECDH, Alg.X25519), 42, 0)
    assert session_msg.decode_create_reply(ok) == (42, 0)


def test_vhost_user_framing():
    msg = vu.encode(vu.Request.SET_VRING_NUM, vu.vring_state(1, 256))
    assert msg == struct.pack("<III", 8, 1, 8) + struct.pack("<II", 1, 256)
    assert vu.decode_header(msg[:12]) == (8, 1, 8)
    with pytest.raises(vu.VhostUserError):
        vu.decode_header(struct.pack("<III", 1, 2, 0))
    with pytest.raises(vu.VhostUserError):
        vu.decode_header(struct.pack("<III", 1, 1, vu.MAX_PAYLOAD_BYTES + 1))
    regions = [vu.MemRegion(1 << 36, 8192, 1 << 36, 0), vu.MemRegion(2 << 36, 4096, 5, 4096)]
    table = vu.mem_table(regions)
    assert len(table) == 8 + 32 * 2
    assert vu.parse_mem_table(table) == regions
    assert vu.parse_mem_table(table + bytes(32 * 6)) == regions   # QEMU's full 8-slot array
    assert vu.parse_mem_reg(vu.mem_reg(regions[1])) == regions[1]
    assert len(vu.mem_reg(regions[1])) == 40
    addr = vu.VringAddr(0, 0, 0x1000, 0x3000, 0x2000)
    assert vu.VringAddr.decode(addr.encode()) == addr and len(addr.encode()) == 40
    assert vu.REPLY_FLAGS == 0x5
    assert (vu.Request.CREATE_CRYPTO_SESSION, vu.Request.CLOSE_CRYPTO_SESSION) == (26, 27)
    assert (vu.Request.ADD_MEM_REG, vu.ProtocolFeature.CRYPTO_SESSION) == (37, 7)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_any_bytes_decode_or_typed_error(data):
    for decode in (vc.decode_session_create, vc.decode_data_request, session_msg.decode_create):
        try:
            decode(data)
        except vc.WireError:
            pass
    for decode in (vu.parse_u64, vu.parse_vring_state, vu.VringAddr.decode, vu.parse_mem_table,
                   vu.parse_mem_reg):
        try:
            decode(data)
        except vu.VhostUserError:
            pass


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(list(_params())), st.integers(0, 200), st.binary(min_size=1, max_size=8))
def test_mutated_session_create_decodes_or_errors(params, pos, junk):
    wire = bytearray(vc.encode_session_create(params))
    pos %= len(wire)
    wire[pos:pos + len(junk)] = junk
    try:
        out = vc.decode_session_create(bytes(wire))
    except vc.WireError:
        return
    assert isinstance(out, vc.SessionParams)


def test_driver_writes_the_documented_header():
    """The driver packs headers in place with its own struct: it must match the
    wire codec byte for byte (AEAD then akcipher in the same slot: no stale bytes)."""
    from vcrypto.driver._driver import SLOT_BYTES, DataOp, Queue, RegionHandle
    from vcrypto.shm.region import Region
    from vcrypto.shm.virtqueue import SplitVirtqueue, vring_layout

    lay = vring_layout(8)
    region = Region.create("hdr", lay.total + 8 * SLOT_BYTES)
    b = region.buf
    q = Queue(0, SplitVirtqueue(8, b[lay.desc:lay.avail], b[lay.avail:lay.used],
                                b[lay.used:lay.total], event_idx=False),
              b[lay.total:lay.total + 8 * SLOT_BYTES], 1 << 36, True)
    h = RegionHandle(region, 1 << 36)
    aead = DataOp(7, Op.AEAD_OPEN, src=h.buf(0, 116), dst=h.buf(200, 100), iv=h.buf(400, 12),
                  aad=h.buf(500, 5))
    q._write_chain(0, aead)
    want = vc.encode_data_request(vc.data_request_for(Op.AEAD_OPEN, 7, src_len=116, dst_len=100,
                                                      iv_len=12, aad_len=5))
    assert bytes(b[lay.total:lay.total + 72]) == want
    sign = DataOp(9, Op.SIGN, src=h.buf(0, 32), dst=h.buf(200, 72))
    q._write_chain(0, sign)
    want = vc.encode_data_request(vc.data_request_for(Op.SIGN, 9, src_len=32, dst_len=72))
    assert bytes(b[lay.total:lay.total + 72]) == want
    q.vq.release()
    del b
