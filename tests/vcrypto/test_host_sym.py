"""AES-CBC, HMAC and the AES-CBC + HMAC chain through the whole stack: our
own driver attached to a real vcrypto-host subprocess, results checked
against `cryptography` computed here (never against the host's own code)."""
from __future__ import annotations

import os

import pytest
import trio
from cryptography.hazmat.primitives import hashes, hmac
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from vcrypto.driver import Driver, Item, PayloadPool, SessionCreateError, SessionParams
from vcrypto.host.queue import PIECE_BYTES
from vcrypto.ops import CHAIN_PARTS, CIPHER_KEY_BYTES, Alg, Op
from vcrypto.wire import virtio_crypto as vc

CBC = [Alg.AES_128_CBC, Alg.AES_192_CBC, Alg.AES_256_CBC]
HASH = {Alg.HMAC_SHA1: hashes.SHA1, Alg.HMAC_SHA256: hashes.SHA256}


def cbc(key, iv, data, encrypt=True):
    c = Cipher(algorithms.AES(key), modes.CBC(iv))
    ctx = c.encryptor() if encrypt else c.decryptor()
    return ctx.update(data) + ctx.finalize()


def mac(alg, key, *parts):
    h = hmac.HMAC(key, HASH[alg]())
    for p in parts:
        h.update(p)
    return h.finalize()


async def test_cipher_mac_and_chain_against_cryptography(start_host):
    host = start_host({"limits": {"max_request_bytes": 48 * 1024 + 64}})
    async with await Driver.attach(host.socket_path) as drv:
        pool = await PayloadPool.create(drv, slot_bytes=100 * 1024, slots=32)
        items, want = [], []
        for alg in CBC:
            key = os.urandom(CIPHER_KEY_BYTES[alg])
            enc = await drv.create_session(SessionParams(Op.CIPHER_ENCRYPT, alg, key=key))
            dec = await drv.create_session(SessionParams(Op.CIPHER_DECRYPT, alg, key=key))
            # 48 KiB: three pieces split by the host, CBC state carried
            for size in (16, 4096, PIECE_BYTES, PIECE_BYTES + 16, 48 * 1024):
                iv, msg = os.urandom(16), os.urandom(size)
                ct = cbc(key, iv, msg)
                items += [Item(enc, Op.CIPHER_ENCRYPT, alg, msg, iv),
                          Item(dec, Op.CIPHER_DECRYPT, alg, ct, iv)]
                want += [ct, msg]
            # not whole blocks / a 12-byte iv: the request's own error
            items += [Item(enc, Op.CIPHER_ENCRYPT, alg, b"x" * 17, os.urandom(16)),
                      Item(enc, Op.CIPHER_ENCRYPT, alg, b"x" * 16, os.urandom(12))]
            want += [vc.VIRTIO_CRYPTO_ERR, vc.VIRTIO_CRYPTO_ERR]
        for alg in HASH:
            key = os.urandom(64)
            sid = await drv.create_session(SessionParams(Op.MAC, alg, key=key))
            for size in (0, 1, 1000):
                msg = os.urandom(size)
                items.append(Item(sid, Op.MAC, alg, msg))
                want.append(mac(alg, key, msg))
        for alg, (calg, malg) in CHAIN_PARTS.items():
            ckey, mkey = os.urandom(CIPHER_KEY_BYTES[calg]), os.urandom(20)
            seal = await drv.create_session(SessionParams(Op.CHAIN_SEAL, alg, key=ckey + mkey))
            open_ = await drv.create_session(SessionParams(Op.CHAIN_OPEN, alg, key=ckey + mkey))
            for size in (16, 1024, 32 * 1024):
                iv, aad, msg = os.urandom(16), os.urandom(13), os.urandom(size)
                ct = cbc(ckey, iv, msg)
                sealed = ct + mac(malg, mkey, aad, ct)
                items += [Item(seal, Op.CHAIN_SEAL, alg, msg, iv, aad),
                          Item(open_, Op.CHAIN_OPEN, alg, sealed, iv, aad)]
                want += [sealed, msg]
            bad = bytearray(sealed)
            bad[-1] ^= 1       # a flipped MAC byte: verify-then-decrypt refuses it
            items.append(Item(open_, Op.CHAIN_OPEN, alg, bytes(bad), iv, aad))
            want.append(vc.VIRTIO_CRYPTO_BADMSG)
            bad = bytearray(sealed)
            bad[0] ^= 1        # a flipped ciphertext byte: the MAC catches it too
            items.append(Item(open_, Op.CHAIN_OPEN, alg, bytes(bad), iv, aad))
            want.append(vc.VIRTIO_CRYPTO_BADMSG)
        with trio.fail_after(60):
            results = await pool.run(items)
        for i, (item, w, res) in enumerate(zip(items, want, results)):
            where = f"#{i} {item.op.value}/{item.alg.value} ({len(item.src)} B)"
            if isinstance(w, int):
                assert res.status == w, where
            else:
                assert res.ok, f"{where}: status {res.status}"
                assert res.data == w, where
        stats = (await drv.stats())["device"]
        # 16 KiB + 16 -> 2 pieces, 48 KiB -> 3; per alg, encrypt and decrypt
        assert stats["split_pieces"] == len(CBC) * 2 * (2 + 3)
        assert stats["by_op"]["cipher_encrypt/aes-256-cbc/ok"] == 5


@pytest.mark.parametrize("params, status", [
    (SessionParams(Op.CIPHER_ENCRYPT, Alg.AES_128_CBC, key=b"k" * 24), vc.VIRTIO_CRYPTO_KEY_REJECTED),
    (SessionParams(Op.MAC, Alg.HMAC_SHA1, key=b"k" * 513), vc.VIRTIO_CRYPTO_KEY_REJECTED),
    (SessionParams(Op.CHAIN_SEAL, Alg.AES_128_CBC_HMAC_SHA1, key=b"k" * 16),
     vc.VIRTIO_CRYPTO_KEY_REJECTED),
])
async def test_bad_sym_sessions_are_refused(start_host, params, status):
    host = start_host()
    async with await Driver.attach(host.socket_path) as drv:
        # refused by the driver's encoder (the wire cannot say it) or the host
        with pytest.raises((SessionCreateError, vc.WireError)) as ei:
            await drv.create_session(params)
        assert ei.value.status == status
