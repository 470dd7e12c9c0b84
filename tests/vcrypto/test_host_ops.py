"""A real driver attached to a real vcrypto-host subprocess runs every op x
algorithm; results are checked against `cryptography` computed here."""
from __future__ import annotations

import os

import pytest
import trio
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

from host_refcheck import check_ecdh_result, check_signature, der_of, ecdh_peer, key_for
from vcrypto.driver import Driver, Item, PayloadPool, SessionCreateError, SessionParams
from vcrypto.driver._driver import MAX_CHAIN
from vcrypto.ops import AEAD_KEY_BYTES, ALL_CAPABILITIES, Alg, Op
from vcrypto.wire import virtio_crypto as vc

AEAD = [Alg.AES_128_GCM, Alg.AES_256_GCM, Alg.CHACHA20_POLY1305]
SIGN = sorted((a for o, a in ALL_CAPABILITIES if o is Op.SIGN), key=lambda a: a.value)
ECDH = [Alg.X25519, Alg.SECP256R1, Alg.SECP384R1]


def _aead(alg, key):
    return ChaCha20Poly1305(key) if alg is Alg.CHACHA20_POLY1305 else AESGCM(key)


async def test_every_op_and_algorithm_through_the_host(start_host, tmp_path):
    keys = tmp_path / "keys"
    keys.mkdir()
    (keys / "site.pem").write_bytes(key_for(Alg.ED25519).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    host = start_host({"keys_dir": str(keys)})
    async with await Driver.attach(host.socket_path) as drv:
        pool = await PayloadPool.create(drv)
        items, checks = [], []

        for alg in AEAD:
            key = os.urandom(AEAD_KEY_BYTES[alg])
            seal = await drv.create_session(SessionParams(Op.AEAD_SEAL, alg, key=key))
            open_ = await drv.create_session(SessionParams(Op.AEAD_OPEN, alg, key=key))
            for size in (0, 1, 1000, 16384):
                iv, aad, msg = os.urandom(12), os.urandom(13), os.urandom(size)
                ct = _aead(alg, key).encrypt(iv, msg, aad)
                items.append(Item(seal, Op.AEAD_SEAL, alg, msg, iv, aad))
                checks.append(("eq", ct))
                items.append(Item(open_, Op.AEAD_OPEN, alg, ct, iv, aad))
                checks.append(("eq", msg))
            # tampered ciphertext -> BADMSG
            iv = os.urandom(12)
            bad = bytearray(_aead(alg, key).encrypt(iv, b"record", None))
            bad[0] ^= 1
            items.append(Item(open_, Op.AEAD_OPEN, alg, bytes(bad), iv))
            checks.append(("status", vc.VIRTIO_CRYPTO_BADMSG))

        for alg in ECDH:
            sid = await drv.create_session(SessionParams(Op.ECDH, alg))
            priv, pub = ecdh_peer(alg)
            items.append(Item(sid, Op.ECDH, alg, pub))
            checks.append(("ecdh", alg, priv))
            items.append(Item(sid, Op.ECDH, alg, b"\x04" + b"\x00" * 10))
            # the peer key is rejected: KEY_REJECTED (the default bad_input_status)
            checks.append(("status", vc.VIRTIO_CRYPTO_KEY_REJECTED))

        for alg in SIGN:
            sid = await drv.create_session(SessionParams(Op.SIGN, alg, key=der_of(alg)))
            msg = os.urandom(100)
            items.append(Item(sid, Op.SIGN, alg, msg))
            checks.append(("sig", alg, msg))

        # keyless: the key lives in the host's keys_dir
        sid = await drv.create_session(SessionParams(Op.SIGN, Alg.ED25519, key_ref="site"))
        items.append(Item(sid, Op.SIGN, Alg.ED25519, b"keyless"))
        checks.append(("sig", Alg.ED25519, b"keyless"))

        with trio.fail_after(30):
            results = await pool.run(items)
        for item, check, res in zip(items, checks, results):
            where = f"{item.op.value}/{item.alg.value} ({len(item.src)} B)"
            if check[0] == "status":
                assert res.status == check[1], where
                continue
            assert res.ok, f"{where}: status {res.status}"
            if check[0] == "eq":
                assert res.data == check[1], where
            elif check[0] == "ecdh":
                check_ecdh_result(check[1], check[2], res.data)
            else:
                check_signature(check[1], check[2], res.data)
        stats = await drv.stats()
        assert stats["device"]["requests"] == len(items)
        caps = await drv.capabilities()
        assert len(caps["capabilities"]) == len(ALL_CAPABILITIES)


async def test_session_create_is_validated(start_host):
    host = start_host({"limits": {"max_sessions_per_device": 3}})
    async with await Driver.attach(host.socket_path) as drv:
        cases = [
            (SessionParams(Op.SIGN, Alg.ED25519, key=b"not a key"), vc.VIRTIO_CRYPTO_KEY_REJECTED),
            (SessionParams(Op.SIGN, Alg.ECDSA_SECP256R1_SHA256, key=der_of(Alg.ED25519)),
             vc.VIRTIO_CRYPTO_KEY_REJECTED),
            (SessionParams(Op.SIGN, Alg.ED25519, key_ref="nope"), vc.VIRTIO_CRYPTO_KEY_REJECTED),
            (SessionParams(Op.AEAD_SEAL, Alg.CHACHA20_POLY1305, key=b"k" * 16),
             vc.VIRTIO_CRYPTO_KEY_REJECTED),
        ]
        for params, status in cases:
            with pytest.raises(SessionCreateError) as ei:
                await drv.create_session(params)
            assert ei.value.status == status, params
        ids = [await drv.create_session(SessionParams(Op.ECDH, Alg.X25519)) for _ in range(3)]
        assert len(set(ids)) == 3
        with pytest.raises(SessionCreateError) as ei:
            await drv.create_session(SessionParams(Op.ECDH, Alg.X25519))
        assert ei.value.status == vc.VIRTIO_CRYPTO_NOSPC
        # closing frees a slot; a closed id is then unknown to requests
        await drv.close_session(ids[0])
        await drv.create_session(SessionParams(Op.ECDH, Alg.X25519))
        pool = await PayloadPool.create(drv)
        _, pub = ecdh_peer(Alg.X25519)
        with trio.fail_after(30):
            [res] = await pool.run([Item(ids[0], Op.ECDH, Alg.X25519, pub)])
        assert res.status == vc.VIRTIO_CRYPTO_INVSESS
        assert (await drv.stats())["device"]["sessions"] == 3


async def test_two_data_queues_and_direct_descriptors(start_host):
    """Two data virtqueues served at once, one device without INDIRECT and
    without EVENT_IDX (flags-based notification suppression)."""
    host = start_host()
    async with await Driver.attach(host.socket_path, queues=2, queue_size=64,
                                   indirect=False, event_idx=False) as drv:
        key = os.urandom(32)
        sid = await drv.create_session(SessionParams(Op.AEAD_SEAL, Alg.CHACHA20_POLY1305, key=key))
        pools = [await PayloadPool.create(drv, q) for q in range(2)]
        # a direct chain reserves MAX_CHAIN descriptors (7: a stateless request's key too)
        assert drv.queues[0].capacity == 64 // MAX_CHAIN
        items = [[Item(sid, Op.AEAD_SEAL, Alg.CHACHA20_POLY1305, os.urandom(100 + i), os.urandom(12))
                  for i in range(40)] for _ in range(2)]
        results: list = [None, None]

        async def run(q):
            results[q] = await pools[q].run(items[q])

        async with trio.open_nursery() as nursery:
            for q in range(2):
                nursery.start_soon(run, q)
        for q in range(2):
            for item, res in zip(items[q], results[q]):
                assert res.ok and res.data == ChaCha20Poly1305(key).encrypt(item.iv, item.src, None)
