"""Server-side CPU per full TLS 1.3 handshake (and TLS 1.2 beside it): vcproxy.tls with the inline provider.

Client and server run in memory in one thread. The client runs *inside* the
server transport's ``send_all``, with the server's CPU clock (thread time)
paused, so only server work is counted: the trio adapter, the sans-IO
handshake, the record layer and the provider's crypto. Two clients: a lean
TLS 1.3 client on our own codec (the headline number) and Python's ``ssl``
over ``MemoryBIO`` (a real, verifying client; its OpenSSL work between the
server's steps makes the server's share slower through cold caches).
Beside them, in the same run: the public-key crypto floor (X25519 keygen +
exchange and one signature through ``cryptography``), the sans-IO core
alone (state machine plus that crypto, no trio adapter or records) and the
state machine without any crypto (fixed results replayed).

The NewSessionTicket is sealed with the server's first write (in that
write's provider batch), not inside ``do_handshake``: "first write" is the
CPU of that first ``send_all`` (a 100-byte response plus the ticket), so the
cost of a connection's start is handshake + first write.

Usage: python bench/tls_handshake.py [--count N] [--rounds R] [--client-process] [--json]
"""
from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import ssl
import statistics
import sys
import time
from pathlib import Path

import trio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, x25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.x509.oid import NameOID

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from vcproxy.tls import CertificateEntry, InlineProvider, ServerConfig, TLSStream  # noqa: E402

cpu_ns = time.thread_time_ns


def make_cert(key) -> tuple[bytes, bytes]:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(1)
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), False)
            .sign(key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    return (cert.public_bytes(pem),
            key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))


class _ClientInTransport(trio.abc.Stream):
    """The server's transport: its writes go straight into an in-memory client,
    whose CPU time is excluded from ``server_ns``."""

    def __init__(self):
        self.to_server = bytearray()
        self.client_done = False
        self.server_ns = 0
        self._started = 0

    def start(self) -> None:
        self._started = cpu_ns()

    def stop(self) -> None:
        self.server_ns += cpu_ns() - self._started

    def _step(self, data: bytes) -> None:
        raise NotImplementedError

    async def send_all(self, data) -> None:
        self.stop()
        self._step(bytes(data))
        self.start()

    async def receive_some(self, max_bytes=None) -> bytes:
        if not self.to_server:
            raise RuntimeError("client has nothing more to say")
        data = bytes(self.to_server)
        self.to_server.clear()
        return data

    async def wait_send_all_might_not_block(self) -> None:
        pass

    async def aclose(self) -> None:
        pass


class ClientInTransport(_ClientInTransport):
    """Python's ssl (OpenSSL) client over MemoryBIO: verifies the signature, so
    its OpenSSL work runs between the server's steps on the same core."""

    def __init__(self, context: ssl.SSLContext):
        super().__init__()
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.client = context.wrap_bio(self.incoming, self.outgoing, server_hostname="localhost")
        self._step(b"")  # ClientHello (before the clock starts)

    def _step(self, data: bytes) -> None:
        if data:
            self.incoming.write(data)
        if not self.client_done:
            try:
                self.client.do_handshake()
                self.client_done = True
            except ssl.SSLWantReadError:
                pass
        self.to_server += self.outgoing.read()


class LeanClientInTransport(_ClientInTransport):
    """A minimal TLS 1.3 client (x25519, AES-128-GCM) on our own codec: does
    the key exchange and Finished but checks no certificate, so little client
    work sits between the server's steps (a remote client leaves the server's
    caches alone)."""

    def __init__(self):
        super().__init__()
        from vcproxy.tls import _codec as c
        from vcproxy.tls._record import RecordSplitter

        self.key = x25519.X25519PrivateKey.generate()
        share = self.key.public_key().public_bytes_raw()
        exts = (c.extension(c.EXT_SERVER_NAME, c.vec16(b"\x00" + c.vec16(b"localhost")))
                + c.extension(c.EXT_SUPPORTED_VERSIONS, b"\x02\x03\x04")
                + c.extension(c.EXT_SUPPORTED_GROUPS, c.vec16(b"\x00\x1d"))
                + c.extension(c.EXT_SIGNATURE_ALGORITHMS, c.vec16(bytes.fromhex("040308040807")))
                + c.extension(c.EXT_KEY_SHARE, c.vec16(b"\x00\x1d" + c.vec16(share)))
                + c.extension(c.EXT_ALPN, c.vec16(c.vec8(b"http/1.1")))
                + c.extension(c.EXT_PSK_KEY_EXCHANGE_MODES, b"\x01\x01"))
        body = (b"\x03\x03" + os.urandom(32) + c.vec8(os.urandom(32)) + c.vec16(b"\x13\x01")
                + b"\x01\x00" + c.vec16(exts))
        hello = c.handshake(c.CLIENT_HELLO, body)
        self.transcript = hashlib.sha256(hello)
        self.to_server += b"\x16\x03\x01" + len(hello).to_bytes(2, "big") + hello
        self.splitter = RecordSplitter()
        self.read = self.client_hs = None
        self.messages = b""

    def _step(self, data: bytes) -> None:
        from vcproxy.tls import _codec as c
        from vcproxy.tls._keyschedule import SUITES, EarlySecret, finished_verify_data, traffic_key_iv

        suite = SUITES["TLS_AES_128_GCM_SHA256"]
        self.splitter.feed(data)
        while (record := self.splitter.next_record()) is not None:
            ctype, header, payload = record
            if self.client_done or ctype == 20:
                continue
            if ctype == 22:  # ServerHello
                self.transcript.update(payload)
                peer = payload[-38 - 6:-6][-32:]  # key_share is the first extension
                shared = self.key.exchange(x25519.X25519PublicKey.from_public_bytes(peer))
                hs = EarlySecret(suite).into_handshake(shared)
                self.client_hs, server_hs = hs.traffic_secrets(self.transcript.digest())
                key, iv = traffic_key_iv(suite, server_hs)
                self.read, self.read_iv, self.read_seq = AESGCM(key), iv, 0
                continue
            nonce = (int.from_bytes(self.read_iv, "big") ^ self.read_seq).to_bytes(12, "big")
            self.read_seq += 1
            inner = self.read.decrypt(nonce, payload, header).rstrip(b"\x00")
            self.messages += inner[:-1]
            while len(self.messages) >= 4:
                n = 4 + int.from_bytes(self.messages[1:4], "big")
                msg, self.messages = self.messages[:n], self.messages[n:]
                if msg[0] == c.FINISHED:
                    self.transcript.update(msg)
                    fin = c.finished(finished_verify_data(suite, self.client_hs,
                                                          self.transcript.digest()))
                    key, iv = traffic_key_iv(suite, self.client_hs)
                    inner = fin + b"\x16"
                    head = b"\x17\x03\x03" + (len(inner) + 16).to_bytes(2, "big")
                    self.to_server += head + AESGCM(key).encrypt(iv, inner, head)
                    self.client_done = True
                    break
                self.transcript.update(msg)


_CLIENT_LOOP = """
import socket, ssl, sys
port, count = int(sys.argv[1]), int(sys.argv[2])
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.minimum_version = ssl.TLSVersion.TLSv1_3
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
ctx.set_alpn_protocols(["http/1.1"])
for _ in range(count):
    with socket.create_connection(("127.0.0.1", port)) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost") as tls:
            tls.recv(1)  # the server closes after its handshake
"""


async def server_handshakes_client_process(config: ServerConfig, count: int) -> list[float]:
    """The same handshakes with the client in another process over loopback TCP:
    the server's thread CPU time from accept to handshake done (trio's socket
    I/O included, the client's work on another core excluded)."""
    provider = InlineProvider()
    samples: list[float] = []
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.run_process, [sys.executable, "-c", _CLIENT_LOOP, str(port), str(count)])
        for _ in range(count):
            stream = await listeners[0].accept()
            t0 = cpu_ns()
            server = TLSStream(stream, config, provider)
            await server.do_handshake()
            samples.append((cpu_ns() - t0) / 1000)
            await server.aclose()
    await listeners[0].aclose()
    return samples


def client_context(tls12: bool = False) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if tls12:
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    else:
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # server cost only; the client skips chain checks
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


class TimedInlineProvider(InlineProvider):
    """InlineProvider that clocks its public-key operations: the same crypto as
    the floor, timed where it really runs (between the handshake's Python)."""

    def __init__(self):
        self.pk_ns = 0

    async def key_exchange(self, group, peer_public, *, private_key=None):
        t0 = cpu_ns()
        result = await super().key_exchange(group, peer_public, private_key=private_key)
        self.pk_ns += cpu_ns() - t0
        return result

    async def sign(self, key, scheme, message):
        t0 = cpu_ns()
        result = await super().sign(key, scheme, message)
        self.pk_ns += cpu_ns() - t0
        return result


async def server_handshakes(config: ServerConfig, count: int, lean: bool = False,
                            in_situ: list[float] | None = None,
                            first_write: list[float] | None = None,
                            tls12: bool = False) -> list[float]:
    # The clocked provider only when in-situ crypto is asked for: its four
    # clock reads (~1 µs each here) would otherwise sit in the headline.
    provider = TimedInlineProvider() if in_situ is not None else InlineProvider()
    ctx = client_context(tls12)
    samples = []
    for _ in range(count):
        transport = LeanClientInTransport() if lean else ClientInTransport(ctx)
        server = TLSStream(transport, config, provider)
        if in_situ is not None:
            provider.pk_ns = 0
        transport.start()
        await server.do_handshake()
        transport.stop()
        if not transport.client_done or server.alpn_protocol != "http/1.1" or server.resumed \
                or server.version != ("TLSv1.2" if tls12 else "TLSv1.3"):
            raise RuntimeError("handshake did not complete")
        samples.append(transport.server_ns / 1000)
        if in_situ is not None:
            in_situ.append(provider.pk_ns / 1000)
        if first_write is not None:
            transport.server_ns = 0
            transport.start()
            await server.send_all(b"x" * 100)  # carries the ticket too
            transport.stop()
            first_write.append(transport.server_ns / 1000)
    return samples


def _done(coroutine):
    """Result of a coroutine that never suspends (the inline provider's)."""
    try:
        coroutine.send(None)
    except StopIteration as stop:
        return stop.value
    raise RuntimeError("provider suspended")


def state_machine_only(config: ServerConfig, count: int) -> list[float]:
    """The sans-IO handshake with the same crypto, no trio adapter, no records:
    where the adapter's share of the time can be read off."""
    from vcproxy.tls._handshake import Epoch, ServerHandshake

    provider = InlineProvider()
    ctx = client_context()
    samples = []
    for _ in range(count):
        hello = bytes(ClientInTransport(ctx).to_server)[5:]
        t0 = cpu_ns()
        hs = ServerHandshake(config, random_bytes=provider.random_bytes, now_s=time.time)
        kx = hs.receive_message(Epoch.INITIAL, hello)[-1]
        own, shared = _done(provider.key_exchange(kx.group, kx.peer_public))
        sign = hs.key_exchange_done(own, shared)[-1]
        key = sign.certificate.signing_key(provider)
        hs.signature_done(_done(provider.sign(key, sign.scheme, sign.message)))
        samples.append((cpu_ns() - t0) / 1000)
    return samples


def state_machine_alone(config: ServerConfig, count: int) -> list[float]:
    """The sans-IO handshake with no crypto at all (fixed randoms, key exchange
    result and signature), ClientHello to the client's Finished, the traffic
    keys of every InstallKeys expanded (as TLSStream does): the state machine,
    key schedule and codec alone (vcproxy/tls/_handshake.py and friends), the
    same hello each time, so differences of a few µs show."""
    from vcproxy.tls._codec import finished
    from vcproxy.tls._handshake import Epoch, HandshakeComplete, InstallKeys, ServerHandshake
    from vcproxy.tls._keyschedule import finished_verify_data, traffic_key_iv

    hello = bytes(ClientInTransport(client_context()).to_server)[5:]
    own, shared, signature = b"\x09" * 32, b"\x0a" * 32, b"\x0b" * 71

    def one(client_finished):
        hs = ServerHandshake(config, random_bytes=lambda n: b"\x07" * n, now_s=time.time)
        out = hs.receive_message(Epoch.INITIAL, hello)
        out += hs.key_exchange_done(own, shared)
        out += hs.signature_done(signature)
        if client_finished is None:  # what the client sends for this fixed transcript
            read = [c for c in out if type(c) is InstallKeys and c.direction == "read"][0]
            return finished(finished_verify_data(read.suite, read.secret, hs.transcript_hash))
        out += hs.receive_message(Epoch.HANDSHAKE, client_finished)
        for cmd in out:
            if type(cmd) is InstallKeys:
                traffic_key_iv(cmd.suite, cmd.secret)
        assert type(out[-1]) is HandshakeComplete
        return None

    fin = one(None)
    samples = []
    for _ in range(count):
        t0 = cpu_ns()
        for _ in range(10):  # (one is ~60 µs: ten per clock read)
            one(fin)
        samples.append((cpu_ns() - t0) / 10000)
    return samples


def crypto_floor(key, scheme: str, count: int) -> list[float]:
    """X25519 keygen + exchange + one signature, as one server handshake needs."""
    peer = x25519.X25519PrivateKey.generate().public_key()
    message = b" " * 64 + b"TLS 1.3, server CertificateVerify\x00" + bytes(32)
    samples = []
    for _ in range(count):
        t0 = cpu_ns()
        x25519.X25519PrivateKey.generate().exchange(peer)
        if scheme == "ecdsa":
            key.sign(message, ec.ECDSA(hashes.SHA256()))
        else:
            key.sign(message, padding.PSS(padding.MGF1(hashes.SHA256()), 32), hashes.SHA256())
        samples.append((cpu_ns() - t0) / 1000)
    return samples


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=400, help="handshakes per key type")
    parser.add_argument("--rounds", type=int, default=5, help="rounds; the quietest is reported")
    parser.add_argument("--client-process", action="store_true",
                        help="also measure with the client in a subprocess over loopback TCP")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    results = {}
    for label, key, scheme, count in (
            ("ECDSA P-256", ec.generate_private_key(ec.SECP256R1()), "ecdsa", args.count),
            ("RSA-2048", rsa.generate_private_key(65537, 2048), "rsa", max(args.count // 4, 20))):
        chain, key_pem = make_cert(key)
        config = ServerConfig([CertificateEntry.from_pem(chain, key_pem)],
                              alpn_protocols=["http/1.1"], groups=["x25519"])
        trio.run(server_handshakes, config, 20, True)     # warm up
        trio.run(server_handshakes, config, 20)
        crypto_floor(key, scheme, 20)
        # Each round runs every measurement back to back, so all see the same
        # machine load; the quietest round (lowest server median) is reported,
        # since this machine is shared.
        per_round = max(count // args.rounds, 10)
        rounds = []
        for _ in range(args.rounds):
            in_situ: list[float] = []
            first_write: list[float] = []
            trio.run(server_handshakes, config, per_round, True, in_situ, first_write)
            m = {"server": trio.run(server_handshakes, config, per_round, True),
                 "openssl_client": trio.run(server_handshakes, config, per_round),
                 "tls12_openssl_client": trio.run(server_handshakes, config, per_round, False,
                                                  None, None, True),
                 "floor": crypto_floor(key, scheme, per_round),
                 "core": state_machine_only(config, per_round),
                 "machine": state_machine_alone(config, per_round)}
            m["in_situ"] = in_situ
            m["first_write"] = first_write
            if args.client_process:
                m["client_process"] = trio.run(server_handshakes_client_process, config, per_round)
            rounds.append({k: statistics.median(v) for k, v in m.items()} | {"all": m["server"]})
        best = min(rounds, key=lambda r: r["server"])
        all_server = [x for r in rounds for x in r["all"]]
        r = results[label] = {
            "handshakes": per_round * args.rounds,
            "server_cpu_us_median": round(best["server"], 1),
            "server_cpu_us_median_all_rounds": round(statistics.median(all_server), 1),
            "server_cpu_us_p90_all_rounds": round(statistics.quantiles(all_server, n=10)[-1], 1),
            "crypto_floor_us_median": round(best["floor"], 1),
            "pk_crypto_in_handshake_us_median": round(best["in_situ"], 1),
            "sans_io_core_us_median": round(best["core"], 1),
            "state_machine_us_median": round(best["machine"], 1),
            "first_write_with_ticket_us_median": round(best["first_write"], 1),
            "with_openssl_client_interleaved_us_median": round(best["openssl_client"], 1),
            "tls12_with_openssl_client_us_median": round(best["tls12_openssl_client"], 1),
        }
        if args.client_process:
            r["client_process_tcp_us_median"] = round(best["client_process"], 1)
        r["above_floor_us"] = round(r["server_cpu_us_median"] - r["crypto_floor_us_median"], 1)
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    print("server CPU µs per full TLS 1.3 handshake (X25519, TLS_AES_128_GCM_SHA256, ALPN,")
    print("session ticket, inline provider), medians of the quietest round")
    cols = [("server", "server_cpu_us_median"), ("(all rounds)", "server_cpu_us_median_all_rounds"),
            ("crypto floor", "crypto_floor_us_median"),
            ("crypto in situ", "pk_crypto_in_handshake_us_median"),
            ("above floor", "above_floor_us"),
            ("sans-IO core", "sans_io_core_us_median"),
            ("state machine", "state_machine_us_median"),
            ("first write", "first_write_with_ticket_us_median"),
            ("w/ OpenSSL client", "with_openssl_client_interleaved_us_median"),
            ("TLS 1.2 w/ OpenSSL", "tls12_with_openssl_client_us_median")]
    if args.client_process:
        cols.append(("client process+TCP", "client_process_tcp_us_median"))
    print(f"{'cert':<12} {'n':>5} " + " ".join(f"{name:>18}" for name, _ in cols))
    for label, r in results.items():
        print(f"{label:<12} {r['handshakes']:>5} " + " ".join(f"{r[k]:>18}" for _, k in cols))
    print("""
server             TLSStream over an in-memory transport; the client (a lean TLS 1.3
                   client on our codec) runs inside the transport with the clock paused
crypto floor       X25519 keygen + exchange + one signature through `cryptography`,
                   in a tight loop (hot caches)
crypto in situ     the same two provider calls timed inside handshakes like "server"
                   (a separate pass, so the clock reads stay out of "server"): the
                   gap to the floor is what the rest of the handshake costs them
sans-IO core       the state machine with the same crypto: no trio adapter, no records
state machine      the sans-IO handshake without crypto (fixed key exchange result and
                   signature; to the client Finished, traffic keys expanded)
first write        the first send_all after the handshake (100 B + the session ticket,
                   sealed in one provider batch), timed in the "crypto in situ" pass
w/ OpenSSL client  as "server", with Python's ssl client (verifying the signature)
                   instead: its OpenSSL work between the server's steps cools the
                   server's caches on the same core (a remote client would not)
TLS 1.2 w/ OpenSSL the same with the client capped at TLS 1.2: a full TLS 1.2 handshake
                   (ECDHE-ECDSA/RSA-AES128-GCM-SHA256, extended master secret, ticket)""")
    if args.client_process:
        print("client process+TCP  the ssl client in a subprocess over loopback TCP; server CPU\n"
              "                   from accept to handshake done, trio socket I/O included")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
