"""End to end at the HTTP edge, over TLS, both crypto providers: WebSocket
upgrades passed through to the demo upstream's echo, strict request lines.
"""
from __future__ import annotations

import json
import os
import socket
import ssl
import time

import pytest
from wsproto import ConnectionType, WSConnection
from wsproto.events import (AcceptConnection, BytesMessage, CloseConnection, Message, Ping, Pong, RejectConnection,
                            RejectData, Request, TextMessage)

from proxy_testkit import base_config, running_proxy


@pytest.fixture(scope="module", params=["inline", "vcrypto"])
def proxy(request, tmp_path_factory, certs, upstream):
    config = base_config(upstream.address, certs["a"], crypto={"provider": request.param},
                         limits={"idle_timeout_s": 2.0})
    with running_proxy(tmp_path_factory.mktemp(f"edge-{request.param}"), config) as p:
        yield p


def tls_connect(port: int, ctx: ssl.SSLContext, timeout_s: float = 10) -> ssl.SSLSocket:
    raw = socket.create_connection(("127.0.0.1", port), timeout=timeout_s)
    return ctx.wrap_socket(raw, server_hostname="localhost")


def read_head(sock: ssl.SSLSocket) -> tuple[bytes, bytes]:
    """The response head and the bytes after it."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    return head, rest


def read_to_close(sock: ssl.SSLSocket) -> bytes:
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except (ConnectionResetError, ssl.SSLError):
        pass
    return data


class WsClient:
    """wsproto over a blocking TLS socket."""

    def __init__(self, sock: ssl.SSLSocket) -> None:
        self.sock = sock
        self.ws = WSConnection(ConnectionType.CLIENT)
        self.pending: list = []

    def send(self, event) -> None:
        self.sock.sendall(self.ws.send(event))

    def next_event(self):
        while not self.pending:
            data = self.sock.recv(65536)
            self.ws.receive_data(data or None)
            self.pending.extend(self.ws.events())
            if not data and not self.pending:
                raise EOFError("server closed")
        return self.pending.pop(0)

    def message(self) -> str | bytes:
        """The next whole message (wsproto may hand it over in pieces)."""
        parts: list = []
        while True:
            event = self.next_event()
            if isinstance(event, Message):
                parts.append(event.data)
                if event.message_finished:
                    return "".join(parts) if isinstance(event, TextMessage) else b"".join(parts)
            elif isinstance(event, Pong):
                continue
            else:
                raise AssertionError(f"unexpected {event!r}")


def test_websocket_echo_through_the_proxy(proxy, ctx):
    with tls_connect(proxy.port, ctx) as sock:
        client = WsClient(sock)
        client.send(Request(host="localhost", target="/ws"))
        assert isinstance(client.next_event(), AcceptConnection)  # wsproto checked Sec-WebSocket-Accept
        client.send(TextMessage(data="hello through vcproxy"))
        assert client.message() == "hello through vcproxy"
        big = os.urandom(200_000)  # several TLS records each way
        client.send(BytesMessage(data=big))
        assert client.message() == big
        for i in range(20):
            client.send(TextMessage(data=f"message {i}"))
        assert [client.message() for _ in range(20)] == [f"message {i}" for i in range(20)]
        client.send(Ping(payload=b"p"))
        assert client.next_event() == Pong(payload=b"p")
        client.send(CloseConnection(code=1000))
        event = client.next_event()
        assert isinstance(event, CloseConnection) and event.code == 1000
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        done = [r for r in proxy.access() if r.get("target") == "/ws" and r.get("status") == 101]
        if done:
            break
        time.sleep(0.05)
    record = done[-1]
    assert record["tunnel"] == "ok" and record["client_to_upstream"] > 200_000
    assert record["upstream_to_client"] > 200_000


def test_websocket_session_ends_after_the_idle_timeout(proxy, ctx):
    with tls_connect(proxy.port, ctx, timeout_s=15) as sock:
        client = WsClient(sock)
        client.send(Request(host="localhost", target="/ws"))
        assert isinstance(client.next_event(), AcceptConnection)
        started = time.monotonic()
        assert read_to_close(sock) == b""  # closed by the proxy, nothing relayed
        assert 1.5 < time.monotonic() - started < 10  # limits.idle_timeout_s = 2


def test_upgrade_refused_by_the_upstream_is_an_ordinary_response(proxy, ctx):
    """A non-101 answer to an upgrade request is relayed as a response and the
    connection stays HTTP/1.1 (keep-alive); the upstream saw the upgrade offer."""
    with tls_connect(proxy.port, ctx) as sock:
        client = WsClient(sock)
        client.send(Request(host="localhost", target="/headers"))
        event = client.next_event()
        assert isinstance(event, RejectConnection) and event.status_code == 200
        body = b""
        while True:
            event = client.next_event()
            assert isinstance(event, RejectData)
            body += event.data
            if event.body_finished:
                break
        seen = {n: v for n, v in json.loads(body)["headers"]}
        assert seen["upgrade"] == "websocket" and seen["connection"] == "upgrade"
        assert "sec-websocket-key" in seen
        # same connection, next request
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n")
        head, rest = read_head(sock)
        assert head.startswith(b"HTTP/1.1 200 ") and rest == b"ok\n"


def test_other_upgrades_are_not_offered_upstream(proxy, ctx):
    """h2c (or anything but websocket) is stripped like any hop-by-hop field."""
    with tls_connect(proxy.port, ctx) as sock:
        sock.sendall(b"GET /headers HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade, HTTP2-Settings\r\n"
                     b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n")
        head, rest = read_head(sock)
        assert head.startswith(b"HTTP/1.1 200 ")
        while len(rest) < int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0]):
            rest += sock.recv(65536)
        names = {n for n, _ in json.loads(rest)["headers"]}
        assert not names & {"upgrade", "connection", "http2-settings"}
