"""An in-memory TLSStream pair for tests: our server over a memory stream,
the scripted ``MiniClient`` on the other end, every chunk the server sends
recorded."""
from __future__ import annotations

import trio
import trio.testing

from tests.tls.miniclient import MiniClient
from vcproxy.tls import InlineProvider, TLSStream


class RecordingStream(trio.abc.HalfCloseableStream):
    """Passes through to ``inner``, keeping every chunk the server sends."""

    def __init__(self, inner):
        self.inner, self.sent = inner, []

    async def send_all(self, data):
        self.sent.append(bytes(data))
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self):
        await self.inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes=None):
        return await self.inner.receive_some(max_bytes)

    async def send_eof(self):
        await self.inner.send_eof()

    async def aclose(self):
        await self.inner.aclose()


def pair(config, provider=None, group="x25519"):
    a, b = trio.testing.memory_stream_pair()
    rec = RecordingStream(a)
    return TLSStream(rec, config, provider or InlineProvider()), rec, MiniClient(b, group)


async def handshake(server, client, **kw):
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.do_handshake)
        info = await client.handshake(**kw)
    return info
