"""A handshake cut off from outside the TLS stream (the connection's opening
scope: shedding, the tighter deadline under pressure) still releases the
stream's AEAD sessions, as its own HandshakeTimeout path does: a vcrypto
session would otherwise hold a host session until garbage collection."""
from __future__ import annotations

import types

import trio
import trio.testing
from cryptography.hazmat.primitives.asymmetric import x25519

from tests.tls.certs import make_cert
from tests.tls.helpers import CountingProvider, server_config
from tests.tls.miniclient import client_hello
from vcproxy.proxy._http import ConnState
from vcproxy.proxy._listener import ConnectionServer, _ListenerMetrics
from vcproxy.tls._record import HANDSHAKE, record_header


async def test_cut_off_handshake_releases_its_aead_sessions():
    provider = CountingProvider()
    server = ConnectionServer.__new__(ConnectionServer)   # only _handshake is exercised
    server.provider = provider
    rt = types.SimpleNamespace(tls=server_config([make_cert("ecdsa-p256")], handshake_timeout_s=30), name="t")
    client, raw = trio.testing.memory_stream_pair()
    share = x25519.X25519PrivateKey.generate().public_key().public_bytes_raw()
    hello = client_hello(share=share)
    await client.send_all(record_header(HANDSHAKE, len(hello)) + hello)
    with trio.move_on_after(1) as scope:   # the client never sends its Finished
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_drain, client)
            await server._handshake(raw, rt, _ListenerMetrics("t"), ConnState("127.0.0.1", 1, trio.Event()))
    assert scope.cancelled_caught
    assert provider.counts["aead_sessions"] >= 2     # handshake keys were installed
    provider.check_sessions_closed_once()


async def _drain(stream) -> None:
    while await stream.receive_some(65536):
        pass
