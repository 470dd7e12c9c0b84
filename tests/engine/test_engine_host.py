"""Frontend -> engine-backend -> driver -> real vcrypto-host, checked against
`cryptography` computed here."""
from __future__ import annotations

import os

import trio
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa, x25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

from vcrypto.engine import ecdh_split
from vcrypto.engine import SessionMeta, SlotStatus
from vcrypto.engine.frontend import Frontend
from vcrypto.ops import Alg, Op


def _der(key):
    return key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


async def test_every_op_family_through_the_host(host_and_backend):
    _host, backend = host_and_backend
    fe = Frontend(backend.socket_path)
    assert await fe.start()
    with trio.fail_after(30):
        for alg, cls, n in ((Alg.AES_128_GCM, AESGCM, 16), (Alg.AES_256_GCM, AESGCM, 32),
                            (Alg.CHACHA20_POLY1305, ChaCha20Poly1305, 32)):
            key = os.urandom(n)
            hs = await fe.open_session(SessionMeta(Op.AEAD_SEAL, alg, key))
            items = [(os.urandom(k), os.urandom(12), b"aad") for k in (1, 1000, 16384)]
            res = await fe.run(hs, items)
            assert [r[1] for r in res] == [cls(key).encrypt(iv, s, a) for s, iv, a in items]
            ho = await fe.open_session(SessionMeta(Op.AEAD_OPEN, alg, key))
            cts = [(cls(key).encrypt(iv, s, a), iv, a) for s, iv, a in items]
            bad = (bytes([cts[0][0][0] ^ 1]) + cts[0][0][1:], cts[0][1], cts[0][2])
            res = await fe.run(ho, cts + [bad])
            assert res[:3] == [(SlotStatus.OK, s) for s, _, _ in items]
            assert res[3][0] is SlotStatus.BAD_MESSAGE

        peer = x25519.X25519PrivateKey.generate()
        hx = await fe.open_session(SessionMeta(Op.ECDH, Alg.X25519))
        [(st, out)] = await fe.run(hx, [(peer.public_key().public_bytes_raw(), b"", b"")])
        own, shared = ecdh_split(Alg.X25519, out)
        assert st is SlotStatus.OK
        assert peer.exchange(x25519.X25519PublicKey.from_public_bytes(own)) == shared

        pk = ec.generate_private_key(ec.SECP384R1())
        peer_pub = pk.public_key().public_bytes(serialization.Encoding.X962,
                                                serialization.PublicFormat.UncompressedPoint)
        hp = await fe.open_session(SessionMeta(Op.ECDH, Alg.SECP384R1))
        [(st, out)] = await fe.run(hp, [(peer_pub, b"", b"")])
        own, shared = ecdh_split(Alg.SECP384R1, out)
        assert pk.exchange(ec.ECDH(), ec.EllipticCurvePublicKey.from_encoded_point(
            ec.SECP384R1(), own)) == shared
        # keyed form (TLS 1.2): src = our scalar || peer key; twice under one scalar
        scalar = ec.generate_private_key(ec.SECP384R1()).private_numbers().private_value
        scalar = scalar.to_bytes(48, "big")
        [(st, out1)], [(st2, out2)] = [await fe.run(hp, [(scalar + peer_pub, b"", b"")])
                                       for _ in range(2)]
        own, shared = ecdh_split(Alg.SECP384R1, out1)
        assert out1 == out2 and st is st2 is SlotStatus.OK
        mine = ec.derive_private_key(int.from_bytes(scalar, "big"), ec.SECP384R1())
        assert own == mine.public_key().public_bytes(serialization.Encoding.X962,
                                                     serialization.PublicFormat.UncompressedPoint)
        assert shared == mine.exchange(ec.ECDH(), pk.public_key())

        msg = b"\x20" * 64 + b"TLS 1.3, server CertificateVerify\x00" + os.urandom(32)
        sk = ec.generate_private_key(ec.SECP256R1())
        h1 = await fe.open_session(SessionMeta(Op.SIGN, Alg.ECDSA_SECP256R1_SHA256, _der(sk)))
        [(st, sig)] = await fe.run(h1, [(msg, b"", b"")])
        assert st is SlotStatus.OK
        sk.public_key().verify(sig, msg, ec.ECDSA(hashes.SHA256()))
        rk = rsa.generate_private_key(65537, 2048)
        h2 = await fe.open_session(SessionMeta(Op.SIGN, Alg.RSA_PSS_RSAE_SHA256, _der(rk)))
        [(st, sig)] = await fe.run(h2, [(msg, b"", b"")])
        rk.public_key().verify(sig, msg, padding.PSS(padding.MGF1(hashes.SHA256()), 32),
                               hashes.SHA256())
        h4 = await fe.open_session(SessionMeta(Op.SIGN, Alg.RSA_PKCS1_SHA384, _der(rk)))
        [(st, sig)] = await fe.run(h4, [(msg, b"", b"")])  # TLS 1.2 ServerKeyExchange
        rk.public_key().verify(sig, msg, padding.PKCS1v15(), hashes.SHA384())
        ek = ed25519.Ed25519PrivateKey.generate()
        h3 = await fe.open_session(SessionMeta(Op.SIGN, Alg.ED25519, _der(ek)))
        [(st, sig)] = await fe.run(h3, [(msg, b"", b"")])
        ek.public_key().verify(sig, msg)

    assert fe.stats.fallback_requests == 0
    stats = await fe.backend_stats()
    dev = stats["device_stats"]["device"]
    assert dev["requests"] >= fe.stats.submitted  # the host ran them
    assert stats["device_sessions"] == len(stats["sessions"])
    await fe.aclose()


async def test_off_curve_peer_key_is_the_requests_fault_not_a_device_failure(host_and_backend):
    """The host reports input the crypto rejects as KEY_REJECTED, not ERR: the
    frontend returns INVALID at once, with no in-process redo and no
    fallback (a device failure, ERR, would be redone in-process)."""
    _host, backend = host_and_backend
    fe = Frontend(backend.socket_path)
    await fe.start()
    h = await fe.open_session(SessionMeta(Op.ECDH, Alg.SECP256R1))
    bad_point = b"\x04" + b"\x01" * 64  # right size and form, not on the curve
    [(st, _)] = await fe.run(h, [(bad_point, b"", b"")])
    assert st is SlotStatus.INVALID
    assert fe.stats.redone_requests == 0 and fe.stats.fallback_requests == 0
    await fe.aclose()


async def test_device_queue_full_applies_back_pressure(tmp_path):
    """More requests in flight than the data virtqueue holds: the backend
    keeps the overflow until the host completes some (no loss, no spin)."""
    import engine_daemons

    host = engine_daemons.host(tmp_path).start()
    backend = engine_daemons.backend(tmp_path, host_socket=host.socket_path,
                                     extra=["--queue-size", "16"]).start()
    try:
        fe = Frontend(backend.socket_path)
        await fe.start()
        key = os.urandom(16)
        h = await fe.open_session(SessionMeta(Op.AEAD_SEAL, Alg.AES_128_GCM, key))
        out = {}

        async def worker(k):
            items = [(os.urandom(200), (k * 100 + i).to_bytes(12, "big"), b"") for i in range(40)]
            res = await fe.run(h, items)
            out[k] = [r[1] for r in res] == [AESGCM(key).encrypt(iv, s, a) for s, iv, a in items]

        with trio.fail_after(60):
            async with trio.open_nursery() as n:
                for k in range(8):
                    n.start_soon(worker, k)
        assert out == {k: True for k in range(8)}
        assert fe.stats.fallback_requests == 0 and fe.stats.submitted == 320
        assert (await fe.backend_stats())["device_full"] > 0  # the path was exercised
        await fe.aclose()
    finally:
        backend.stop()
        host.stop()
