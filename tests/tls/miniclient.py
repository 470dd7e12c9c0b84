"""A minimal scripted TLS 1.3 client for driving the server into corners that
real clients never reach (early data, odd extensions, bad Finished, ...).

Built from our own codec and key schedule plus `cryptography`; it trusts the
server (no certificate checks) — it tests the server, not itself.
"""
from __future__ import annotations

import hashlib
import os

import trio
from cryptography.hazmat.primitives.asymmetric import ec, mlkem, x25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from vcproxy.tls import _codec as c
from vcproxy.tls._keyschedule import SUITES, EarlySecret, finished_verify_data, next_traffic_secret, traffic_key_iv
from vcproxy.tls._record import RecordSplitter, record_header

SUITE = SUITES["TLS_AES_128_GCM_SHA256"]
SIG_ALGS = (0x0403, 0x0503, 0x0804, 0x0805, 0x0806, 0x0807)


class Keys:
    def __init__(self, secret: bytes):
        self.secret = secret
        key, iv = traffic_key_iv(SUITE, secret)
        self.aead, self.iv, self.seq = AESGCM(key), int.from_bytes(iv, "big"), 0

    def nonce(self) -> bytes:
        n = (self.iv ^ self.seq).to_bytes(12, "big")
        self.seq += 1
        return n


class ClientShare:
    """The client's half of one key exchange group, written from the
    specifications independently of the server code (``vcproxy.tls._provider``)
    so a test catches an ordering mistake there: X25519, or a hybrid of
    draft-ietf-tls-ecdhe-mlkem (X25519MLKEM768: ML-KEM part first in the
    shares and the secret; SecP256r1MLKEM768: the P-256 part first).
    ``mlkem_seed`` (64 bytes, FIPS 203 d || z) makes the ML-KEM key fixed."""

    IDS = {"x25519": 0x001D, "X25519MLKEM768": 0x11EC, "SecP256r1MLKEM768": 0x11EB}

    def __init__(self, group: str = "x25519", *, mlkem_seed: bytes | None = None):
        self.group, self.group_id = group, self.IDS[group]
        self.x25519 = self.p256 = self.kem = None
        if group == "SecP256r1MLKEM768":
            self.p256 = ec.generate_private_key(ec.SECP256R1())
            ecdh = self.p256.public_key().public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
        else:
            self.x25519 = x25519.X25519PrivateKey.generate()
            ecdh = self.x25519.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        if group == "x25519":
            self.share = ecdh
            return
        self.kem = (mlkem.MLKEM768PrivateKey.generate() if mlkem_seed is None
                    else mlkem.MLKEM768PrivateKey.from_seed_bytes(mlkem_seed))
        ek = self.kem.public_key().public_bytes_raw()
        self.share = ecdh + ek if self.p256 is not None else ek + ecdh

    def shared(self, server_share: bytes) -> bytes:
        if self.kem is None:
            return self.x25519.exchange(x25519.X25519PublicKey.from_public_bytes(server_share))
        if self.p256 is not None:  # 65-byte point || 1088-byte ciphertext
            assert len(server_share) == 65 + 1088, len(server_share)
            point, ct = server_share[:65], server_share[65:]
            peer = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), point)
            return self.p256.exchange(ec.ECDH(), peer) + self.kem.decapsulate(ct)
        assert len(server_share) == 1088 + 32, len(server_share)
        ct, point = server_share[:1088], server_share[1088:]
        return (self.kem.decapsulate(ct)
                + self.x25519.exchange(x25519.X25519PublicKey.from_public_bytes(point)))


def ext(t: int, data: bytes) -> bytes:
    return c.extension(t, data)


def client_hello(*, sni="localhost", share: bytes | None = None, groups=(0x001D,),
                 share_group=0x001D, versions=(0x0304,), extra=b"", session_id=b"",
                 alpn=None, suites=(0x1301,), sig_algs=SIG_ALGS, legacy_version=0x0303,
                 key_shares=None) -> bytes:
    """A ClientHello; ``key_shares`` (a list of (group, share)) replaces ``share``."""
    exts = b""
    if sni:
        exts += ext(0, c.vec16(b"\x00" + c.vec16(sni.encode())))
    if versions is not None:
        exts += ext(c.EXT_SUPPORTED_VERSIONS,
                    c.vec8(b"".join(v.to_bytes(2, "big") for v in versions)))
    exts += ext(c.EXT_SUPPORTED_GROUPS, c.vec16(b"".join(g.to_bytes(2, "big") for g in groups)))
    exts += ext(c.EXT_SIGNATURE_ALGORITHMS, c.vec16(b"".join(s.to_bytes(2, "big") for s in sig_algs)))
    if key_shares is None and share is not None:
        key_shares = [(share_group, share)]
    if key_shares is not None:
        exts += ext(c.EXT_KEY_SHARE, c.vec16(b"".join(g.to_bytes(2, "big") + c.vec16(s)
                                                      for g, s in key_shares)))
    if alpn:
        exts += ext(c.EXT_ALPN, c.vec16(b"".join(c.vec8(p) for p in alpn)))
    exts += extra
    body = (legacy_version.to_bytes(2, "big") + os.urandom(32) + c.vec8(session_id)
            + c.vec16(b"".join(s.to_bytes(2, "big") for s in suites)) + b"\x01\x00" + c.vec16(exts))
    return c.handshake(c.CLIENT_HELLO, body)


class MiniClient:
    def __init__(self, stream: trio.abc.Stream, group: str = "x25519"):
        self.stream = stream
        self.splitter = RecordSplitter()
        self.kx = ClientShare(group)
        self.key = self.kx.x25519
        self.share = self.kx.share
        self.transcript = hashlib.sha256()
        self.read: Keys | None = None
        self.write: Keys | None = None
        self.hs_buf = b""
        self.key_updates_received = 0

    async def send_plain(self, ctype: int, data: bytes) -> None:
        await self.stream.send_all(record_header(ctype, len(data)) + data)

    async def send_protected(self, ctype: int, data: bytes, keys: Keys | None = None, *,
                             padding: int = 0) -> None:
        keys = keys or self.write
        inner = data + bytes((ctype,)) + bytes(padding)
        header = record_header(23, len(inner) + 16)
        await self.stream.send_all(header + keys.aead.encrypt(keys.nonce(), inner, header))

    async def record(self) -> tuple[int, bytes]:
        """Next record from the server, decrypted when keys are set."""
        while True:
            rec = self.splitter.next_record()
            if rec is not None:
                break
            data = await self.stream.receive_some(65536)
            if not data:
                raise EOFError("server closed")
            self.splitter.feed(data)
        ctype, header, payload = rec
        if ctype == 23 and self.read is not None:
            inner = self.read.aead.decrypt(self.read.nonce(), payload, header).rstrip(b"\x00")
            return inner[-1], inner[:-1]
        return ctype, payload

    async def message(self) -> bytes:
        while True:
            if len(self.hs_buf) >= 4:
                n = int.from_bytes(self.hs_buf[1:4], "big")
                if len(self.hs_buf) >= 4 + n:
                    msg, self.hs_buf = self.hs_buf[:4 + n], self.hs_buf[4 + n:]
                    return msg
            ctype, data = await self.record()
            if ctype == 20:
                continue
            if ctype != 22:
                raise AssertionError(f"expected handshake, got record type {ctype}: {data!r}")
            self.hs_buf += data

    async def handshake(self, ch: bytes | None = None, *, after_hello=None, bad_finished=False,
                        ccs_before_finished=False, fragment: int = 1 << 14,
                        after_finished: bytes = b"", send_finished: bool = True,
                        finished_padding: int = 0) -> dict:
        """Run the handshake up to our Finished.

        ``send_finished=False`` stops once the server's Finished is read: the
        client then reads under the server application keys (as a server
        sends under them from its Finished on, RFC 8446 §4.4.4) and writes
        under its handshake keys, ``self.finished`` holding the Finished it
        would send. ``finished_padding`` zero bytes pad the Finished record.
        """
        ch = ch or client_hello(share=self.share, groups=(self.kx.group_id,),
                                share_group=self.kx.group_id)
        self.transcript.update(ch)
        for i in range(0, len(ch), fragment):
            await self.send_plain(22, ch[i:i + fragment])
        if after_hello is not None:
            await after_hello(self)
        sh = await self.message()
        assert sh[0] == c.SERVER_HELLO, sh[:1]
        self.transcript.update(sh)
        r = c.Reader(sh, 4 + 2 + 32)
        r.vec(1, "sid")
        r.u16()
        r.u8()
        exts = r.sub(2, "exts")
        server_share = None
        while exts.left():
            t, d = exts.u16(), exts.vec(2, "ext")
            if t == c.EXT_KEY_SHARE:
                server_share = d[4:]
        self.server_share = server_share
        shared = self.kx.shared(server_share)
        hs = EarlySecret(SUITE).into_handshake(shared)
        client_hs, server_hs = hs.traffic_secrets(self.transcript.digest())
        self.read, self.write = Keys(server_hs), Keys(client_hs)
        info = {"encrypted_extensions": None}
        while True:
            msg = await self.message()
            if msg[0] == c.FINISHED:
                self.transcript.update(msg)
                break
            if msg[0] == c.ENCRYPTED_EXTENSIONS:
                info["encrypted_extensions"] = msg
            self.transcript.update(msg)
        master = hs.into_master()
        client_ap, server_ap = master.traffic_secrets(self.transcript.digest())
        verify = finished_verify_data(SUITE, client_hs, self.transcript.digest())
        if bad_finished:
            verify = bytes(32)
        self.finished = c.finished(verify)
        if not send_finished:
            self.read = Keys(server_ap)
            self.client_ap = client_ap
            return info
        if ccs_before_finished:
            await self.send_plain(20, b"\x01")
        await self.send_protected(22, self.finished + after_finished, padding=finished_padding)
        self.read, self.write = Keys(server_ap), Keys(client_ap)
        return info

    async def send_app(self, data: bytes) -> None:
        await self.send_protected(23, data)

    async def recv_app(self) -> bytes:
        """Next application data, handling NewSessionTicket and KeyUpdate."""
        while True:
            ctype, data = await self.record()
            if ctype == 23:
                return data
            if ctype == 22:
                # one record may carry several messages (a queued
                # NewSessionTicket, then a KeyUpdate: the last of its record)
                pos = 0
                while pos < len(data):
                    kind, size = data[pos], int.from_bytes(data[pos + 1:pos + 4], "big")
                    pos += 4 + size
                    if kind == c.KEY_UPDATE:
                        assert pos == len(data), "KeyUpdate not the last message of its record"
                        self.key_updates_received += 1
                        self.read = Keys(next_traffic_secret(SUITE, self.read.secret))
                continue
            if ctype == 21:
                raise AssertionError(f"alert {data!r}")

    async def key_update(self, request: bool) -> None:
        await self.send_protected(22, c.key_update(request))
        self.write = Keys(next_traffic_secret(SUITE, self.write.secret))
