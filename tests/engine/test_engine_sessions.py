"""Session cache and refcounted destruction, against a real host."""
from __future__ import annotations

import gc
import os

import pytest
import trio
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

import engine_daemons
import tls_support
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from vcproxy.tls import BadRecordMac
from vcrypto.engine import SessionMeta, SlotStatus
from vcrypto.engine.frontend import Frontend
from vcrypto.ops import Alg, Op
from vcproxy.vcrypto_provider import VcryptoProvider


def _der():
    k = ec.generate_private_key(ec.SECP256R1())
    return k.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                           serialization.NoEncryption())


async def _wait_sessions_gone(fe, timeout_s=10):
    with trio.fail_after(timeout_s):
        while True:
            st = await fe.backend_stats()
            if not st["sessions"] and st["device_stats"]["device"]["sessions"] == 0:
                return st
            await trio.sleep(0.05)


async def test_second_frontend_hits_the_shared_cache(host_and_backend):
    _h, backend = host_and_backend
    a = Frontend(backend.socket_path, linger_s=0.1)
    b = Frontend(backend.socket_path, linger_s=0.1)
    await a.start()
    await b.start()
    meta = SessionMeta(Op.SIGN, Alg.ECDSA_SECP256R1_SHA256, _der())
    ha = await a.open_session(meta)
    [(st, _)] = await a.run(ha, [(b"m", b"", b"")])
    assert st is SlotStatus.OK and a.stats.backend_opens == 1
    hb = await b.open_session(meta)
    [(st, _)] = await b.run(hb, [(b"m", b"", b"")])
    assert st is SlotStatus.OK
    assert b.stats.shared_hits == 1 and b.stats.backend_opens == 0   # MD5 hit, confirmed
    stats = await a.backend_stats()
    assert list(stats["sessions"].values()) == [2]                  # one session, two refs
    assert stats["cache_entries"] == 1 and stats["device_stats"]["device"]["sessions"] == 1
    await a.close_session(ha)
    await b.close_session(hb)
    st = await _wait_sessions_gone(a)
    assert st["cache_entries"] == 0 and st["sessions_destroyed"] == 1
    await a.aclose()
    await b.aclose()


async def test_second_connection_reuses_signing_session_and_all_refs_drop(host_and_backend):
    _h, backend = host_and_backend
    provider = VcryptoProvider(backend.socket_path, linger_s=0.3)
    cert, key = tls_support.self_signed()
    cfg = tls_support.config(cert, key)
    with trio.fail_after(60):
        async with tls_support.echo_server(cfg, provider) as (port, errors):
            for i in range(3):
                got = await trio.to_thread.run_sync(
                    tls_support.client_exchange, port, cert, [b"hi", b"BIG 40000"])
                assert got == [b"echo:hi", b"x" * 40000]
        assert errors == []
        fe = provider.frontend
        st = await fe.backend_stats()
        by_op = st["device_stats"]["device"]["by_op"]
        assert sum(v for k, v in by_op.items() if k.startswith("sign/")) == 3
        # The first connection created the signing and ECDH sessions; the
        # next two reused them (cache hits), not new host sessions.
        assert fe.stats.local_hits + fe.stats.shared_hits >= 4
        gc.collect()
        st = await _wait_sessions_gone(fe)
        assert st["inflight"] == 0
    await provider.aclose()


async def test_aead_session_close_cut_off_still_releases_every_host_session(tmp_path):
    """A stream bounds its close: an AEAD session whose aclose is cancelled
    half-way must still give all its host sessions back (the reaper does).
    Session mode for traffic keys (``--aead-sessions``: a host without
    stateless AEAD); by default they have no host session at all (below)."""
    h = engine_daemons.host(tmp_path).start()
    backend = engine_daemons.backend(tmp_path, host_socket=h.socket_path,
                                     extra=["--aead-sessions"])
    try:
        backend.start()
        provider = VcryptoProvider(backend.socket_path, linger_s=0.1)
        aead = provider.aead("aes-128-gcm", bytes(16))
        nonce = bytes(12)
        [ct] = await aead.seal_many([(nonce, b"", b"x" * 4096)])   # opens the seal session
        [pt] = await aead.open_many([(nonce, b"", ct)])            # and the open session
        assert pt == b"x" * 4096
        fe = provider.frontend
        st = await fe.backend_stats()
        assert st["device_stats"]["device"]["sessions"] == 2 and st["stateless_requests"] == 0
        with trio.CancelScope() as scope:
            scope.cancel()                      # the close is cut off at its first await
            await aead.aclose()
        st = await _wait_sessions_gone(fe)
        assert st["cache_entries"] == 0
        await provider.aclose()
    finally:
        backend.stop()
        h.stop()


async def test_traffic_keys_travel_stateless_with_no_session_and_no_control_message(
        host_and_backend):
    """A connection's AEAD traffic keys cost no session (virtio-crypto
    stateless mode): the key is in each request's slot of this worker's own
    region, the host gets it with the request. No control message, no
    backend or host session, no shared-cache entry; the records are computed
    at the host and are right both ways."""
    _h, backend = host_and_backend
    provider = VcryptoProvider(backend.socket_path, linger_s=0.1)
    fe = provider.frontend
    assert await fe.start()
    sent = []
    control_request, control_send = fe.control_request, fe.control_send

    async def counting_request(att, msg):
        sent.append(msg["t"])
        return await control_request(att, msg)

    async def counting_send(att, msg):
        sent.append(msg["t"])
        await control_send(att, msg)

    fe.control_request, fe.control_send = counting_request, counting_send
    key = os.urandom(32)
    aead = provider.aead("chacha20-poly1305", key)
    nonce = os.urandom(12)
    records = [os.urandom(4096 + i) for i in range(20)]   # two opdone groups
    cts = await aead.seal_many([(nonce, b"hdr", r) for r in records])
    assert cts == [ChaCha20Poly1305(key).encrypt(nonce, r, b"hdr") for r in records]
    assert await aead.open_many([(nonce, b"hdr", c) for c in cts]) == records
    with pytest.raises(BadRecordMac):
        await aead.open_many([(nonce, b"other aad", cts[0])])
    await aead.aclose()
    assert sent == [] and fe.stats.backend_opens == 0     # no open, acquire or release
    assert fe.stats.fallback_requests == 0 and fe.stats.redone_requests == 0
    fe.control_request, fe.control_send = control_request, control_send
    st = await fe.backend_stats()
    assert st["stateless_requests"] == 41 and st["sessions"] == {}
    assert st["cache_entries"] == 0 and st["device_stats"]["device"]["sessions"] == 0
    by_op = st["device_stats"]["device"]["by_op"]
    assert sum(v for k, v in by_op.items() if k.startswith("aead_")) == 41   # at the host
    assert key not in bytes(fe.attachment.shared.mv)
    await provider.aclose()


async def test_shared_region_is_read_only_to_frontends_and_holds_no_keys(local_backend):
    """Least privilege (DESIGN §5): a frontend maps the backend's region
    read-only (the memfd refuses a writable mapping), only reusable sessions
    are cached, and no key bytes appear in the region."""
    fe = Frontend(local_backend.socket_path, linger_s=5)
    assert await fe.start()
    der = _der()
    aead_key = b"K" * 16
    sign = await fe.open_session(SessionMeta(Op.SIGN, Alg.ECDSA_SECP256R1_SHA256, der))
    seal = await fe.open_session(SessionMeta(Op.AEAD_SEAL, Alg.AES_128_GCM, aead_key))
    for h, item in ((sign, (b"m", b"", b"")), (seal, (b"p" * 64, b"n" * 12, b""))):
        [(st, _)] = await fe.run(h, [item])
        assert st is SlotStatus.OK
    stats = await fe.backend_stats()
    # the signing session only: the AEAD key travels stateless (no session, not cached)
    assert len(stats["sessions"]) == 1 and stats["cache_entries"] == 1
    assert stats["stateless_requests"] == 1
    att = fe.attachment
    shm = att.shared.mv
    assert shm.readonly
    assert der[-32:] not in bytes(shm) and aead_key * 2 not in bytes(shm)
    await fe.close_session(sign)
    await fe.close_session(seal)
    await fe.aclose()


def test_backend_region_refuses_writable_mappings():
    from vcrypto.shm.region import Region, RegionError

    owner = Region.create("ro-test", 4096, peers_read_only=True)
    try:
        owner.write(0, b"owner writes")               # the owner's own mapping stays writable
        with pytest.raises(RegionError):
            Region.from_fd("peer", os.dup(owner.fd))  # a writable mapping by a peer: refused
        peer = Region.from_fd("peer", os.dup(owner.fd), writable=False)
        assert peer.read(0, 12) == b"owner writes"
        with pytest.raises(TypeError):
            peer.buf[0:1] = b"x"
        peer.close()
    finally:
        owner.close()
