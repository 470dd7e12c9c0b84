"""A small HTTP/1.1 origin server (trio + h11) for the demo and the tests.

``vcproxy demo-upstream --port 8080`` serves:

=====================  ====================================================
``GET /``              a greeting (what ``curl -k https://127.0.0.1:8443/`` shows)
``GET /headers``       the request head it received, as JSON
``GET /bytes?n=N``     N pseudo-random bytes from ``seed`` (default 0),
                       ``&chunked=1`` for chunked framing; the bytes are
                       ``random.Random(seed).randbytes`` in 64 KiB pieces,
                       so a client can recompute them (``expected_bytes``)
``POST|PUT /upload``   reads the body as it streams; answers JSON
                       ``{"bytes": n, "sha256": hex}``
``POST /echo``         streams the body back, chunked
``GET /slow?s=S``      waits S seconds before answering
``GET /health``        200 ``ok``
``GET /ws``            a WebSocket (RFC 6455) echo: each text or binary
                       message comes back as it was sent; ping gets pong,
                       close is answered with close
=====================  ====================================================

Keep-alive is supported. It is a demo: no limits beyond h11's own.
"""
from __future__ import annotations

import argparse
import base64
import hashlib
import json
import random
import signal
from urllib.parse import parse_qs, urlsplit

import h11
import trio

from vcproxy._log import JsonLog

PIECE_BYTES = 64 * 1024


def expected_pieces(n: int, seed: int = 0):
    rng = random.Random(seed)
    left = n
    while left > 0:
        size = min(PIECE_BYTES, left)
        yield rng.randbytes(size)
        left -= size


def expected_sha256(n: int, seed: int = 0) -> str:
    h = hashlib.sha256()
    for piece in expected_pieces(n, seed):
        h.update(piece)
    return h.hexdigest()


#: RFC 6455 §1.3: the GUID appended to Sec-WebSocket-Key before hashing.
WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
WS_MAX_MESSAGE_BYTES = 1 << 20


def ws_accept(key: bytes) -> bytes:
    """Sec-WebSocket-Accept for ``key`` (RFC 6455 §4.2.2 item 5.4)."""
    return base64.b64encode(hashlib.sha1(key.strip() + WS_GUID).digest())


def _ws_frame(opcode: int, payload: bytes) -> bytes:
    """One final, unmasked (server -> client) frame (RFC 6455 §5.2)."""
    n = len(payload)
    if n < 126:
        head = bytes([0x80 | opcode, n])
    elif n < 1 << 16:
        head = bytes([0x80 | opcode, 126]) + n.to_bytes(2, "big")
    else:
        head = bytes([0x80 | opcode, 127]) + n.to_bytes(8, "big")
    return head + payload


async def _ws_echo(stream: trio.SocketStream, buffered: bytes) -> None:
    """Echo messages until the client closes (fragmented messages reassembled)."""
    buf = bytearray(buffered)
    message = bytearray()
    message_opcode = 0

    async def need(n: int) -> None:
        while len(buf) < n:
            data = await stream.receive_some(PIECE_BYTES)
            if not data:
                raise trio.BrokenResourceError("client closed mid-frame")
            buf.extend(data)

    while True:
        await need(2)
        fin, opcode, masked, length = buf[0] & 0x80, buf[0] & 0x0F, buf[1] & 0x80, buf[1] & 0x7F
        offset = 2
        if length == 126:
            await need(4)
            length, offset = int.from_bytes(buf[2:4], "big"), 4
        elif length == 127:
            await need(10)
            length, offset = int.from_bytes(buf[2:10], "big"), 10
        if not masked or length > WS_MAX_MESSAGE_BYTES:  # §5.1: a client MUST mask
            await stream.send_all(_ws_frame(0x8, (1002).to_bytes(2, "big")))
            return
        await need(offset + 4 + length)
        mask = buf[offset:offset + 4]
        payload = bytes(b ^ mask[i % 4] for i, b in enumerate(buf[offset + 4:offset + 4 + length]))
        del buf[:offset + 4 + length]
        if opcode == 0x8:
            await stream.send_all(_ws_frame(0x8, payload[:2]))
            return
        if opcode == 0x9:
            await stream.send_all(_ws_frame(0xA, payload))
            continue
        if opcode == 0xA:
            continue
        if opcode in (0x1, 0x2):
            message_opcode = opcode
        message += payload
        if len(message) > WS_MAX_MESSAGE_BYTES:
            await stream.send_all(_ws_frame(0x8, (1009).to_bytes(2, "big")))
            return
        if fin:
            await stream.send_all(_ws_frame(message_opcode, bytes(message)))
            message.clear()


class _Conn:
    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.h11 = h11.Connection(h11.SERVER)

    async def next_event(self):
        while True:
            event = self.h11.next_event()
            if event is not h11.NEED_DATA:
                return event
            self.h11.receive_data(await self.stream.receive_some(PIECE_BYTES))

    async def send(self, event) -> None:
        data = self.h11.send(event)
        if data:
            await self.stream.send_all(data)

    async def respond(self, status: int, body: bytes, content_type: bytes = b"text/plain") -> None:
        await self.send(h11.Response(status_code=status, headers=[
            (b"content-type", content_type), (b"content-length", str(len(body)).encode())]))
        await self.send(h11.Data(data=body))
        await self.send(h11.EndOfMessage())


async def _body_pieces(conn: _Conn):
    while True:
        event = await conn.next_event()
        if isinstance(event, h11.Data):
            yield bytes(event.data)
        elif isinstance(event, h11.EndOfMessage):
            return
        else:
            raise h11.RemoteProtocolError(f"unexpected {type(event).__name__}")


class _Switched(Exception):
    """The connection left HTTP (a WebSocket session ended): close it."""


async def _handle(conn: _Conn, request: h11.Request) -> None:
    url = urlsplit(request.target.decode("latin-1"))
    query = {k: v[-1] for k, v in parse_qs(url.query).items()}
    method = request.method.decode()
    if url.path in ("/upload", "/echo") and method in ("POST", "PUT"):
        if url.path == "/upload":
            h, n = hashlib.sha256(), 0
            async for piece in _body_pieces(conn):
                h.update(piece)
                n += len(piece)
            body = json.dumps({"bytes": n, "sha256": h.hexdigest()}).encode()
            await conn.respond(200, body, b"application/json")
            return
        await conn.send(h11.Response(status_code=200, headers=[(b"transfer-encoding", b"chunked")]))
        async for piece in _body_pieces(conn):
            await conn.send(h11.Data(data=piece))
        await conn.send(h11.EndOfMessage())
        return
    async for _ in _body_pieces(conn):
        pass  # a GET may carry a body; drain it so keep-alive continues
    if url.path == "/ws":
        key = next((v for n, v in request.headers if n == b"sec-websocket-key"), None)
        upgrade = next((v for n, v in request.headers if n == b"upgrade"), b"")
        if key is None or upgrade.lower() != b"websocket":
            await conn.respond(426, b"WebSocket upgrade required\n")
            return
        await conn.send(h11.InformationalResponse(status_code=101, reason=b"Switching Protocols", headers=[
            (b"upgrade", b"websocket"), (b"connection", b"Upgrade"), (b"sec-websocket-accept", ws_accept(key))]))
        await _ws_echo(conn.stream, conn.h11.trailing_data[0])
        raise _Switched()
    if url.path == "/":
        await conn.respond(200, b"hello from the vcproxy demo upstream\n")
    elif url.path == "/health":
        await conn.respond(200, b"ok\n")
    elif url.path == "/headers":
        head = {"method": method, "target": request.target.decode("latin-1"),
                "headers": [[n.decode("latin-1"), v.decode("latin-1")] for n, v in request.headers]}
        await conn.respond(200, json.dumps(head).encode(), b"application/json")
    elif url.path == "/slow":
        await trio.sleep(float(query.get("s", "1")))
        await conn.respond(200, b"slow\n")
    elif url.path == "/bytes":
        n, seed = int(query.get("n", "0")), int(query.get("seed", "0"))
        framing = (b"transfer-encoding", b"chunked") if query.get("chunked") == "1" else (
            b"content-length", str(n).encode())
        await conn.send(h11.Response(status_code=200, headers=[
            (b"content-type", b"application/octet-stream"), framing]))
        for piece in expected_pieces(n, seed):
            await conn.send(h11.Data(data=piece))
        await conn.send(h11.EndOfMessage())
    else:
        await conn.respond(404, b"not found\n")


async def serve_connection(stream: trio.SocketStream) -> None:
    conn = _Conn(stream)
    try:
        while True:
            event = await conn.next_event()
            if not isinstance(event, h11.Request):
                return
            await _handle(conn, event)
            if conn.h11.our_state is not h11.DONE or conn.h11.their_state is not h11.DONE:
                return
            conn.h11.start_next_cycle()
    except (_Switched, h11.ProtocolError, trio.BrokenResourceError, trio.ClosedResourceError, OSError, ValueError):
        return
    finally:
        with trio.CancelScope(shield=True):
            await stream.aclose()


async def serve(host: str, port: int, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
    listeners = await trio.open_tcp_listeners(port, host=host)
    task_status.started(listeners[0].socket.getsockname()[1])
    await trio.serve_listeners(serve_connection, listeners)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vcproxy demo-upstream", description="built-in demo HTTP origin server")
    parser.add_argument("--address", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    args = parser.parse_args(argv)

    async def run() -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async with trio.open_nursery() as nursery:
                port = await nursery.start(serve, args.address, args.port)
                # the ready line (tests read the port from it) in the shared log format
                JsonLog("stdout").info("demo_upstream_ready", address=args.address, port=port)
                async for _ in signals:
                    nursery.cancel_scope.cancel()
                    break

    trio.run(run)
    return 0
