"""End to end at the HTTP edge, over TLS, both crypto providers: WebSocket
upgrades passed through to the demo upstream's echo, strict request lines,
forwarding headers from a trusted peer.
"""
from __future__ import annotations

import json
import os
import re
import socket
import ssl
import time

import pytest
from wsproto import ConnectionType, WSConnection
from wsproto.events import (AcceptConnection, BytesMessage, CloseConnection, Message, Ping, Pong, RejectConnection,
                            RejectData, Request, TextMessage)

from proxy_testkit import base_config, closed_port, running_proxy


@pytest.fixture(scope="module", params=["inline", "vcrypto"])
def proxy(request, tmp_path_factory, certs, upstream):
    config = base_config(upstream.address, certs["a"], crypto={"provider": request.param},
                         limits={"idle_timeout_s": 2.0})
    config["upstreams"]["dead"] = {"servers": [f"127.0.0.1:{closed_port()}"], "retries": 0}
    config["routes"].append({"host": "elsewhere.example", "upstream": "dead"})
    config["listeners"][0].update(trusted_proxies=["127.0.0.1/32"], forwarded=True, via="edge-test")
    with running_proxy(tmp_path_factory.mktemp(f"edge-{request.param}"), config) as p:
        yield p


def tls_connect(port: int, ctx: ssl.SSLContext, timeout_s: float = 10) -> ssl.SSLSocket:
    raw = socket.create_connection(("127.0.0.1", port), timeout=timeout_s)
    return ctx.wrap_socket(raw, server_hostname="localhost")


def read_head(sock: ssl.SSLSocket) -> tuple[bytes, bytes]:
    """The response head and its body (Content-Length framed)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    length = re.search(rb"\r\ncontent-length: *(\d+)", head.lower())
    while length and len(rest) < int(length.group(1)):
        chunk = sock.recv(65536)
        if not chunk:
            break
        rest += chunk
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
        names = {n for n, _ in json.loads(rest)["headers"]}
        assert not names & {"upgrade", "connection", "http2-settings"}


# ------------------------------------------------------------------ strict request lines

def exchange(proxy, ctx, request: bytes) -> bytes:
    """Send ``request`` raw over TLS; everything the proxy sends until it closes."""
    with tls_connect(proxy.port, ctx) as sock:
        sock.sendall(request)
        return read_to_close(sock)


def test_http_versions_other_than_1x_get_505(proxy, ctx):
    reply = exchange(proxy, ctx, b"GET / HTTP/3.7\r\nHost: localhost\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 505 ")
    for version in (b"1.0", b"1.1"):
        reply = exchange(proxy, ctx, b"GET /health HTTP/" + version + b"\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        assert reply.startswith(b"HTTP/1.1 200 ") and reply.endswith(b"ok\n")


def test_http2_preface_on_http1_gets_400_and_close(proxy, ctx):
    reply = exchange(proxy, ctx, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00")
    head, _, _ = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 ") and b"connection: close" in head.lower()
    assert reply.count(b"\r\n\r\n") == 1  # one answer, then the close (read_to_close returned)


def test_connect_gets_405_with_allow(proxy, ctx):
    reply = exchange(proxy, ctx, b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n")
    head = reply.partition(b"\r\n\r\n")[0].lower()
    assert head.startswith(b"http/1.1 405 ") and b"\r\nallow: get, " in head


def test_asterisk_target_only_for_options(proxy, ctx):
    assert exchange(proxy, ctx, b"GET * HTTP/1.1\r\nHost: localhost\r\n\r\n").startswith(b"HTTP/1.1 400 ")


def test_absolute_form_is_routed_by_its_authority(proxy, ctx):
    """The target's authority routes the request (its Host header is ignored:
    elsewhere.example would go to the dead upstream) and the upstream gets
    origin-form with that authority as Host."""
    reply = exchange(proxy, ctx, b"GET http://localhost:1234/headers?x=1 HTTP/1.1\r\nHost: elsewhere.example\r\n"
                                 b"Connection: close\r\n\r\n")
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 "), head
    seen = json.loads(body)
    assert seen["target"] == "/headers?x=1"
    assert dict(seen["headers"])["host"] == "localhost:1234"
    for bad in (b"ftp://localhost/x", b"http:///x", b"http://user@localhost/x"):
        reply = exchange(proxy, ctx, b"GET " + bad + b" HTTP/1.1\r\nHost: localhost\r\n\r\n")
        assert reply.startswith(b"HTTP/1.1 400 "), bad


# ------------------------------------------------------------------ forwarding headers

def test_a_trusted_peer_keeps_its_forwarding_chain(proxy, ctx):
    """127.0.0.1 is in this listener's trusted_proxies: its X-Forwarded-* and
    Forwarded are kept and our hop appended; Via names us both ways.
    (The untrusted case, a replaced chain, is in test_proxy_e2e_proxy_protocol.)"""
    reply = exchange(proxy, ctx, b"GET /headers HTTP/1.1\r\nHost: localhost\r\nX-Forwarded-For: 198.51.100.7\r\n"
                                 b"X-Forwarded-Proto: http\r\nForwarded: for=198.51.100.7;proto=http\r\n"
                                 b"Via: 1.1 cdn\r\nConnection: close\r\n\r\n")
    head, _, body = reply.partition(b"\r\n\r\n")
    assert b"\r\nvia: 1.1 edge-test\r\n" in head.lower() + b"\r\n"
    seen = {}
    for name, value in json.loads(body)["headers"]:
        seen.setdefault(name, []).append(value)
    assert seen["x-forwarded-for"] == ["198.51.100.7, 127.0.0.1"]
    assert seen["x-forwarded-proto"] == ["http"]  # the trusted hop's word
    assert seen["forwarded"] == ['for=198.51.100.7;proto=http, for=127.0.0.1;proto=https;host=localhost']
    assert seen["via"] == ["1.1 cdn, 1.1 edge-test"]


def test_http2_responses_carry_via_too(proxy, ctx):
    from test_proxy_h2 import Client

    c = Client(proxy.port, ctx)
    try:
        sid = c.request()
        assert c.response(sid)[0] == 200
        # (the response head's fields are not kept by the client helper: read them again)
        sid = c.request()
        headers = None
        while headers is None:
            for event in c.events():
                if getattr(event, "stream_id", None) == sid and hasattr(event, "headers"):
                    headers = dict(event.headers)
        assert headers[b"via"] == b"1.1 edge-test"
    finally:
        c.close()
