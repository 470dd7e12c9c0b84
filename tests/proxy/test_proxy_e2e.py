"""End to end: the real `vcproxy run` (supervisor + workers + demo upstream processes)
driven over TLS (our own TLSStream) by real clients: curl and Python's ssl/http.client.
"""
from __future__ import annotations

import concurrent.futures
import hashlib
import http.client
import json
import os
import re
import socket
import ssl
import subprocess
import threading
import time
import urllib.request

import pytest

from vcproxy.proxy.demo_upstream import expected_sha256
from proxy_testkit import (base_config, client_context, closed_port, free_port, peak_rss_bytes, running_proxy,
                           scrape, scrape_until, total, worker_pids)

CURL_TIMEOUT_S = 120


def curl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["curl", "-sS", "--max-time", "60", *args], capture_output=True, timeout=CURL_TIMEOUT_S)


def https(port: int, ctx: ssl.SSLContext, timeout_s: float = 30) -> http.client.HTTPSConnection:
    return http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=timeout_s)


def get(conn: http.client.HTTPSConnection, path: str, body: bytes | None = None, method: str | None = None,
        headers: dict | None = None) -> tuple[int, bytes]:
    conn.request(method or ("POST" if body is not None else "GET"), path, body=body, headers=headers or {})
    response = conn.getresponse()
    return response.status, response.read()


@pytest.fixture(scope="module", params=["inline", "vcrypto"])
def proxy(request, tmp_path_factory, certs, upstream):
    """One proxy (2 workers) per crypto provider for the tests that do not change its config.

    With ``vcrypto`` the supervisor also runs vcrypto-host and
    vcrypto-engine-backend, and every handshake and record goes through them.
    """
    extra = {"vcrypto": {"host_metrics": f"127.0.0.1:{free_port()}"}} if request.param == "vcrypto" else {}
    config = base_config(upstream.address, certs["a"], workers=2, crypto={"provider": request.param},
                         **extra)
    config["upstreams"]["dead"] = {"servers": [f"127.0.0.1:{closed_port()}"], "retries": 0}
    config["upstreams"]["slowup"] = {"servers": [upstream.address], "read_timeout_s": 0.5}
    config["routes"] += [{"path_prefix": "/dead", "upstream": "dead"},
                         {"path_prefix": "/slow", "upstream": "slowup"}]
    with running_proxy(tmp_path_factory.mktemp(f"proxy-{request.param}"), config) as p:
        yield p


def test_curl_gets_the_demo_upstream_through_tls(proxy, certs):
    result = curl("--cacert", str(certs["a"][0]), "--resolve", f"localhost:{proxy.port}:127.0.0.1",
                  f"https://localhost:{proxy.port}/", "-w", "\n%{http_version} %{ssl_verify_result}")
    assert result.returncode == 0, result.stderr
    body, _, info = result.stdout.decode().rpartition("\n")
    assert body == "hello from the vcproxy demo upstream\n"
    assert info == "2 0"  # HTTP/2 over ALPN (the default offer), certificate verified for SNI "localhost"
    # several requests on one curl connection (keep-alive) and the X-Forwarded headers
    result = curl("-k", f"https://127.0.0.1:{proxy.port}/headers", f"https://127.0.0.1:{proxy.port}/",
                  "-w", "%{num_connects}\n")
    assert result.returncode == 0
    text = result.stdout.decode()
    first = json.loads(text[: text.index("]]}") + 3])
    seen = dict(first["headers"])
    assert seen["x-forwarded-proto"] == "https" and seen["x-forwarded-for"] == "127.0.0.1"
    assert seen["x-forwarded-host"] == f"127.0.0.1:{proxy.port}"
    assert text.splitlines()[-1] == "0"  # the second URL reused the connection


def test_python_client_keepalive_and_new_connections(proxy, ctx):
    conn = https(proxy.port, ctx)
    for _ in range(5):
        assert get(conn, "/") == (200, b"hello from the vcproxy demo upstream\n")
    sock = conn.sock
    assert sock.version() == "TLSv1.3" and sock.selected_alpn_protocol() is None
    conn.close()
    for _ in range(5):
        fresh = https(proxy.port, ctx)
        assert get(fresh, "/health") == (200, b"ok\n")
        fresh.close()


def test_alpn_http11_with_python_ssl(proxy, certs):
    c = client_context(certs["a"][0])
    c.set_alpn_protocols(["http/1.1"])  # a client that offers h2 gets it (tests/proxy/test_proxy_h2.py)
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as raw:
        with c.wrap_socket(raw, server_hostname="localhost") as tls:
            assert tls.selected_alpn_protocol() == "http/1.1"
            tls.sendall(b"GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            data = b""
            while chunk := tls.recv(65536):
                data += chunk
    assert data.startswith(b"HTTP/1.1 200 ") and data.endswith(b"ok\n")


def test_100_concurrent_clients(proxy, ctx):
    barrier = threading.Barrier(100, timeout=60)

    def one(i: int) -> tuple[int, int, bytes]:
        conn = https(proxy.port, ctx, timeout_s=60)
        conn.connect()
        barrier.wait()  # all 100 connected (handshakes done) before any request
        try:
            a = get(conn, f"/bytes?n={1000 + i}&seed={i}")
            b = get(conn, "/upload", body=os.urandom(i * 100))
            return a[0], b[0], a[1]
        finally:
            conn.close()

    with concurrent.futures.ThreadPoolExecutor(100) as pool:
        results = list(pool.map(one, range(100)))
    for i, (sa, sb, body) in enumerate(results):
        assert (sa, sb) == (200, 200)
        assert hashlib.sha256(body).hexdigest() == expected_sha256(1000 + i, i)


SIZES = [1024, 64 * 1024, 1024 * 1024, 8 * 1024 * 1024, 64 * 1024 * 1024]


def test_uploads_and_downloads_match_sha256(proxy, ctx, tmp_path):
    """Random payloads 1 KiB..64 MiB each way, both framings; ~300 MiB through TLS in all.
    Bodies stream: no worker's peak memory grows by anything near the 64 MiB payload."""
    workers = worker_pids(proxy)
    assert len(workers) == 2
    peak_before = {pid: peak_rss_bytes(pid) for pid in workers}
    moved = 0
    conn = https(proxy.port, ctx, timeout_s=120)
    for size in SIZES[:-1]:
        payload = os.urandom(size)
        status, body = get(conn, "/upload", body=payload)  # content-length upload
        assert status == 200 and json.loads(body) == {"bytes": size, "sha256": hashlib.sha256(payload).hexdigest()}
        conn.request("POST", "/upload", body=iter([payload[: size // 2], payload[size // 2:]]),
                     encode_chunked=True)  # chunked upload
        assert json.loads(conn.getresponse().read())["sha256"] == hashlib.sha256(payload).hexdigest()
        for chunked in ("0", "1"):
            status, body = get(conn, f"/bytes?n={size}&seed={size}&chunked={chunked}")
            assert status == 200 and hashlib.sha256(body).hexdigest() == expected_sha256(size, size)
        moved += 4 * size
    conn.close()
    big = SIZES[-1]
    payload_file = tmp_path / "up.bin"
    payload = os.urandom(big)
    payload_file.write_bytes(payload)
    result = curl("-k", "--data-binary", f"@{payload_file}", "-H", "Expect:", f"https://127.0.0.1:{proxy.port}/upload")
    assert json.loads(result.stdout) == {"bytes": big, "sha256": hashlib.sha256(payload).hexdigest()}
    down = tmp_path / "down.bin"
    result = curl("-k", "-o", str(down), f"https://127.0.0.1:{proxy.port}/bytes?n={big}&seed=9")
    assert result.returncode == 0, result.stderr
    assert hashlib.sha256(down.read_bytes()).hexdigest() == expected_sha256(big, 9)
    moved += 2 * big
    # both directions at once: curl streams the upload while the echo streams it back (chunked)
    echoed = tmp_path / "echo.bin"
    result = curl("-k", "--data-binary", f"@{payload_file}", "-H", "Expect:", "-o", str(echoed),
                  f"https://127.0.0.1:{proxy.port}/echo")
    assert result.returncode == 0, result.stderr
    assert hashlib.sha256(echoed.read_bytes()).hexdigest() == hashlib.sha256(payload).hexdigest()
    moved += 2 * big
    assert moved > 200 * 1024 * 1024
    for pid in workers:
        assert peak_rss_bytes(pid) - peak_before[pid] < 16 * 1024 * 1024


def test_502_when_the_upstream_is_down(proxy, ctx):
    conn = https(proxy.port, ctx)
    status, body = get(conn, "/dead/x")
    assert status == 502 and b"Bad Gateway" in body


def test_504_when_the_upstream_is_too_slow(proxy, ctx):
    conn = https(proxy.port, ctx)
    status, _ = get(conn, "/slow?s=3")
    assert status == 504


def test_400_for_malformed_requests(proxy, ctx):
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            tls.sendall(b"GET / HTTP/1.1\r\nHost: a\r\nno colon here\r\n\r\n")
            assert tls.recv(65536).startswith(b"HTTP/1.1 400 ")


def test_access_log_is_json(proxy, ctx):
    conn = https(proxy.port, ctx)
    get(conn, "/health?from=access-log-test")
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        lines = [r for r in proxy.access() if r.get("target") == "/health?from=access-log-test"]
        if lines:
            break
        time.sleep(0.05)
    record = lines[0]
    assert record["status"] == 200 and record["method"] == "GET" and record["upstream"] == "demo"
    assert record["client"] == "127.0.0.1" and record["duration_s"] >= 0


def test_provider_did_the_crypto(proxy, ctx):
    """The ops of this module's traffic ran on the configured provider."""
    conn = https(proxy.port, ctx)
    assert get(conn, "/bytes?n=100000")[0] == 200
    conn.close()
    provider = proxy.config["crypto"]["provider"]
    ops = ("ecdh", "sign", "aead_seal", "aead_open")

    def counted(m):
        return {op: total(m, "vcproxy_crypto_ops_total", op=op, provider=provider) for op in ops}

    done = counted(scrape_until(proxy.metrics_url, lambda m: all(counted(m).values())))
    for op in ops:
        assert done[op] > 0, op
    if provider == "vcrypto":
        # The default pool (no `vcrypto.pool` in this config): libsodium and
        # OpenSSL take turns in its primary group, by capability (the P-256
        # certificate's ECDSA signature goes to OpenSSL only), so both
        # implementations completed requests of this module's traffic.
        host = scrape(f"http://{proxy.config['vcrypto']['host_metrics']}/metrics")
        done = {dict(labels)["kind"]: v for (name, labels), v in host.items()
                if name == "vcrypto_host_pool_resource_completed_total"}
        assert done.get("sodium", 0) > 0 and done.get("openssl", 0) > 0, done
        assert sum(v for (name, _), v in host.items() if name == "vcrypto_host_pool_resource_spills_total") == 0


def test_worker_crash_is_restarted(proxy, ctx):
    victim = proxy.workers[0]
    os.kill(victim, 9)
    event = proxy.wait_event("worker_restarted", timeout_s=30)
    assert event["pid"] != victim
    for _ in range(6):  # both workers serve again
        conn = https(proxy.port, ctx)
        assert get(conn, "/health")[0] == 200
        conn.close()
