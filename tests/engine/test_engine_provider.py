"""VcryptoProvider: real TLS handshakes and transfers through frontend ->
engine-backend -> vcrypto-host, with a Python `ssl` client."""
from __future__ import annotations

import trio

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, x25519

import tls_support
from vcproxy.vcrypto_provider import VcryptoProvider
from vcrypto.engine import Frontend, SessionMeta, SlotStatus
from vcrypto.ops import Alg, Op


async def _session(port, cert, msgs):
    return await trio.to_thread.run_sync(tls_support.client_exchange, port, cert, msgs)


async def test_tls_handshake_and_transfer_through_the_host(host_and_backend):
    _host, backend = host_and_backend
    provider = VcryptoProvider(backend.socket_path, linger_s=0.2)
    cert, key = tls_support.self_signed()
    cfg = tls_support.config(cert, key)
    with trio.fail_after(60):
        async with tls_support.echo_server(cfg, provider) as (port, errors):
            got = await _session(port, cert, [b"ping", b"BIG 262144"])
            assert got == [b"echo:ping", b"x" * 262144]
            got = await _session(port, cert, [b"again"])
            assert got == [b"echo:again"]
        assert errors == []
    fe = provider.frontend
    assert fe.stats.fallback_requests == 0
    assert fe.stats.submitted > 0
    stats = await fe.backend_stats()
    by_op = stats["device_stats"]["device"]["by_op"]
    assert any(k.startswith("ecdh/") for k in by_op), by_op
    assert any(k.startswith("sign/ecdsa_secp256r1_sha256") for k in by_op), by_op
    assert any(k.startswith("aead_seal/") for k in by_op), by_op
    await provider.aclose()


async def test_a_full_handshake_sends_derive_and_signature_as_one_device_batch(host_and_backend):
    """The key-share pool at work: once this worker holds pre-generated
    shares, a full TLS 1.3 handshake's ECDH derive and CertificateVerify
    signature are submitted in one trio tick and reach the host as ONE device
    batch carrying both (without the pool: the key exchange, then the
    signature, two batches of one). The refill itself is one batch of many."""
    _host, backend = host_and_backend
    provider = VcryptoProvider(backend.socket_path, linger_s=5.0)
    pool = provider.key_shares
    cert, key = tls_support.self_signed()
    cfg = tls_support.config(cert, key, groups=["x25519"])
    fe = provider.frontend

    def handshake_ops(stats):
        return stats["family_batches"]["handshake"], stats["family_requests"]["handshake"]

    with trio.fail_after(60):
        async with tls_support.echo_server(cfg, provider) as (port, errors):
            assert await _session(port, cert, [b"warm"]) == [b"echo:warm"]
            assert pool.stats.missed == 1                # the first one found none in stock
            with trio.fail_after(10):
                while pool.stocked("x25519") < pool.size:  # its miss started the refill
                    await trio.sleep(0.01)
            b0, r0 = handshake_ops(await fe.backend_stats())
            assert await _session(port, cert, [b"ping"]) == [b"echo:ping"]
            b1, r1 = handshake_ops(await fe.backend_stats())
        assert errors == []
    # the second handshake: two handshake requests (derive + sign) in one batch
    assert (b1 - b0, r1 - r0) == (1, 2)
    assert pool.stats.used == 1 and pool.stats.refills == 1
    assert pool.stats.generated == pool.size
    assert fe.stats.fallback_requests == 0
    assert fe.stats.redone_requests == 0  # the host honoured the derive-only dst
    await provider.aclose()


async def test_a_key_share_refill_while_an_attach_is_under_way_attaches_once(tmp_path):
    """The engine-backend comes back while a worker is detached: the frontend
    re-attaches in the background (a request's or the readiness exporter's
    attempt) and the key-share pool's refill asks for an attachment at the
    same moment. One attachment results, not two (a second would orphan the
    first: its region, fds and tasks live on, and the backend counts an extra
    frontend for this worker)."""
    import engine_daemons

    backend = engine_daemons.backend(tmp_path)
    provider = VcryptoProvider(backend.socket_path, linger_s=0.2)
    fe = provider.frontend
    with trio.fail_after(30):
        assert not await fe.start()                 # nothing there yet: detached
        backend.start()
        try:
            await trio.sleep(fe.reconnect_interval_s)   # past the retry interval
            fe.reattach_soon()                      # the background re-attach, under way
            assert fe._state.value == "attaching"
            await provider._generate_key_shares("x25519", 4)  # a refill meanwhile
            while not fe.attached:
                await trio.sleep(0.01)
            await trio.sleep(0.2)                   # (a second attempt would finish by now)
            assert fe.stats.attaches == 1
            assert engine_daemons.backend_stats(backend.socket_path)["frontends_attached"] == 1
        finally:
            await provider.aclose()
            backend.stop()


async def test_a_derive_only_ecdh_gets_the_secret_alone_from_the_host(host_and_backend):
    """The keyed form with dst room for the secret only (vcrypto.ops): the
    host returns the 32-byte secret itself (a host computing the full form
    would overflow the dst: ERR, redone in-process, 64 bytes)."""
    _host, backend = host_and_backend
    fe = Frontend(backend.socket_path)
    ours = x25519.X25519PrivateKey.generate()
    scalar = ours.private_bytes_raw()
    peer = x25519.X25519PrivateKey.generate().public_key()
    with trio.fail_after(30):
        assert await fe.start()
        h = await fe.open_session(SessionMeta(Op.ECDH, Alg.X25519))
        [(status, out)] = await fe.run_together([(h, (scalar + peer.public_bytes_raw(), b"", b""), 32)])
        await fe.close_session(h)
    assert status is SlotStatus.OK
    assert out == ours.exchange(peer)
    assert fe.stats.redone_requests == 0 and fe.stats.fallback_requests == 0
    await fe.aclose()


async def test_run_together_without_an_engine_computes_in_process(tmp_path):
    """No backend at the socket: every request of a ``run_together`` runs
    in-process (counted as fallbacks), the derive-only one as the full form
    whose tail is the secret."""
    fe = Frontend(str(tmp_path / "nobody.sock"))
    ours = x25519.X25519PrivateKey.generate()
    peer = x25519.X25519PrivateKey.generate().public_key()
    key = ec.generate_private_key(ec.SECP256R1())
    der = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    with trio.fail_after(30):
        kx = await fe.open_session(SessionMeta(Op.ECDH, Alg.X25519))
        sg = await fe.open_session(SessionMeta(Op.SIGN, Alg.ECDSA_SECP256R1_SHA256, der))
        (ks, out), (ss, sig) = await fe.run_together([
            (kx, (ours.private_bytes_raw() + peer.public_bytes_raw(), b"", b""), 32),
            (sg, (b"message", b"", b""), 0)])
    assert ks is SlotStatus.OK and out[-32:] == ours.exchange(peer)
    assert ss is SlotStatus.OK
    key.public_key().verify(sig, b"message", ec.ECDSA(hashes.SHA256()))
    assert fe.stats.fallback_requests == 2 and fe.stats.submitted == 0
    await fe.aclose()
