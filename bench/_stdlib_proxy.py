"""Configuration (d): the TLS reverse proxy a Python user would write instead.

    python bench/_stdlib_proxy.py --listen NAME=CERT,KEY [--listen ...] --upstream 127.0.0.1:P [--workers 2]

trio's ``SSLStream`` over the stdlib ``ssl`` module (OpenSSL does the whole
TLS handshake and record layer in C), h11 on both sides, a small keep-alive
pool of upstream connections per worker. ``--workers`` processes are forked
from one parent after it built the ``SSLContext`` and bound the listening
socket, so all workers accept from one queue and share OpenSSL's session
ticket keys (made in ``SSL_CTX_new``): a ticket issued by one worker
resumes on another, as vcproxy's shared ticket keys do.

Each ``--listen`` is a loopback port (chosen by the kernel) with its own
certificate. Prints one JSON line ``{"ports": {NAME: N}, "pids": [parent,
workers...]}`` once the sockets listen. SIGTERM to the parent stops the workers, then the parent.
Deliberately minimal: TLS 1.3 only (as vcproxy serves), no limits, no
routing; a bad request or a dead upstream closes the client connection.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import ssl
import sys

import h11
import trio

HOP_BY_HOP = {b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer",
              b"transfer-encoding", b"upgrade"}
MAX_IDLE = 32


class _Stop(Exception):
    pass


class Upstream:
    """One h11 client connection to the origin."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.h11 = h11.Connection(h11.CLIENT)

    async def next_event(self):
        while True:
            event = self.h11.next_event()
            if event is h11.NEED_DATA:
                self.h11.receive_data(await self.stream.receive_some(65536))
                continue
            return event


class Pool:
    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.idle: list[Upstream] = []

    async def get(self) -> Upstream:
        if self.idle:
            return self.idle.pop()
        return Upstream(await trio.open_tcp_stream(self.host, self.port))

    def put(self, up: Upstream) -> None:
        if up.h11.our_state is h11.DONE and up.h11.their_state is h11.DONE and len(self.idle) < MAX_IDLE:
            up.h11.start_next_cycle()
            self.idle.append(up)
        else:
            up.stream.socket.close()


async def next_client_event(conn: h11.Connection, stream: trio.SSLStream):
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(await stream.receive_some(65536))
            continue
        return event


async def handle(sock: trio.socket.SocketType, ctx: ssl.SSLContext, pool: Pool) -> None:
    # https_compatible=False: close_notify is sent before closing; without it
    # OpenSSL 3 clients see an unexpected EOF and refuse to resume the session
    stream = trio.SSLStream(trio.SocketStream(sock), ctx, server_side=True)
    try:
        await stream.do_handshake()
        conn = h11.Connection(h11.SERVER)
        while True:
            req = await next_client_event(conn, stream)
            if not isinstance(req, h11.Request):
                return
            headers = [(k, v) for k, v in req.headers if k not in HOP_BY_HOP]
            if not any(k == b"host" for k, _ in headers):  # HTTP/1.0 clients (s_time) send none
                headers.append((b"host", b"localhost"))
            up = await pool.get()
            await up.stream.send_all(up.h11.send(h11.Request(method=req.method, target=req.target,
                                                              headers=headers)))
            while True:  # request body (none in the benchmark, but forward what comes)
                event = await next_client_event(conn, stream)
                if isinstance(event, h11.Data):
                    await up.stream.send_all(up.h11.send(h11.Data(data=event.data)))
                elif isinstance(event, h11.EndOfMessage):
                    await up.stream.send_all(up.h11.send(h11.EndOfMessage()))
                    break
                else:
                    return
            resp = await up.next_event()
            if not isinstance(resp, h11.Response):
                return
            out = [(k, v) for k, v in resp.headers if k not in HOP_BY_HOP]
            await stream.send_all(conn.send(h11.Response(status_code=resp.status_code, headers=out, reason=resp.reason)))
            while True:
                event = await up.next_event()
                if isinstance(event, h11.Data):
                    await stream.send_all(conn.send(h11.Data(data=event.data)))
                elif isinstance(event, h11.EndOfMessage):
                    await stream.send_all(conn.send(h11.EndOfMessage()))
                    break
                else:
                    return
            pool.put(up)
            if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                return
            conn.start_next_cycle()
    except (trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError, OSError):
        return
    finally:
        try:
            with trio.move_on_after(1):
                await stream.aclose()
        except Exception:  # noqa: BLE001 - closing a broken stream may fail, nothing left to do
            pass


async def accept_loop(listener: socket.socket, ctx: ssl.SSLContext, pool: Pool) -> None:
    lsock = trio.socket.from_stdlib_socket(listener)
    async with trio.open_nursery() as nursery:
        while True:
            try:
                conn, _ = await lsock.accept()
            except BlockingIOError:  # another worker took it (shared listening socket)
                continue
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            nursery.start_soon(handle, conn, ctx, pool)


async def serve(listeners: list[tuple[socket.socket, ssl.SSLContext]], upstream: tuple[str, int]) -> None:
    pool = Pool(*upstream)
    async with trio.open_nursery() as nursery:
        for listener, ctx in listeners:
            nursery.start_soon(accept_loop, listener, ctx, pool)


def make_context(cert: str, key: str, tickets: bool = True) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_cert_chain(cert, key)
    ctx.set_alpn_protocols(["http/1.1"])
    if not tickets:  # TLS 1.3: OpenSSL sends 2 NewSessionTickets after each handshake by default
        ctx.num_tickets = 0
    return ctx


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", action="append", required=True, metavar="NAME=CERT,KEY")
    parser.add_argument("--upstream", required=True, help="HOST:PORT")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--no-tickets", action="store_true", help="issue no session tickets")
    args = parser.parse_args(argv)
    host, _, port = args.upstream.rpartition(":")
    listeners, ports = [], {}
    for spec in args.listen:
        name, _, files = spec.partition("=")
        cert, _, key = files.partition(",")
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", 0))
        listener.listen(1024)
        listeners.append((listener, make_context(cert, key, tickets=not args.no_tickets)))
        ports[name] = listener.getsockname()[1]
    children = []
    for _ in range(args.workers):
        pid = os.fork()
        if pid == 0:
            try:
                trio.run(serve, listeners, (host, int(port)))
            finally:
                os._exit(0)
        children.append(pid)

    def stop(signum, frame):  # noqa: ARG001
        raise _Stop  # os.wait() retries on EINTR unless the handler raises

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(json.dumps({"ports": ports, "pids": [os.getpid(), *children]}), flush=True)
    try:
        while children:
            pid, _ = os.wait()
            children.remove(pid)  # a worker died: the benchmark sees its errors
    except (_Stop, ChildProcessError):
        pass
    for pid in children:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    for pid in children:
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
