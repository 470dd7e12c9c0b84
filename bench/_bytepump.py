"""The L4 baseline of the one-core mode: a trio + stdlib ``ssl`` TLS byte pump.

    python bench/_bytepump.py --listen NAME=CERT,KEY [--listen ...] --upstream 127.0.0.1:P [--no-tickets]

One process. Each accepted connection gets a ``trio.SSLStream`` (OpenSSL does
the handshake and the records in C) and its own plain TCP connection to the
upstream, opened after the handshake; bytes are copied both ways
(``receive_some`` -> ``send_all``) until either side ends. No HTTP parsing, no
pooling, no limits: the least a trio program that terminates TLS in front of
an origin can do, so a proxy's CPU per unit divided by this one's says what
its own work costs on top of "TLS in C + trio + the kernel".

Prints one JSON line ``{"ports": {NAME: N}, "pids": [pid]}`` once it listens.
TLS 1.3 only, ALPN http/1.1, as the proxies under test serve.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import ssl
import sys

import trio

CHUNK_BYTES = 256 * 1024


async def _copy(src: trio.abc.Stream, dst: trio.abc.Stream, done: trio.CancelScope) -> None:
    try:
        while True:
            data = await src.receive_some(CHUNK_BYTES)
            if not data:
                break
            await dst.send_all(data)
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        pass
    done.cancel()  # either direction ending ends the connection (the clients here close or keep alive)


async def handle(sock: trio.socket.SocketType, ctx: ssl.SSLContext, upstream: tuple[str, int]) -> None:
    # https_compatible=False: close_notify is sent on close (OpenSSL 3 clients want it)
    stream = trio.SSLStream(trio.SocketStream(sock), ctx, server_side=True)
    up = None
    try:
        await stream.do_handshake()
        up = await trio.open_tcp_stream(*upstream)
        up.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_copy, stream, up, nursery.cancel_scope)
            nursery.start_soon(_copy, up, stream, nursery.cancel_scope)
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        pass
    finally:
        with trio.move_on_after(1) as scope:
            scope.shield = True
            if up is not None:
                await up.aclose()
            try:
                await stream.aclose()
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                pass


async def accept_loop(listener: socket.socket, ctx: ssl.SSLContext, upstream: tuple[str, int]) -> None:
    lsock = trio.socket.from_stdlib_socket(listener)
    async with trio.open_nursery() as nursery:
        while True:
            conn, _ = await lsock.accept()
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            nursery.start_soon(handle, conn, ctx, upstream)


async def serve(listeners: list[tuple[socket.socket, ssl.SSLContext]], upstream: tuple[str, int]) -> None:
    async with trio.open_nursery() as nursery:
        for listener, ctx in listeners:
            nursery.start_soon(accept_loop, listener, ctx, upstream)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", action="append", required=True, metavar="NAME=CERT,KEY")
    parser.add_argument("--upstream", required=True, help="HOST:PORT")
    parser.add_argument("--no-tickets", action="store_true", help="issue no session tickets")
    args = parser.parse_args(argv)
    host, _, port = args.upstream.rpartition(":")
    listeners, ports = [], {}
    for spec in args.listen:
        name, _, files = spec.partition("=")
        cert, _, key = files.partition(",")
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        ctx.load_cert_chain(cert, key)
        ctx.set_alpn_protocols(["http/1.1"])
        if args.no_tickets:
            ctx.num_tickets = 0
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", 0))
        listener.listen(1024)
        listeners.append((listener, ctx))
        ports[name] = listener.getsockname()[1]
    print(json.dumps({"ports": ports, "pids": [os.getpid()]}), flush=True)
    try:
        trio.run(serve, listeners, (host, int(port)))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
