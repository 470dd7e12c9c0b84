"""Test helpers shared by tests/tls: the counting provider and a loopback TLS echo server.

(Kept out of conftest.py so every test imports one module object: isinstance
checks against ``CountingProvider`` must see a single class.)
"""
from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Sequence

import trio

from tests.tls.certs import TestCert
from vcproxy.tls import (
    AeadSession, CertificateEntry, CryptoProvider, InlineProvider, ServerConfig, SigningKey,
    TLSError, TLSStream,
)

CERT_KINDS = ("ecdsa-p256", "ecdsa-p384", "rsa-2048", "ed25519")
#: Records with less plaintext than this are sealed in-process in interop tests.
SMALL_RECORD_THRESHOLD_BYTES = 64


class _CountingAead(AeadSession):
    def __init__(self, inner: AeadSession, owner: CountingProvider):
        self.inner, self.owner, self.alg = inner, owner, inner.alg
        self.closes = 0  # aclose() calls: the stream must make exactly one
        owner.sessions.append(self)

    def seal(self, nonce, aad, plaintext):
        # The in-process path may only see records under the threshold
        # (plaintext here is content + 1 content-type byte), and fatal alerts
        # (2 bytes + type 21), sealed in-process whatever the threshold.
        alert = len(plaintext) == 3 and plaintext[-1] == 21 and plaintext[0] == 2
        assert alert or len(plaintext) - 1 < self.owner.threshold, \
            f"record of {len(plaintext) - 1} B sealed in-process, threshold {self.owner.threshold}"
        self.owner.counts["small_seal"] += 1
        return self.inner.seal(nonce, aad, plaintext)

    def open(self, nonce, aad, ciphertext):
        assert len(ciphertext) - 17 < self.owner.threshold, \
            f"record of {len(ciphertext) - 17} B opened in-process, threshold {self.owner.threshold}"
        self.owner.counts["small_open"] += 1
        return self.inner.open(nonce, aad, ciphertext)

    async def seal_many(self, items):
        assert 1 <= len(items) <= 16
        self.owner.counts["seal_many"] += 1
        self.owner.counts["sealed_records"] += len(items)
        return await self.inner.seal_many(items)

    async def open_many(self, items):
        assert 1 <= len(items) <= 16
        self.owner.counts["open_many"] += 1
        self.owner.counts["opened_records"] += len(items)
        return await self.inner.open_many(items)

    async def aclose(self):
        self.closes += 1
        self.owner.counts["aead_closes"] += 1
        await self.inner.aclose()


class CountingProvider(CryptoProvider):
    """Wraps InlineProvider, counting every operation that crosses the seam
    (``derive_and_sign`` is the seam's default: ``key_exchange`` then
    ``sign``, each counted)."""

    name = "counting"

    def __init__(self, threshold: int = SMALL_RECORD_THRESHOLD_BYTES):
        self.inner = InlineProvider()
        self.threshold = threshold
        self.counts: dict[str, int] = dict.fromkeys(
            ("key_exchange", "key_share", "sign", "aead_sessions", "seal_many", "open_many",
             "sealed_records", "opened_records", "small_seal", "small_open", "aead_closes"), 0)
        self.sessions: list[_CountingAead] = []  # every AEAD session handed out

    def check_sessions_closed_once(self) -> None:
        """Every AEAD session handed out was closed exactly once."""
        closes = [s.closes for s in self.sessions]
        assert closes and all(n == 1 for n in closes), closes

    async def key_exchange(self, group, peer_public, *, private_key=None):
        self.counts["key_exchange"] += 1
        return await self.inner.key_exchange(group, peer_public, private_key=private_key)

    def key_share(self, group):
        share = self.inner.key_share(group)
        if share is not None:
            self.counts["key_share"] += 1
        return share

    def load_signing_key(self, private_key_pem, *, key_ref=None) -> SigningKey:
        return self.inner.load_signing_key(private_key_pem, key_ref=key_ref)

    async def sign(self, key, scheme, message):
        self.counts["sign"] += 1
        return await self.inner.sign(key, scheme, message)

    def aead(self, suite_alg, key):
        self.counts["aead_sessions"] += 1
        return _CountingAead(self.inner.aead(suite_alg, key), self)


def entry_for(cert: TestCert, names: Sequence[str] | None = None) -> CertificateEntry:
    return CertificateEntry.from_pem(cert.chain_pem, cert.key_pem, names)


def server_config(certs: Sequence[TestCert], **kw) -> ServerConfig:
    kw.setdefault("small_record_threshold_bytes", SMALL_RECORD_THRESHOLD_BYTES)
    kw.setdefault("handshake_timeout_s", 10)
    return ServerConfig([entry_for(c) for c in certs], **kw)


@dataclasses.dataclass
class ServerRun:
    port: int
    provider: CryptoProvider
    infos: list = dataclasses.field(default_factory=list)
    errors: list = dataclasses.field(default_factory=list)

    def check_provider_saw_everything(self) -> None:
        """Every key exchange and signature went through the provider, and
        records above the threshold went through seal_many/open_many."""
        if not isinstance(self.provider, CountingProvider):
            return
        counts = self.provider.counts
        full = sum(1 for i in self.infos if not i.resumed)
        tls12 = [i for i in self.infos if i.version == "TLSv1.2"]
        # TLS 1.3: one key exchange per handshake (one-op, or the derive
        # under a key share). TLS 1.2: our share (a key share, or a keygen
        # exchange) and the derive per full handshake, none when resumed.
        # (A key share stands for TLS 1.2's keygen exchange, not for a derive.)
        tls12_full = sum(1 for i in tls12 if not i.resumed)
        derives = (len(self.infos) - len(tls12)) + tls12_full
        assert derives <= counts["key_exchange"] <= derives + tls12_full, (counts, self.infos)
        assert counts["key_exchange"] + counts["key_share"] >= derives + tls12_full, counts
        assert counts["key_share"] <= full, (counts, self.infos)
        assert counts["sign"] == full, (counts, self.infos)
        # every full TLS 1.3 handshake's flight (with its Certificate) is above
        # the threshold (TLS 1.2 sends its Certificate in the clear)
        full13 = sum(1 for i in self.infos if not i.resumed and i.version != "TLSv1.2")
        assert counts["sealed_records"] >= full13, counts
        # four traffic keys per TLS 1.3 connection, two per TLS 1.2 one
        assert counts["aead_sessions"] >= 4 * len(self.infos) - 2 * len(tls12), counts
        # every stream closed: each AEAD session it opened was closed exactly once
        closes = [s.closes for s in self.provider.sessions]
        assert all(n == 1 for n in closes), closes


async def echo_handler(tls: TLSStream, run: ServerRun) -> None:
    """GET → a small HTTP response; anything else is echoed as b"echo:" + data."""
    while True:
        data = await tls.receive_some()
        if not data:
            return
        if data.startswith(b"GET "):
            body = f"hello {tls.alpn_protocol} {tls.cipher_suite}".encode()
            tls.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\nconnection: close\r\n\r\n"
                      % len(body))
            await tls.send_all(body)
            return
        await tls.send_all(b"echo:" + data)


@contextlib.asynccontextmanager
async def tls_server(config: ServerConfig, provider: CryptoProvider, handler=echo_handler):
    """A TLS server on 127.0.0.1, port 0, for the duration of the block."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    run = ServerRun(listeners[0].socket.getsockname()[1], provider)

    async def serve_one(stream):
        tls = TLSStream(stream, config, provider)
        try:
            await tls.do_handshake()
            run.infos.append(tls.info)
            await handler(tls, run)
        except (TLSError, trio.BrokenResourceError) as exc:
            run.errors.append(exc)
        finally:
            await tls.aclose()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.serve_listeners, serve_one, listeners)
        yield run
        nursery.cancel_scope.cancel()
    run.check_provider_saw_everything()


def split_handshake_messages(data: bytes) -> list[bytes]:
    """Whole handshake messages (type, 3-byte length, body) of a flight, in order."""
    out, pos = [], 0
    while pos < len(data):
        n = int.from_bytes(data[pos + 1:pos + 4], "big")
        out.append(data[pos:pos + 4 + n])
        pos += 4 + n
    return out
