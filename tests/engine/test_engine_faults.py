"""Fault tests: SIGKILL the engine-backend, then the host, in the middle of a
stream of TLS handshakes and transfers. Clients never see an error; the
frontend's fallback counter rises; traffic returns to vcrypto once the
daemon is back."""
from __future__ import annotations

import pytest
import trio

import engine_daemons
import tls_support
from vcproxy.vcrypto_provider import VcryptoProvider
from vcrypto.engine.frontend import Frontend

pytestmark = pytest.mark.daemons


async def test_sigkill_backend_then_host_mid_traffic(tmp_path):
    host = engine_daemons.host(tmp_path).start()
    backend = engine_daemons.backend(tmp_path, host_socket=host.socket_path).start()
    try:
        fe = Frontend(backend.socket_path, reconnect_interval_s=0.1, linger_s=0.3)
        provider = VcryptoProvider(backend.socket_path, frontend=fe)
        cert, key = tls_support.self_signed()
        cfg = tls_support.config(cert, key)
        async with tls_support.echo_server(cfg, provider) as (port, server_errors):
            loop = tls_support.ClientLoop(port, cert)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(trio.to_thread.run_sync, loop.run)
                try:
                    await loop.more(2)
                    assert fe.stats.fallback_requests == 0 and fe.stats.submitted > 0

                    # 1. the engine-backend dies mid-stream
                    backend.kill()
                    fb0 = fe.stats.fallback_requests
                    await loop.more(3)
                    assert fe.stats.fallback_requests > fb0
                    assert fe.stats.detaches == 1

                    # ...and comes back: the frontend reattaches and offloads again
                    backend.start()

                    async def offloading():
                        return fe.attached and fe.stats.attaches >= 2
                    await tls_support.until(offloading)
                    sub0 = fe.stats.submitted
                    await loop.more(2)
                    assert fe.stats.submitted > sub0

                    # 2. the host dies mid-stream
                    host.kill()
                    fb1 = fe.stats.fallback_requests
                    await loop.more(3)
                    assert fe.stats.fallback_requests > fb1

                    # ...and comes back: the backend reattaches to it
                    host.start()

                    async def device_back():
                        st = await fe.backend_stats()
                        return st["device_up"]
                    await tls_support.until(device_back)
                    await loop.more(2)
                    st = await fe.backend_stats()
                    by_op = st["device_stats"]["device"]["by_op"]
                    assert any(k.startswith("sign/") for k in by_op), by_op
                    assert any(k.startswith("ecdh/") for k in by_op), by_op
                finally:
                    loop.stop.set()
            assert loop.errors == []
        assert server_errors == []
        await provider.aclose()
    finally:
        backend.stop()
        host.stop()
