"""TLSStream: the trio adapter around the sans-IO handshake and record layer.

(Work in progress: the public surface is fixed; the implementation lands next.)
"""
from __future__ import annotations

import trio

from ._config import ServerConfig
from ._errors import TLSUsageError
from ._provider import CryptoProvider


class TLSStream(trio.abc.Stream):
    def __init__(self, transport_stream: trio.abc.Stream, config: ServerConfig,
                 provider: CryptoProvider):
        self.transport_stream = transport_stream
        self.config = config
        self.provider = provider
        self.server_name: str | None = None
        self.alpn_protocol: str | None = None
        self.cipher_suite: str | None = None
        self.version: str | None = None
        self.resumed: bool = False
        self.named_group: str | None = None

    async def do_handshake(self) -> None:
        raise TLSUsageError("not implemented yet")

    async def send_all(self, data) -> None:
        raise TLSUsageError("not implemented yet")

    async def wait_send_all_might_not_block(self) -> None:
        await self.transport_stream.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes=None) -> bytes:
        raise TLSUsageError("not implemented yet")

    async def aclose(self) -> None:
        await self.transport_stream.aclose()
