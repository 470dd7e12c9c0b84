import os

import trio

from vcrypto.driver import Driver, Item, PayloadPool, SessionParams
from vcrypto.ops import Alg, Op
from cryptography.hazmat.primitives.ciphers.aead import AESGCM


async def test_smoke(start_host):
    host = start_host()
    drv = await Driver.attach(host.socket_path)
    key = os.urandom(16)
    sid = await drv.create_session(SessionParams(Op.AEAD_SEAL, Alg.AES_128_GCM, key=key))
    pool = await PayloadPool.create(drv)
    iv = os.urandom(12)
    with trio.fail_after(30):
        res = await pool.run([Item(sid, Op.AEAD_SEAL, Alg.AES_128_GCM, b"hello", iv, b"aad")])
    assert res[0].ok, res
    assert res[0].data == AESGCM(key).encrypt(iv, b"hello", b"aad")
    print(await drv.stats())
    await drv.aclose()
