"""A tiny TLS 1.2 client (ECDHE-X25519, AES-128-GCM) for tests that need to
put exact bytes on the wire: renegotiation attempts, odd records, a state
machine driven without a stream.

``Hello12`` is the sans-IO part (messages in, messages out); ``MiniClient12``
runs it over a trio stream with record protection of its own (the RFC 5288
construction written out independently of the server's ``_record12``).
"""
from __future__ import annotations

import hashlib
import os

from cryptography.hazmat.primitives.asymmetric import x25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from tests.tls.miniclient import ext
from vcproxy.tls import _codec as c
from vcproxy.tls import _codec12 as c12
from vcproxy.tls._keyschedule12 import SUITES12_BY_ID, key_block, master_secret, verify_data
from vcproxy.tls._record import RecordSplitter, record_header

ECDHE_ECDSA_AES128_GCM = 0xC02B
SIG_ALGS = (0x0403, 0x0804, 0x0401)
EMS = ext(c12.EXT_EXTENDED_MASTER_SECRET, b"")


def client_hello12(*, random: bytes | None = None, suites=(ECDHE_ECDSA_AES128_GCM,),
                   groups=(0x001D, 0x0017),
                   ems=True, extra=b"", session_id=b"", legacy_version=0x0303,
                   sig_algs=SIG_ALGS, sni="localhost", ticket: bytes | None = None,
                   renegotiation_info: bytes | None = b"\x00") -> bytes:
    exts = b""
    if sni:
        exts += ext(0, c.vec16(b"\x00" + c.vec16(sni.encode())))
    if groups is not None:
        exts += ext(c.EXT_SUPPORTED_GROUPS, c.vec16(b"".join(g.to_bytes(2, "big") for g in groups)))
    if sig_algs is not None:
        exts += ext(c.EXT_SIGNATURE_ALGORITHMS,
                    c.vec16(b"".join(s.to_bytes(2, "big") for s in sig_algs)))
    if ems:
        exts += EMS
    if ticket is not None:
        exts += ext(c12.EXT_SESSION_TICKET, ticket)
    if renegotiation_info is not None:
        exts += ext(c12.EXT_RENEGOTIATION_INFO, renegotiation_info)
    exts += extra
    body = (legacy_version.to_bytes(2, "big") + (random or os.urandom(32)) + c.vec8(session_id)
            + c.vec16(b"".join(s.to_bytes(2, "big") for s in suites)) + b"\x01\x00" + c.vec16(exts))
    return c.handshake(c.CLIENT_HELLO, body)


def split_messages(data: bytes) -> list[bytes]:
    out = []
    while data:
        n = int.from_bytes(data[1:4], "big")
        out.append(data[:4 + n])
        data = data[4 + n:]
    return out


class Hello12:
    """Client side of one TLS 1.2 handshake, sans-IO."""

    def __init__(self, hello: bytes, key: x25519.X25519PrivateKey | None = None):
        self.hello = hello
        self.random = hello[6:38]
        self.ems = c.parse_client_hello(hello).has(c12.EXT_EXTENDED_MASTER_SECRET)
        self.key = key or x25519.X25519PrivateKey.generate()
        self.messages = [hello]
        self.server_random = b""
        self.suite = None
        self.server_point = b""
        self.master = b""
        self.ticket: bytes | None = None

    def transcript(self) -> bytes:
        return hashlib.new(self.suite.hash_name, b"".join(self.messages)).digest()

    def server_hello(self, sh: bytes) -> None:
        assert sh[0] == c.SERVER_HELLO and sh[4:6] == b"\x03\x03", sh[:6]
        self.server_random = sh[6:38]
        sid_len = sh[38]
        self.session_id = sh[39:39 + sid_len]
        suite_id = int.from_bytes(sh[39 + sid_len:41 + sid_len], "big")
        self.suite = SUITES12_BY_ID[suite_id]
        self.messages.append(sh)

    def server_flight(self, messages: list[bytes]) -> None:
        """ServerHello, Certificate, ServerKeyExchange, ServerHelloDone."""
        self.server_hello(messages[0])
        ske = next(m for m in messages if m[0] == c12.SERVER_KEY_EXCHANGE)
        # curve_type(1) named_curve(2) point<1..255>
        self.server_point = ske[8:8 + ske[7]]
        self.messages += messages[1:]

    def client_key_exchange(self) -> bytes:
        own = self.key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        cke = c.handshake(c12.CLIENT_KEY_EXCHANGE, c.vec8(own))
        self.messages.append(cke)
        shared = self.key.exchange(x25519.X25519PublicKey.from_public_bytes(self.server_point))
        self.master = master_secret(self.suite, shared,
                                    session_hash=self.transcript() if self.ems else None,
                                    client_random=self.random, server_random=self.server_random)
        return cke

    def finished(self) -> bytes:
        fin = c.finished(verify_data(self.suite, self.master, "client", self.transcript()))
        self.messages.append(fin)
        return fin

    def expected_server_finished(self) -> bytes:
        return c.finished(verify_data(self.suite, self.master, "server", self.transcript()))

    def keys(self):
        return key_block(self.suite, self.master, self.random, self.server_random)


class _Gcm:
    def __init__(self, key: bytes, salt: bytes):
        self.aead, self.salt, self.seq = AESGCM(key), salt, 0

    def seal(self, ctype: int, data: bytes) -> bytes:
        explicit = self.seq.to_bytes(8, "big")
        aad = explicit + bytes((ctype, 3, 3)) + len(data).to_bytes(2, "big")
        self.seq += 1
        body = explicit + self.aead.encrypt(self.salt + explicit, data, aad)
        return record_header(ctype, len(body)) + body

    def open(self, ctype: int, payload: bytes) -> bytes:
        aad = self.seq.to_bytes(8, "big") + bytes((ctype, 3, 3)) \
            + (len(payload) - 24).to_bytes(2, "big")
        self.seq += 1
        return self.aead.decrypt(self.salt + payload[:8], payload[8:], aad)


class MiniClient12:
    """``Hello12`` over a trio stream (TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256)."""

    def __init__(self, stream, **hello_kw):
        self.stream = stream
        self.splitter = RecordSplitter()
        self.hs = Hello12(client_hello12(**hello_kw))
        self.read: _Gcm | None = None
        self.write: _Gcm | None = None
        self.hs_buf = b""

    async def record(self) -> tuple[int, bytes]:
        """The next record, opened if keys are in place: (content_type, plaintext)."""
        while (rec := self.splitter.next_record()) is None:
            data = await self.stream.receive_some(65536)
            if not data:
                return -1, b""
            self.splitter.feed(data)
        ctype, _, payload = rec
        if self.read is not None and ctype != 20:
            payload = self.read.open(ctype, payload)
        return ctype, payload

    async def messages_until(self, last_type: int) -> list[bytes]:
        out = []
        while not out or out[-1][0] != last_type:
            ctype, data = await self.record()
            assert ctype == 22, (ctype, data)
            self.hs_buf += data
            while len(self.hs_buf) >= 4 and len(self.hs_buf) >= 4 + int.from_bytes(self.hs_buf[1:4], "big"):
                n = 4 + int.from_bytes(self.hs_buf[1:4], "big")
                out.append(self.hs_buf[:n])
                self.hs_buf = self.hs_buf[n:]
        return out

    async def send(self, ctype: int, data: bytes) -> None:
        if self.write is None:
            await self.stream.send_all(record_header(ctype, len(data)) + data)
        else:
            await self.stream.send_all(self.write.seal(ctype, data))

    async def handshake(self) -> None:
        await self.send(22, self.hs.hello)
        self.hs.server_flight(await self.messages_until(c12.SERVER_HELLO_DONE))
        await self.send(22, self.hs.client_key_exchange())
        await self.send(20, b"\x01")
        keys = self.hs.keys()
        self.write = _Gcm(keys.client_key, keys.client_iv)
        await self.send(22, self.hs.finished())
        ctype, data = await self.record()
        if ctype == 22 and data[0] == c.NEW_SESSION_TICKET:
            self.hs.messages.append(data)
            ctype, data = await self.record()
        assert (ctype, data) == (20, b"\x01"), (ctype, data)
        self.read = _Gcm(keys.server_key, keys.server_iv)
        ctype, fin = await self.record()
        assert (ctype, fin) == (22, self.hs.expected_server_finished())
