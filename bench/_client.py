"""Fixed-rate latency client (trio + stdlib ssl): what h2load cannot express.

    python bench/_client.py --port P [--rate 200] [--seconds 3] [--conns 8] [--path /]

Sends small GETs on ``--conns`` keep-alive TLS connections at a fixed total
rate: request *i* is due at ``start + i / rate`` and goes out on whichever
connection is idle (open loop). Latency is measured from the time the
request was *due*, not sent, so a stalled proxy cannot hide its stall by
slowing the client down (no coordinated omission). A request that finds no
idle connection waits for one, and that wait counts.

Prints one JSON line: ``{"sent", "ok", "errors", "p50_ms", "p99_ms",
"max_ms", "achieved_rps"}``. Bounded: stops sending at ``--seconds`` and
gives in-flight requests at most 10 s more.
"""
from __future__ import annotations

import argparse
import json
import ssl
import sys
import time

import trio

TAIL_S = 10.0


def percentile(samples: list[float], q: float) -> float:
    if not samples:
        return float("nan")
    s = sorted(samples)
    return s[min(len(s) - 1, int(q * len(s)))]


class Conn:
    def __init__(self, stream: trio.SSLStream) -> None:
        self.stream = stream
        self.buf = b""

    async def request(self, path: str) -> None:
        await self.stream.send_all(f"GET {path} HTTP/1.1\r\nhost: localhost\r\n\r\n".encode())
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end >= 0:
                head = self.buf[:end].lower()
                status = head[9:12]
                i = head.find(b"content-length:")
                n = int(head[i + 15:].split(b"\r\n", 1)[0]) if i >= 0 else 0
                if len(self.buf) >= end + 4 + n:
                    self.buf = self.buf[end + 4 + n:]
                    if status != b"200":
                        raise RuntimeError(f"status {status!r}")
                    return
            data = await self.stream.receive_some(65536)
            if not data:
                raise EOFError("server closed")
            self.buf += data


async def run(port: int, rate: float, seconds: float, conns: int, path: str) -> dict:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    idle_send, idle_recv = trio.open_memory_channel[Conn](conns)
    for _ in range(conns):
        tcp = await trio.open_tcp_stream("127.0.0.1", port)
        stream = trio.SSLStream(tcp, ctx, server_hostname="localhost", https_compatible=True)
        await stream.do_handshake()
        conn = Conn(stream)
        await conn.request(path)  # warm: the first request pays for upstream connection setup
        idle_send.send_nowait(conn)
    lat: list[float] = []
    errors: list[str] = []
    sent = 0

    async def one(due: float) -> None:
        conn = await idle_recv.receive()
        try:
            await conn.request(path)
        except Exception as exc:  # noqa: BLE001 - counted and reported; the connection is dropped
            errors.append(f"{type(exc).__name__}: {exc}"[:200])
            return
        lat.append(time.perf_counter() - due)
        idle_send.send_nowait(conn)

    start = time.perf_counter()
    with trio.move_on_after(seconds + TAIL_S):
        async with trio.open_nursery() as nursery:
            while True:
                due = start + sent / rate
                if due - start >= seconds:
                    break
                now = time.perf_counter()
                if due > now:
                    await trio.sleep(due - now)
                nursery.start_soon(one, due)
                sent += 1
    elapsed = time.perf_counter() - start
    return {"sent": sent, "ok": len(lat), "errors": len(errors), "error_sample": errors[:3],
            "p50_ms": percentile(lat, 0.50) * 1e3, "p99_ms": percentile(lat, 0.99) * 1e3,
            "max_ms": max(lat, default=float("nan")) * 1e3, "achieved_rps": len(lat) / elapsed}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--conns", type=int, default=8)
    parser.add_argument("--path", default="/")
    args = parser.parse_args(argv)
    print(json.dumps(trio.run(run, args.port, args.rate, args.seconds, args.conns, args.path)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
