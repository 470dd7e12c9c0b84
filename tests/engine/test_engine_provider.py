"""VcryptoProvider: real TLS handshakes and transfers through frontend ->
engine-backend -> vcrypto-host, with a Python `ssl` client."""
from __future__ import annotations

import trio

import tls_support
from vcproxy.vcrypto_provider import VcryptoProvider


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
