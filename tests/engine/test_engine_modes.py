"""Keyless signing through the engine, and start-up without a backend."""
from __future__ import annotations

import os

import trio
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

import engine_daemons
import tls_support
from vcproxy.tls import CertificateEntry, ServerConfig
from vcproxy.vcrypto_provider import VcryptoProvider
from vcrypto.engine import SessionMeta, SlotStatus
from vcrypto.engine.frontend import Frontend
from vcrypto.ops import Alg, Op


async def test_keyless_tls_handshake_worker_never_holds_the_key(tmp_path):
    cert, key = tls_support.self_signed()
    keys = tmp_path / "keys"
    keys.mkdir()
    (keys / "site.pem").write_bytes(key)
    (tmp_path / "host.yaml").write_text(f"keys_dir: {keys}\n")
    host = engine_daemons.host(tmp_path, config=str(tmp_path / "host.yaml")).start()
    backend = engine_daemons.backend(tmp_path, host_socket=host.socket_path).start()
    try:
        provider = VcryptoProvider(backend.socket_path)
        cfg = ServerConfig([CertificateEntry.from_pem(cert, b"", key_ref="site")],
                           handshake_timeout_s=10)
        with trio.fail_after(30):
            async with tls_support.echo_server(cfg, provider) as (port, errors):
                got = await trio.to_thread.run_sync(tls_support.client_exchange, port, cert, [b"k"])
        assert got == [b"echo:k"] and errors == []
        st = await provider.frontend.backend_stats()
        assert any(k.startswith("sign/ecdsa_secp256r1_sha256/ok")
                   for k in st["device_stats"]["device"]["by_op"])
        await provider.aclose()
    finally:
        backend.stop()
        host.stop()


async def test_unreachable_at_start_runs_in_process_then_attaches(tmp_path):
    d = engine_daemons.backend(tmp_path)
    fe = Frontend(d.socket_path, reconnect_interval_s=0.05)
    assert not await fe.start()
    key = os.urandom(16)
    h = await fe.open_session(SessionMeta(Op.AEAD_SEAL, Alg.AES_128_GCM, key))
    item = (b"data", b"n" * 12, b"")
    want = AESGCM(key).encrypt(b"n" * 12, b"data", None)
    assert await fe.run(h, [item]) == [(SlotStatus.OK, want)]
    assert fe.stats.fallback_requests == 1 and fe.stats.submitted == 0
    d.start()
    try:
        with trio.fail_after(10):
            while fe.stats.submitted == 0:
                assert await fe.run(h, [item]) == [(SlotStatus.OK, want)]
                await trio.sleep(0.02)
        assert fe.attached
        await fe.aclose()
    finally:
        d.stop()


async def test_session_the_host_refuses_runs_in_process(tmp_path):
    """A host without the capability answers NOTSUPP: the frontend redoes
    those requests in-process (counted) and the client sees correct results."""
    (tmp_path / "host.yaml").write_text(
        "pool:\n  resources:\n    - name: ossl\n      kind: openssl\n"
        "      capabilities: ['aead_seal:*', 'aead_open:*', 'sign:*']\n")
    host = engine_daemons.host(tmp_path, config=str(tmp_path / "host.yaml")).start()
    backend = engine_daemons.backend(tmp_path, host_socket=host.socket_path).start()
    try:
        fe = Frontend(backend.socket_path)
        await fe.start()
        from cryptography.hazmat.primitives.asymmetric import x25519
        h = await fe.open_session(SessionMeta(Op.ECDH, Alg.X25519))
        for _ in range(3):
            peer = x25519.X25519PrivateKey.generate()
            [(st, out)] = await fe.run(h, [(peer.public_key().public_bytes_raw(), b"", b"")])
            assert st is SlotStatus.OK
            own, shared = out[:32], out[32:]
            assert peer.exchange(x25519.X25519PublicKey.from_public_bytes(own)) == shared
        # the first NOTSUPP is redone in-process; the session then stays local
        assert fe.stats.redone_requests == 1 and fe.stats.fallback_requests == 2
        assert fe.stats.backend_opens == 1
        await fe.aclose()
    finally:
        backend.stop()
        host.stop()


async def test_detach_reattach_cycles_leak_no_fds(tmp_path):
    """Every attachment's socket, eventfds and mappings are released once it
    is over (backend SIGKILLed, then restarted, several times)."""
    d = engine_daemons.backend(tmp_path)
    fe = Frontend(d.socket_path, reconnect_interval_s=0.02)
    h = await fe.open_session(SessionMeta(Op.AEAD_SEAL, Alg.AES_128_GCM, b"k" * 16))
    item = (b"x", b"n" * 12, b"")
    counts = []
    try:
        for _ in range(4):
            d.start()
            with trio.fail_after(10):
                while not fe.attached:
                    await fe.run(h, [item])
                    await trio.sleep(0.02)
            await fe.run(h, [item] * 20)
            d.kill()
            with trio.fail_after(10):
                while fe.attached:
                    await fe.run(h, [item])
                    await trio.sleep(0.02)
            await trio.sleep(0.15)  # the waiter notices within its backstop
            counts.append(len(os.listdir("/proc/self/fd")))
    finally:
        d.stop()
    assert counts[1:] == counts[1:2] * 3, counts
    assert fe.stats.attaches == 4 and fe.stats.detaches == 4
