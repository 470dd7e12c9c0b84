"""End to end: PROXY protocol v1/v2 on a TLS listener (accepted from trusted_proxies only,
the original client logged and forwarded) and sent to upstreams (HTTP and tcp mode).
"""
from __future__ import annotations

import ipaddress
import json
import socket
import ssl
import threading
import time

import pytest

from proxy_testkit import base_config, running_proxy, scrape, total

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"


class HeaderSink:
    """An upstream that reads one PROXY header (v1 or v2), then answers any HTTP
    request with 200 and that header's bytes as hex, and closes."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.headers: list[bytes] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def _one(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(10)
            data = b""
            try:
                while True:
                    data += conn.recv(65536) or b"\0EOF"
                    if data.endswith(b"\0EOF"):
                        return
                    if data.startswith(V2_SIGNATURE[:1]) and len(data) >= 16:
                        size = 16 + int.from_bytes(data[14:16], "big")
                    elif b"\r\n" in data:
                        size = data.index(b"\r\n") + 2
                    else:
                        continue
                    if len(data) >= size and b"\r\n\r\n" in data[size:]:
                        break
            except OSError:
                return
            header = data[:size]
            self.headers.append(header)
            body = header.hex().encode()
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body))

    def close(self) -> None:
        self.sock.close()


@pytest.fixture(scope="module")
def sink():
    s = HeaderSink()
    yield s
    s.close()


@pytest.fixture(scope="module")
def proxy(tmp_path_factory, certs, upstream, sink):
    config = base_config(upstream.address, certs["a"])
    tls = config["listeners"][0]["tls"]
    config["listeners"] = [
        {"name": "lb", "port": 0, "tls": tls, "proxy_protocol": True, "trusted_proxies": ["10.9.0.0/16", "127.0.0.0/8"]},
        {"name": "untrusted", "port": 0, "tls": tls, "proxy_protocol": True, "trusted_proxies": ["10.0.0.0/8"]},
        {"name": "tcpout", "port": 0, "tls": tls, "mode": "tcp", "upstream": "sink_v2"},
    ]
    config["upstreams"]["sink_v1"] = {"servers": [f"127.0.0.1:{sink.port}"], "send_proxy_protocol": "v1"}
    config["upstreams"]["sink_v2"] = {"servers": [f"127.0.0.1:{sink.port}"], "send_proxy_protocol": "v2"}
    config["routes"].append({"path_prefix": "/pp", "upstream": "sink_v1"})
    with running_proxy(tmp_path_factory.mktemp("proxy-protocol"), config) as p:
        yield p


def tls_request(port: int, ctx: ssl.SSLContext, prefix: bytes, request: bytes) -> bytes:
    """TLS over a socket whose first segment is ``prefix`` + the ClientHello (one
    send: the proxy reads the TLS bytes together with the header), then
    ``request``; returns everything the server sends until it closes."""
    inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(inc, out, server_hostname="localhost")
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        pending = prefix
        while True:
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                sock.sendall(pending + out.read())
                pending = b""
                data = sock.recv(65536)
                if not data:
                    raise ConnectionResetError("closed during the handshake")
                inc.write(data)
        tls.write(request)
        sock.sendall(out.read())
        reply = b""
        while True:
            try:
                chunk = tls.read(65536)
                if not chunk:
                    return reply  # close_notify
                reply += chunk
                continue
            except ssl.SSLWantReadError:
                pass
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                return reply
            data = sock.recv(65536)
            if not data:
                return reply
            inc.write(data)


def body_of(reply: bytes) -> bytes:
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 "), reply[:200]
    return body


GET_HEADERS = b"GET /headers HTTP/1.1\r\nHost: localhost\r\nX-Forwarded-For: 6.6.6.6\r\nConnection: close\r\n\r\n"


def v2_header(src: str, sport: int, dst: str, dport: int) -> bytes:
    a, b = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    body = a.packed + b.packed + sport.to_bytes(2, "big") + dport.to_bytes(2, "big")
    return V2_SIGNATURE + bytes([0x21, 0x11 if a.version == 4 else 0x21]) + len(body).to_bytes(2, "big") + body


def access_record(proxy, target: str, client: str) -> dict:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        found = [r for r in proxy.access() if r.get("target") == target and r.get("client") == client]
        if found:
            return found[-1]
        time.sleep(0.05)
    raise AssertionError(f"no access line for {client} {target}: {proxy.access()[-3:]}")


@pytest.mark.parametrize("header, client", [
    (b"PROXY TCP4 203.0.113.7 198.51.100.1 40000 443\r\n", "203.0.113.7"),
    (v2_header("2001:db8::42", 40001, "2001:db8::1", 443), "2001:db8::42"),
], ids=["v1", "v2"])
def test_trusted_header_names_the_client(proxy, ctx, header, client):
    """The original client is X-Forwarded-For (the client's own XFF claim is
    dropped: it is no trusted proxy) and the access log's client."""
    target = f"/headers?c={client}"
    reply = tls_request(proxy.listeners["lb"], ctx, header, GET_HEADERS.replace(b"/headers", target.encode()))
    seen = dict(json.loads(body_of(reply))["headers"])
    assert seen["x-forwarded-for"] == client
    record = access_record(proxy, target, client)
    assert record["status"] == 200 and record["listener"] == "lb"


def test_header_is_passed_on_to_an_http_upstream(proxy, ctx, sink):
    header = b"PROXY TCP4 203.0.113.9 198.51.100.1 40002 8443\r\n"
    reply = tls_request(proxy.listeners["lb"], ctx, header, b"GET /pp HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
    assert bytes.fromhex(body_of(reply).decode()) == b"PROXY TCP4 203.0.113.9 198.51.100.1 40002 8443\r\n"


def test_tcp_mode_sends_v2_with_the_connection_addresses(proxy, ctx, sink):
    port = proxy.listeners["tcpout"]
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        client_port = raw.getsockname()[1]
        with ctx.wrap_socket(raw, server_hostname="localhost") as tls:
            tls.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            reply = b""
            while chunk := tls.recv(65536):
                reply += chunk
    assert bytes.fromhex(body_of(reply).decode()) == v2_header("127.0.0.1", client_port, "127.0.0.1", port)


def closed_unanswered(port: int, ctx: ssl.SSLContext, prefix: bytes) -> bool:
    try:
        reply = tls_request(port, ctx, prefix, GET_HEADERS)
    except (ConnectionResetError, ssl.SSLError, OSError):
        return True
    return reply == b""


def test_untrusted_peer_and_missing_or_broken_headers_are_refused(proxy, ctx):
    before = scrape(proxy.metrics_url)
    header = b"PROXY TCP4 203.0.113.7 198.51.100.1 40000 443\r\n"
    assert closed_unanswered(proxy.listeners["untrusted"], ctx, header)  # 127.0.0.1 is not in 10.0.0.0/8
    assert closed_unanswered(proxy.listeners["lb"], ctx, b"")  # a bare ClientHello: no guessing
    assert closed_unanswered(proxy.listeners["lb"], ctx, b"PROXY TCP4 203.0.113.7 nope 1 2\r\n")
    after = scrape(proxy.metrics_url)
    delta = {r: total(after, "vcproxy_proxy_protocol_total", result=r)
             - total(before, "vcproxy_proxy_protocol_total", result=r) for r in ("untrusted", "invalid")}
    assert delta == {"untrusted": 1, "invalid": 2}


def test_a_peer_that_sends_no_header_times_out_as_proxy_protocol(tmp_path, certs, upstream):
    """A trusted peer that connects and sends nothing: closed after the
    handshake deadline and counted as a PROXY-protocol timeout, not as a TLS
    handshake that never started."""
    config = base_config(upstream.address, certs["a"], limits={"handshake_timeout_s": 1})
    config["listeners"][0].update(proxy_protocol=True, trusted_proxies=["127.0.0.0/8"])
    with running_proxy(tmp_path, config) as p:
        with socket.create_connection(("127.0.0.1", p.port), timeout=10) as sock:
            assert sock.recv(1) == b""   # closed, unanswered
        deadline = time.monotonic() + 10
        while total(scrape(p.metrics_url), "vcproxy_proxy_protocol_total", result="timeout") < 1:
            assert time.monotonic() < deadline, "no PROXY-protocol timeout counted"
            time.sleep(0.1)
        assert total(scrape(p.metrics_url), "vcproxy_tls_handshakes_total", result="timeout") == 0
