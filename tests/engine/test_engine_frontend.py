"""Frontend <-> engine-backend over the real shared region and unix socket."""
from __future__ import annotations

import os
import random

import trio
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, x25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

import engine_daemons
from vcrypto.engine import ecdh_split
from vcrypto.engine import SessionMeta, SlotStatus
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



async def test_bad_tag_and_ecdh_and_sign(local_backend):
    fe = Frontend(local_backend.socket_path)
    await fe.start()
    key = os.urandom(32)
    ct = ChaCha20Poly1305(key).encrypt(b"n" * 12, b"secret", b"a")
    h = await fe.open_session(SessionMeta(Op.AEAD_OPEN, Alg.CHACHA20_POLY1305, key))
    bad = bytes([ct[0] ^ 1]) + ct[1:]
    res = await fe.run(h, [(ct, b"n" * 12, b"a"), (bad, b"n" * 12, b"a")])
    assert res == [(SlotStatus.OK, b"secret"), (SlotStatus.BAD_MESSAGE, b"")]

    peer = x25519.X25519PrivateKey.generate()
    hx = await fe.open_session(SessionMeta(Op.ECDH, Alg.X25519))
    [(status, out)] = await fe.run(hx, [(peer.public_key().public_bytes_raw(), b"", b"")])
    own, shared = ecdh_split(Alg.X25519, out)
    assert status is SlotStatus.OK
    assert peer.exchange(x25519.X25519PublicKey.from_public_bytes(own)) == shared
    [(status, _)] = await fe.run(hx, [(b"\x00" * 31, b"", b"")])
    assert status is SlotStatus.INVALID

    sk = ec.generate_private_key(ec.SECP256R1())
    der = sk.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                           serialization.NoEncryption())
    hs = await fe.open_session(SessionMeta(Op.SIGN, Alg.ECDSA_SECP256R1_SHA256, der))
    [(status, sig)] = await fe.run(hs, [(b"to be signed", b"", b"")])
    assert status is SlotStatus.OK
    sk.public_key().verify(sig, b"to be signed", ec.ECDSA(hashes.SHA256()))
    assert fe.stats.fallback_requests == 0
    await fe.aclose()


async def test_pipeline_16_per_opdone_one_suspension_each(local_backend):
    fe = Frontend(local_backend.socket_path)
    await fe.start()
    key = os.urandom(16)
    h = await fe.open_session(SessionMeta(Op.AEAD_SEAL, Alg.AES_128_GCM, key))
    items = [(os.urandom(16384), i.to_bytes(12, "big"), b"") for i in range(16)]  # 256 KiB
    res = await fe.run(h, items)
    assert [r[1] for r in res] == [AESGCM(key).encrypt(iv, s, a) for s, iv, a in items]
    assert fe.stats.opdones == 1 and fe.stats.opdone_waits <= 1
    items = items * 2 + items[:3]  # 35 items: 3 opdones, at most one suspension each
    before = (fe.stats.opdones, fe.stats.opdone_waits)
    res = await fe.run(h, items)
    assert [r[1] for r in res] == [AESGCM(key).encrypt(iv, s, a) for s, iv, a in items]
    assert fe.stats.opdones - before[0] == 3
    assert fe.stats.opdone_waits - before[1] <= 3
    await fe.aclose()


async def test_many_concurrent_tasks_each_get_their_own_result(local_backend):
    """Property: with many tasks submitting at once, every request gets exactly
    its own correct result (random sizes, sessions and batch lengths)."""
    rng = random.Random(1234)
    fe = Frontend(local_backend.socket_path)
    await fe.start()
    keys = [os.urandom(16) for _ in range(4)]
    sessions = [await fe.open_session(SessionMeta(Op.AEAD_SEAL, Alg.AES_128_GCM, k)) for k in keys]
    failures = []

    async def worker(seed):
        r = random.Random(seed)
        for _ in range(6):
            s = r.randrange(4)
            items = [(r.randbytes(r.choice([0, 1, 63, 700, 5000])), r.randbytes(12), r.randbytes(5))
                     for _ in range(r.randint(1, 40))]
            res = await fe.run(sessions[s], items)
            want = [AESGCM(keys[s]).encrypt(iv, src, aad) for src, iv, aad in items]
            if [x[1] for x in res] != want:
                failures.append(seed)

    with trio.fail_after(60):
        async with trio.open_nursery() as n:
            for t in range(40):
                n.start_soon(worker, rng.random())
    assert failures == []
    assert fe.stats.fallback_requests == 0
    await fe.aclose()


async def test_slot_pool_exhaustion_waits_instead_of_failing(tmp_path):
    d = engine_daemons.backend(tmp_path, extra=["--slots", "8"]).start()
    try:
        fe = Frontend(d.socket_path)
        await fe.start()
        key = os.urandom(16)
        h = await fe.open_session(SessionMeta(Op.AEAD_SEAL, Alg.AES_128_GCM, key))
        items = [(os.urandom(100), os.urandom(12), b"") for _ in range(50)]
        out = []
        with trio.fail_after(20):
            async with trio.open_nursery() as n:
                for k in range(5):
                    n.start_soon(lambda k=k: _collect(fe, h, items[k * 10:(k + 1) * 10], out))
        assert sorted(out) == sorted(AESGCM(key).encrypt(iv, s, a) for s, iv, a in items)
        await fe.aclose()
    finally:
        d.stop()


async def _collect(fe, h, items, out):
    out.extend(r[1] for r in await fe.run(h, items))


async def test_concurrent_submissions_share_one_doorbell_and_one_device_batch(local_backend):
    """Handshake ops of concurrent connections coalesce: requests submitted
    in one trio scheduling batch reach a sleeping backend with one doorbell
    (the kicker rings it after all of them) and leave as one device batch."""
    fe = Frontend(local_backend.socket_path)
    assert await fe.start()
    h = await fe.open_session(SessionMeta(Op.ECDH, Alg.X25519))
    peer = x25519.X25519PrivateKey.generate().public_key().public_bytes_raw()
    [(status, _)] = await fe.run(h, [(peer, b"", b"")])   # the session is known now
    assert status is SlotStatus.OK
    n, rounds = 16, 5
    for _ in range(rounds):
        with trio.fail_after(10):
            while not fe.attachment.shared.backend_sleeping:
                await trio.sleep(0.005)
        before = await fe.backend_stats()
        doorbells = fe.stats.doorbells
        go = trio.Event()
        results = []

        async def one():
            await go.wait()
            results.extend(await fe.run(h, [(peer, b"", b"")]))

        async with trio.open_nursery() as nursery:
            for _ in range(n):
                nursery.start_soon(one)
            await trio.sleep(0.01)   # all parked on `go`
            go.set()
        after = await fe.backend_stats()
        assert [s for s, _ in results] == [SlotStatus.OK] * n
        assert fe.stats.doorbells - doorbells == 1
        assert after["batches"] - before["batches"] == 1
        hs = after["family_requests"]["handshake"] - before["family_requests"]["handshake"]
        assert hs == n
    await fe.close_session(h)
    await fe.aclose()
