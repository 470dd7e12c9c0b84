"""trio's own Stream conformance checks, with trio.SSLStream as the client."""
from __future__ import annotations

import ssl

import trio
import trio.testing

from tests.tls.helpers import server_config
from vcproxy.tls import InlineProvider, TLSStream


async def test_trio_stream_conformance(test_certs, tmp_path):
    cert = test_certs["ecdsa-p256"]
    config = server_config([cert])
    ctx = ssl.create_default_context(cadata=cert.ca_pem.decode())
    provider = InlineProvider()

    async def stream_maker():
        a, b = trio.testing.memory_stream_pair()
        return (TLSStream(a, config, provider),
                trio.SSLStream(b, ctx, server_hostname="localhost"))

    async def clogged_stream_maker():
        a, b = trio.testing.lockstep_stream_pair()
        server = TLSStream(a, config, provider)
        client = trio.SSLStream(b, ctx, server_hostname="localhost")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(server.do_handshake)
            nursery.start_soon(client.do_handshake)
        return server, client

    with trio.fail_after(60):
        await trio.testing.check_two_way_stream(stream_maker, clogged_stream_maker)
