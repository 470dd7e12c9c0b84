"""A real TLS client (Python's ssl over MemoryBIO) driven over any trio Stream."""
from __future__ import annotations

import ssl

import trio


class MemoryTLSClient:
    def __init__(self, stream: trio.abc.Stream, context: ssl.SSLContext,
                 server_hostname: str | None = "localhost", session=None):
        self.stream = stream
        self.incoming = ssl.MemoryBIO()
        self.outgoing = ssl.MemoryBIO()
        self.obj = context.wrap_bio(self.incoming, self.outgoing,
                                    server_hostname=server_hostname, session=session)

    async def _flush(self):
        data = self.outgoing.read()
        if data:
            await self.stream.send_all(data)

    async def _fill(self):
        data = await self.stream.receive_some(65536)
        if data:
            self.incoming.write(data)
        else:
            self.incoming.write_eof()

    async def _retry(self, fn, *args):
        while True:
            try:
                result = fn(*args)
            except ssl.SSLWantReadError:
                await self._flush()
                await self._fill()
                continue
            await self._flush()
            return result

    async def handshake(self):
        await self._retry(self.obj.do_handshake)

    async def send(self, data: bytes):
        await self._retry(self.obj.write, data)

    async def recv(self, n: int = 65536) -> bytes:
        try:
            return await self._retry(self.obj.read, n)
        except ssl.SSLZeroReturnError:
            return b""

    async def close(self):
        try:
            self.obj.unwrap()
        except ssl.SSLWantReadError:
            pass
        await self._flush()


def client_context(ca_pem: bytes | None = None, **kw) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    if ca_pem is None:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    else:
        ctx.load_verify_locations(cadata=ca_pem.decode())
    for k, v in kw.items():
        getattr(ctx, k)(*v) if isinstance(v, tuple) else setattr(ctx, k, v)
    return ctx
