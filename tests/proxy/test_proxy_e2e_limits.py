"""End to end limits and timeouts through the real process and real TLS clients:
413, 431, handshake, idle and send timeouts, max connections, slow clients.
"""
from __future__ import annotations

import http.client
import socket
import ssl
import threading
import time

import pytest

from proxy_testkit import base_config, running_proxy


@pytest.fixture(scope="module")
def limited(tmp_path_factory, certs, upstream):
    config = base_config(upstream.address, certs["a"], workers=1, limits={
        "max_body_bytes": 100_000, "max_header_bytes": 4096, "handshake_timeout_s": 1.0,
        "idle_timeout_s": 1.0, "header_timeout_s": 20.0, "send_timeout_s": 1.0, "max_connections": 3})
    with running_proxy(tmp_path_factory.mktemp("limited"), config) as p:
        yield p


def tls_socket(port: int, ctx: ssl.SSLContext, timeout_s: float = 10) -> ssl.SSLSocket:
    raw = socket.create_connection(("127.0.0.1", port), timeout=timeout_s)
    return ctx.wrap_socket(raw, server_hostname="127.0.0.1")


def read_response(sock: ssl.SSLSocket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def test_413_for_a_body_over_the_limit(limited, ctx):
    conn = http.client.HTTPSConnection("127.0.0.1", limited.port, context=ctx, timeout=10)
    conn.request("POST", "/upload", body=b"x" * 100_001)
    assert conn.getresponse().status == 413
    conn = http.client.HTTPSConnection("127.0.0.1", limited.port, context=ctx, timeout=10)
    conn.request("POST", "/upload", body=b"x" * 100_000)
    assert conn.getresponse().status == 200


def test_413_reaches_a_client_still_sending_its_body(limited, ctx):
    """The 413 goes out before the body is read; the proxy then reads and drops
    what the client still sends instead of closing on unread bytes (a TCP reset
    that would destroy the response before the client, busy sending, reads it)."""
    for _ in range(3):
        conn = http.client.HTTPSConnection("127.0.0.1", limited.port, context=ctx, timeout=10)
        conn.request("POST", "/upload", body=b"x" * (4 * 1024 * 1024))
        reply = conn.getresponse()
        assert reply.status == 413 and reply.getheader("connection") == "close"
        conn.close()


def test_431_for_headers_over_the_limit(limited, ctx):
    with tls_socket(limited.port, ctx) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: " + b"a" * 5000 + b"\r\n\r\n")
        assert read_response(s).startswith(b"HTTP/1.1 431 ")


def test_handshake_timeout_closes_a_silent_connection(limited):
    with socket.create_connection(("127.0.0.1", limited.port), timeout=10) as s:
        started = time.monotonic()
        assert s.recv(100) == b""  # closed by the server, nothing sent
        assert 0.8 < time.monotonic() - started < 8


def test_idle_keepalive_timeout(limited, ctx):
    with tls_socket(limited.port, ctx) as s:
        s.sendall(b"GET /health HTTP/1.1\r\nHost: a\r\n\r\n")
        assert read_response(s).startswith(b"HTTP/1.1 200 ")
        started = time.monotonic()
        rest = b""
        while chunk := s.recv(65536):  # until the server closes (close_notify, then EOF)
            rest += chunk
        assert 0.8 < time.monotonic() - started < 8


def test_max_connections_queues_the_extra_connection(limited, ctx):
    held = [tls_socket(limited.port, ctx) for _ in range(3)]
    try:
        for s in held:  # keep them busy so the idle timeout does not free them
            s.sendall(b"GET /slow?s=2 HTTP/1.1\r\nHost: a\r\n\r\n")
        time.sleep(0.2)
        extra = socket.create_connection(("127.0.0.1", limited.port), timeout=0.6)
        with pytest.raises((socket.timeout, TimeoutError)):
            ctx.wrap_socket(extra, server_hostname="127.0.0.1")  # not accepted: no ServerHello
        extra.close()
        late = {}

        def fourth():
            started = time.monotonic()
            with tls_socket(limited.port, ctx, timeout_s=10) as s:
                s.sendall(b"GET /health HTTP/1.1\r\nHost: a\r\n\r\n")
                late["reply"] = read_response(s)
                late["waited_s"] = time.monotonic() - started

        t = threading.Thread(target=fourth)
        t.start()
        for s in held:
            assert read_response(s).startswith(b"HTTP/1.1 200 ")
        held[0].close()  # frees one slot: the queued connection gets it
        t.join(15)
        assert late["reply"].startswith(b"HTTP/1.1 200 ")
    finally:
        for s in held:
            s.close()


def test_slow_client_does_not_block_others(limited, ctx):
    """One client sends its request a byte a second; others are served meanwhile."""
    slow_done = {}

    def slow():
        with tls_socket(limited.port, ctx, timeout_s=20) as s:
            for byte in b"GET":
                s.sendall(bytes([byte]))
                time.sleep(1.0)
            s.sendall(b" /health HTTP/1.1\r\nHost: a\r\n\r\n")
            slow_done["reply"] = read_response(s)
            slow_done["at"] = time.monotonic()

    t = threading.Thread(target=slow)
    t.start()
    time.sleep(0.3)
    fast_done = []
    for _ in range(2):  # max_connections is 3: the slow one holds one slot
        conn = http.client.HTTPSConnection("127.0.0.1", limited.port, context=ctx, timeout=5)
        for _ in range(5):
            conn.request("GET", "/health")
            assert conn.getresponse().read() == b"ok\n"
        conn.close()
        fast_done.append(time.monotonic())
    t.join(20)
    assert slow_done["reply"].startswith(b"HTTP/1.1 200 ")
    assert max(fast_done) < slow_done["at"]  # the fast clients finished while the slow one trickled


def test_client_that_stops_reading_is_disconnected(limited, ctx):
    """A download whose client takes no bytes for send_timeout_s is cut off (the
    connection, its upstream and its slot are freed) instead of waiting forever."""
    total = 64 * 1024 * 1024
    raw = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)  # the kernel buffers little
    raw.settimeout(10)
    raw.connect(("127.0.0.1", limited.port))
    with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as s:
        s.sendall(f"GET /bytes?n={total} HTTP/1.1\r\nHost: a\r\n\r\n".encode())
        head = read_response(s)
        assert head.startswith(b"HTTP/1.1 200 ")
        time.sleep(4.0)  # stop reading: well past send_timeout_s (1 s)
        got, started = len(head), time.monotonic()
        try:
            while chunk := s.recv(1 << 20):
                got += len(chunk)
                assert time.monotonic() - started < 30, "the proxy kept sending"
        except (ssl.SSLError, ConnectionResetError):
            pass  # cut mid-record: what a client of a dropped download sees
    assert got < total // 2, f"received {got} of {total}: the stalled download was not cut"
    # The proxy serves on (max_connections is 3: the stalled one gave its slot back).
    conn = http.client.HTTPSConnection("127.0.0.1", limited.port, context=ctx, timeout=10)
    conn.request("GET", "/health")
    assert conn.getresponse().read() == b"ok\n"
