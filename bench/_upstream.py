"""The benchmark's origin server: as little work per request as Python allows.

    python bench/_upstream.py [--port 0]

Prints one JSON line ``{"port": N, "pids": [...]}`` when it listens. It
answers every ``GET`` from prebuilt bytes, with keep-alive:

- ``/bytes?n=N`` N bytes (``N`` up to 16 MiB, one random buffer sliced),
- anything else a 64-byte body (the "small request").

Why not the demo upstream: it parses with h11 and generates its bytes per
request, which costs more CPU than the proxies under test on small requests;
a slow origin would compress every configuration's numbers toward the same
ceiling. Here a request costs one ``recv``, a ``find`` and one ``send``.
Every configuration in a run talks to the same upstream, so its cost is a
constant of the run, not of any one proxy.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import sys

import trio

SMALL_BODY = b"x" * 63 + b"\n"
MAX_BYTES = 16 * 1024 * 1024
_BLOB = os.urandom(MAX_BYTES)
_SMALL = (b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: %d\r\n\r\n"
          % len(SMALL_BODY)) + SMALL_BODY
_HEADS: dict[int, bytes] = {}


def response_for(target: bytes) -> tuple[bytes, memoryview | None]:
    """(head, body) for a request target; small responses are one buffer."""
    if target.startswith(b"/bytes?n="):
        try:
            n = min(int(target[9:].split(b"&", 1)[0]), MAX_BYTES)
        except ValueError:
            n = 0
        head = _HEADS.get(n)
        if head is None:
            head = _HEADS[n] = (b"HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\n"
                                b"content-length: %d\r\n\r\n" % n)
        return head, memoryview(_BLOB)[:n]
    return _SMALL, None


async def serve_conn(sock: trio.socket.SocketType) -> None:
    buf = b""
    try:
        while True:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                data = await sock.recv(65536)
                if not data:
                    return
                buf += data
                continue
            head, buf = buf[:end], buf[end + 4:]
            # bodies are not expected (GET only); a content-length body is skipped
            lower = head.lower()
            cl = lower.find(b"content-length:")
            if cl >= 0:
                n = int(lower[cl + 15:].split(b"\r\n", 1)[0])
                while len(buf) < n:
                    data = await sock.recv(65536)
                    if not data:
                        return
                    buf += data
                buf = buf[n:]
            target = head.split(b" ", 2)[1] if head.count(b" ") >= 2 else b"/"
            first, body = response_for(target)
            if body is None:
                await sock.send(first)
            else:
                await sock.send(first)
                view, sent = body, 0
                while sent < len(view):
                    sent += await sock.send(view[sent:sent + (1 << 20)])
            if b"connection: close" in lower:
                return
    except OSError:
        return
    finally:
        sock.close()


async def serve(listener: socket.socket) -> None:
    lsock = trio.socket.from_stdlib_socket(listener)
    async with trio.open_nursery() as nursery:
        while True:
            conn, _ = await lsock.accept()
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            nursery.start_soon(serve_conn, conn)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", args.port))
    listener.listen(1024)
    print(json.dumps({"port": listener.getsockname()[1], "pids": [os.getpid()]}), flush=True)
    try:
        trio.run(serve, listener)
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
