"""The fixture the TLS interop suite uses for its "vcrypto" parameter
(``engine_daemons.vcrypto_tls_provider``), exercised here the same way."""
from __future__ import annotations

import trio

import tls_support
from engine_daemons import engine_stack, vcrypto_tls_provider  # noqa: F401 - fixtures


async def test_vcrypto_tls_provider_fixture_serves_a_handshake(vcrypto_tls_provider, engine_stack):
    cert, key = tls_support.self_signed("rsa-2048")
    cfg = tls_support.config(cert, key)
    before = engine_stack.host_requests()
    with trio.fail_after(30):
        async with tls_support.echo_server(cfg, vcrypto_tls_provider) as (port, errors):
            got = await trio.to_thread.run_sync(tls_support.client_exchange, port, cert, [b"x"])
    assert got == [b"echo:x"] and errors == []
    assert engine_stack.host_requests() - before >= 2  # ECDH + RSA-PSS sign at the host
