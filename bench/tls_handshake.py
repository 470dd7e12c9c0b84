"""Server-side CPU per full TLS 1.3 handshake: vcproxy.tls with the inline provider.

Client and server run in memory in one thread. The client is Python's ``ssl``
over ``MemoryBIO``; it runs *inside* the server transport's ``send_all``, with
the server's CPU clock paused, so only server work is counted: the trio
adapter, the sans-IO handshake, the record layer and the provider's crypto.
Beside it, the public-key crypto floor measured in the same run: what one
server handshake's X25519 keygen + exchange and one signature cost alone
through ``cryptography``.

Usage: python bench/tls_handshake.py [--count N] [--rounds R] [--client-process] [--json]
"""
from __future__ import annotations

import argparse
import datetime
import json
import ssl
import statistics
import sys
import time
from pathlib import Path

import trio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, x25519
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


class ClientInTransport(trio.abc.Stream):
    """The server's transport: its writes go straight into an ssl client,
    whose CPU time is excluded from ``server_ns``."""

    def __init__(self, context: ssl.SSLContext):
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.client = context.wrap_bio(self.incoming, self.outgoing, server_hostname="localhost")
        self.to_server = bytearray()
        self.client_done = False
        self._step()  # ClientHello (before the clock starts)
        self.server_ns = 0
        self._started = None

    def _step(self) -> None:
        if not self.client_done:
            try:
                self.client.do_handshake()
                self.client_done = True
            except ssl.SSLWantReadError:
                pass
        self.to_server += self.outgoing.read()

    def start(self) -> None:
        self._started = cpu_ns()

    def stop(self) -> None:
        self.server_ns += cpu_ns() - self._started

    async def send_all(self, data) -> None:
        self.stop()
        self.incoming.write(bytes(data))
        self._step()
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


def client_context() -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # server cost only; the client skips chain checks
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


async def server_handshakes(config: ServerConfig, count: int) -> list[float]:
    provider = InlineProvider()
    ctx = client_context()
    samples = []
    for _ in range(count):
        transport = ClientInTransport(ctx)
        server = TLSStream(transport, config, provider)
        transport.start()
        await server.do_handshake()
        transport.stop()
        if not transport.client_done or server.alpn_protocol != "http/1.1":
            raise RuntimeError("handshake did not complete")
        samples.append(transport.server_ns / 1000)
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
        trio.run(server_handshakes, config, 20)           # warm up
        crypto_floor(key, scheme, 20)
        # Rounds alternate handshakes and floor so both see the same machine
        # load; the quietest round's medians are reported (this machine is shared).
        rounds = []
        per_round = max(count // args.rounds, 10)
        for _ in range(args.rounds):
            server = trio.run(server_handshakes, config, per_round)
            floor = crypto_floor(key, scheme, per_round)
            core = state_machine_only(config, per_round)
            remote = (trio.run(server_handshakes_client_process, config, per_round)
                      if args.client_process else [float("nan")])
            rounds.append((statistics.median(server), statistics.median(floor), server,
                           statistics.median(core), statistics.median(remote)))
        best = min(rounds, key=lambda r: r[0])
        all_server = [x for r in rounds for x in r[2]]
        results[label] = {
            "handshakes": per_round * args.rounds,
            "server_cpu_us_median": round(best[0], 1),
            "server_cpu_us_median_all_rounds": round(statistics.median(all_server), 1),
            "server_cpu_us_p90": round(statistics.quantiles(all_server, n=10)[-1], 1),
            "crypto_floor_us_median": round(best[1], 1),
            "state_machine_only_us_median": round(best[3], 1),
            "client_process_tcp_us_median": round(best[4], 1),
        }
        results[label]["overhead_us"] = round(
            results[label]["server_cpu_us_median"] - results[label]["crypto_floor_us_median"], 1)
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    print("server CPU per full TLS 1.3 handshake (X25519, TLS_AES_128_GCM_SHA256, ALPN, "
          "inline provider)")
    print(f"{'cert':<12} {'n':>5} {'server µs (best round)':>22} {'all rounds':>11} {'p90':>7} "
          f"{'crypto floor µs':>16} {'above floor':>12} {'sans-IO core µs':>16} "
          f"{'client in own process µs':>25}")
    for label, r in results.items():
        print(f"{label:<12} {r['handshakes']:>5} {r['server_cpu_us_median']:>22} "
              f"{r['server_cpu_us_median_all_rounds']:>11} {r['server_cpu_us_p90']:>7} "
              f"{r['crypto_floor_us_median']:>16} {r['overhead_us']:>12} "
              f"{r['state_machine_only_us_median']:>16} {r['client_process_tcp_us_median']:>25}")
    print("sans-IO core: the state machine with the same crypto, no trio adapter or records.")
    if args.client_process:
        print("client in own process: the client over loopback TCP in a subprocess; server CPU")
        print("from accept to handshake done, trio socket I/O included.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
