"""Frontend <-> engine-backend over the real shared region and unix socket."""
from __future__ import annotations

import os

import trio
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from vcrypto.engine._layout import SessionMeta, SlotStatus
from vcrypto.engine.frontend import Frontend
from vcrypto.ops import Alg, Op


async def test_seal_roundtrip_through_backend(local_backend):
    fe = Frontend(local_backend.socket_path)
    assert await fe.start()
    key = os.urandom(16)
    h = await fe.open_session(SessionMeta(Op.AEAD_SEAL, Alg.AES_128_GCM, key))
    items = [(os.urandom(n), os.urandom(12), b"hdr%d" % n) for n in (0, 1, 100, 5000, 16384)]
    res = await fe.run(h, items)
    for (src, iv, aad), (status, out) in zip(items, res):
        assert status is SlotStatus.OK
        assert out == AESGCM(key).encrypt(iv, src, aad)
    assert fe.stats.submitted == 5 and fe.stats.fallback_requests == 0
    assert fe.stats.opdones == 1
    await fe.close_session(h)
    await fe.aclose()
