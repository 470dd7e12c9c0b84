"""A minimal TLS echo server on our TLSStream and a Python `ssl` client, for
the engine tests (independent of tests/tls, which the TLS suite owns)."""
from __future__ import annotations

import contextlib
import datetime
import socket
import ssl
import threading

import trio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from vcproxy.tls import CertificateEntry, ServerConfig, TLSError, TLSStream


def self_signed(kind: str = "ecdsa-p256") -> tuple[bytes, bytes]:
    key = rsa.generate_private_key(65537, 2048) if kind == "rsa-2048" else \
        ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
            .sign(key, hashes.SHA256()))
    return (cert.public_bytes(serialization.Encoding.PEM),
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()))


def config(cert_pem: bytes, key_pem: bytes, **kw) -> ServerConfig:
    kw.setdefault("handshake_timeout_s", 10)
    return ServerConfig([CertificateEntry.from_pem(cert_pem, key_pem)], **kw)


@contextlib.asynccontextmanager
async def echo_server(cfg: ServerConfig, provider):
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    errors: list[BaseException] = []

    async def serve_one(stream):
        tls = TLSStream(stream, cfg, provider)
        try:
            await tls.do_handshake()
            while data := await tls.receive_some():
                if data.startswith(b"BIG "):
                    await tls.send_all(b"x" * int(data[4:]))
                else:
                    await tls.send_all(b"echo:" + data)
        except (TLSError, trio.BrokenResourceError) as exc:
            errors.append(exc)
        finally:
            await tls.aclose()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.serve_listeners, serve_one, listeners)
        yield port, errors
        nursery.cancel_scope.cancel()


def client_exchange(port: int, cert_pem: bytes, messages: list[bytes], timeout_s: float = 20) -> list[bytes]:
    """Blocking Python `ssl` client (run it in a thread): one connection,
    send each message, read the reply (``BIG n`` replies are n bytes)."""
    ctx = ssl.create_default_context(cadata=cert_pem.decode())
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    out = []
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost") as s:
            for m in messages:
                s.sendall(m)
                want = int(m[4:]) if m.startswith(b"BIG ") else len(m) + 5
                buf = b""
                while len(buf) < want:
                    chunk = s.recv(65536)
                    if not chunk:
                        break
                    buf += chunk
                out.append(buf)
    return out


class ClientLoop:
    """Sequential TLS connections from a thread until stopped (bounded)."""

    def __init__(self, port, cert, max_connections=400):
        self.port, self.cert, self.max = port, cert, max_connections
        self.ok = 0
        self.errors: list[BaseException] = []
        self.stop = threading.Event()

    def run(self):
        while not self.stop.is_set() and self.ok < self.max:
            try:
                got = client_exchange(self.port, self.cert, [b"hi", b"BIG 100000"])
                if got != [b"echo:hi", b"x" * 100000]:
                    raise AssertionError(f"wrong reply {[len(g) for g in got]}")
                self.ok += 1
            except Exception as exc:  # noqa: BLE001 - recorded and asserted on
                self.errors.append(exc)
                return

    async def more(self, n, timeout_s=30):
        target = self.ok + n
        with trio.fail_after(timeout_s):
            while self.ok < target:
                assert not self.errors, self.errors
                await trio.sleep(0.02)


async def until(pred, timeout_s=20):
    with trio.fail_after(timeout_s):
        while not await pred():
            await trio.sleep(0.05)
