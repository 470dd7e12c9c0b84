"""Signals and metrics through the real process: SIGHUP reload, SIGTERM drain, the metrics endpoint."""
from __future__ import annotations

import hashlib
import http.client
import signal
import socket
import ssl
import threading
import time

import pytest

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from vcproxy.proxy.demo_upstream import expected_sha256
from proxy_testkit import base_config, client_context, closed_port, scrape, total


def unverified() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def peer_cert_der(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with unverified().wrap_socket(raw, server_hostname="localhost") as tls:
            return tls.getpeercert(binary_form=True)


def cert_der(path) -> bytes:
    return x509.load_pem_x509_certificate(path.read_bytes()).public_bytes(Encoding.DER)


def test_sighup_reloads_certificate_without_dropping_a_download(start_proxy, certs, upstream):
    config = base_config(upstream.address, certs["a"], workers=2)
    proxy = start_proxy(config)
    assert peer_cert_der(proxy.port) == cert_der(certs["a"][0])
    size = 32 * 1024 * 1024
    result = {}
    started = threading.Event()

    def download():
        conn = http.client.HTTPSConnection("127.0.0.1", proxy.port, context=unverified(), timeout=60)
        conn.request("GET", f"/bytes?n={size}&seed=5")
        response = conn.getresponse()
        h = hashlib.sha256()
        h.update(response.read(65536))
        started.set()
        while piece := response.read(256 * 1024):
            h.update(piece)
            time.sleep(0.02)  # a slow reader: the download spans the reload
        result["sha"] = h.hexdigest()
        result["cert"] = conn.sock.getpeercert(binary_form=True)
        conn.close()

    t = threading.Thread(target=download)
    t.start()
    assert started.wait(20)
    config["listeners"][0]["tls"]["certificates"] = [{"cert": str(certs["b"][0]), "key": str(certs["b"][1])}]
    proxy.write_config(config)
    proxy.signal(signal.SIGHUP)
    proxy.wait_event("reloaded", count=2)  # both workers
    assert t.is_alive(), "the download should still be in flight during the reload"
    for _ in range(4):  # new connections, whichever worker takes them
        assert peer_cert_der(proxy.port) == cert_der(certs["b"][0])
    t.join(60)
    assert result["sha"] == expected_sha256(size, 5)
    assert result["cert"] == cert_der(certs["a"][0])  # the open connection kept its certificate


def test_sighup_reloads_routes_and_rejects_a_broken_config(start_proxy, certs, upstream):
    config = base_config(upstream.address, certs["a"])
    proxy = start_proxy(config)
    ctx = client_context(certs["a"][0])

    def status(path: str) -> int:
        conn = http.client.HTTPSConnection("127.0.0.1", proxy.port, context=ctx, timeout=10)
        conn.request("GET", path)
        code = conn.getresponse().status
        conn.close()
        return code

    keepalive = http.client.HTTPSConnection("127.0.0.1", proxy.port, context=ctx, timeout=10)
    keepalive.request("GET", "/health")
    assert keepalive.getresponse().read() == b"ok\n"
    assert status("/gone/x") == 404  # the demo origin has no /gone
    config["upstreams"]["dead"] = {"servers": [f"127.0.0.1:{closed_port()}"], "retries": 0}
    config["routes"].append({"path_prefix": "/gone", "upstream": "dead"})
    proxy.write_config(config)
    proxy.signal(signal.SIGHUP)
    proxy.wait_event("reloaded")
    assert status("/gone/x") == 502 and status("/health") == 200  # the new route is live
    keepalive.request("GET", "/health")  # the open connection survived the reload
    assert keepalive.getresponse().read() == b"ok\n"
    proxy.config_path.write_text("listeners: [{port: 'nope'}]\n")
    proxy.signal(signal.SIGHUP)
    event = proxy.wait_event("reload_rejected")
    assert ["listeners[0].port", "expected int, got str"] in event["problems"]
    assert status("/gone/x") == 502 and peer_cert_der(proxy.port) == cert_der(certs["a"][0])


def test_sigterm_drains_in_flight_requests_then_exits(start_proxy, certs, upstream):
    config = base_config(upstream.address, certs["a"], workers=2, limits={"drain_timeout_s": 10})
    proxy = start_proxy(config)
    ctx = client_context(certs["a"][0])
    results = []

    def slow_request():
        conn = http.client.HTTPSConnection("127.0.0.1", proxy.port, context=ctx, timeout=30)
        conn.request("GET", "/slow?s=1.5")
        response = conn.getresponse()
        results.append((response.status, response.read(), response.getheader("connection")))

    threads = [threading.Thread(target=slow_request) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(0.5)
    idle = http.client.HTTPSConnection("127.0.0.1", proxy.port, context=ctx, timeout=10)
    idle.request("GET", "/health")
    assert idle.getresponse().read() == b"ok\n"  # an idle keep-alive connection at drain time
    proxy.signal(signal.SIGTERM)
    proxy.wait_event("worker_draining")
    for t in threads:
        t.join(30)
    assert results == [(200, b"slow\n", "close")] * 4
    assert proxy.proc.wait(30) == 0
    events = [e["event"] for e in proxy.events()]
    assert "drain_deadline" not in events and events[-1] == "stopped"
    try:  # after exit nothing listens
        socket.create_connection(("127.0.0.1", proxy.port), timeout=2).close()
        refused = False
    except OSError:
        refused = True
    assert refused


@pytest.mark.parametrize("provider", ["inline", "vcrypto"])
def test_metrics_count_handshakes_bytes_requests_and_crypto_ops(start_proxy, certs, upstream, provider):
    config = base_config(upstream.address, certs["a"], workers=2, crypto={"provider": provider})
    config["listeners"][0]["name"] = "web"
    proxy = start_proxy(config)
    ctx = client_context(certs["a"][0])
    connections, per_connection, body_size = 6, 3, 50_000
    for _ in range(connections):
        conn = http.client.HTTPSConnection("127.0.0.1", proxy.port, context=ctx, timeout=10)
        for _ in range(per_connection):
            conn.request("GET", f"/bytes?n={body_size}")
            assert len(conn.getresponse().read()) == body_size
        conn.request("POST", "/upload", body=b"u" * body_size)
        assert conn.getresponse().status == 200
        conn.close()
    requests = connections * (per_connection + 1)
    deadline = time.monotonic() + 30
    while True:  # the last request is counted just after its response went out, bytes at close
        m = scrape(proxy.metrics_url)
        if total(m, "vcproxy_http_requests_total", listener="web", status="200") >= requests \
                and total(m, "vcproxy_connections_active") == 0 \
                and total(m, "vcproxy_bytes_sent_total", listener="web") > connections * per_connection * body_size \
                or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert total(m, "vcproxy_http_requests_total", listener="web", status="200") == requests
    assert total(m, "vcproxy_http_request_seconds_count", listener="web") == requests
    assert total(m, "vcproxy_connections_total", listener="web") == connections
    assert total(m, "vcproxy_connections_active", listener="web") == 0
    ok = total(m, "vcproxy_tls_handshakes_total", listener="web", result="ok", resumed="false")
    assert ok == connections
    assert total(m, "vcproxy_tls_handshake_seconds_count", listener="web") == connections
    versions = {dict(ls).get("version") for (n, ls) in m if n == "vcproxy_tls_handshakes_total"}
    assert versions and all(v and "1.3" in v for v in versions)
    sent = total(m, "vcproxy_bytes_sent_total", listener="web")
    received = total(m, "vcproxy_bytes_received_total", listener="web")
    assert connections * per_connection * body_size < sent < 1.2 * connections * per_connection * body_size + 200_000
    assert connections * body_size < received < 1.2 * connections * body_size + 100_000
    # crypto ops by provider: one key exchange and one signature per full handshake, all on
    # the configured provider; full 16 KiB records are sealed/opened by it too (only records
    # under the small-record threshold run in-process, counted as "inline")
    assert total(m, "vcproxy_crypto_ops_total", op="ecdh", provider=provider) == connections
    assert total(m, "vcproxy_crypto_ops_total", op="sign", provider=provider) == connections
    # each response body spans >= 3 full records; each upload >= 3
    assert total(m, "vcproxy_crypto_ops_total", op="aead_seal", provider=provider) >= connections * per_connection * 3
    assert total(m, "vcproxy_crypto_ops_total", op="aead_open", provider=provider) >= connections * 3
    assert total(m, "vcproxy_crypto_fallbacks_total") == 0
    assert total(m, "vcproxy_upstream_errors_total") == 0
