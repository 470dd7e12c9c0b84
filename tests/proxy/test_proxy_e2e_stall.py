"""A hung vcrypto daemon under the real proxy: ``crypto.stall_timeout_s`` reaches the
engine-backend (its host deadline) and the workers' frontends (twice that). SIGSTOP the
host, then the engine-backend, under a stream of requests: every reply is complete and
correct, the workers export the stalls and their doorbells, and after SIGCONT the proxy
keeps serving."""
from __future__ import annotations

import hashlib
import os
import signal
import socket
import ssl
import time

from vcproxy.proxy.demo_upstream import expected_sha256
from proxy_testkit import base_config, client_context, scrape, total

REQUEST = b"GET /bytes?n=200000 HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"


def _fetch(port: int, ctx: ssl.SSLContext) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=20) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost") as tls:
            tls.sendall(REQUEST)
            data = b""
            while chunk := tls.recv(65536):
                data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 "), head[:100]
    assert hashlib.sha256(body).hexdigest() == expected_sha256(200000)
    return body


def _backend_stats(path: str) -> dict:
    from vcrypto.engine.contract import control as _control

    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(path)
        s.sendall(_control.encode({"t": "stats", "id": 1}))
        dec = _control.FrameDecoder()
        while True:
            data = s.recv(65536)
            assert data, "engine-backend closed the connection"
            for msg in dec.feed(data):
                if msg.get("id") == 1:
                    return msg["stats"]


def _until_offloaded(port: int, ctx: ssl.SSLContext, backend_socket: str) -> None:
    """Requests until the host's own request counter rises between two of them."""
    deadline = time.monotonic() + 30
    before = None
    while True:
        assert time.monotonic() < deadline, "traffic never returned to the vcrypto host"
        _fetch(port, ctx)
        st = _backend_stats(backend_socket)
        now = (st.get("device_stats") or {}).get("device", {}).get("requests") if st["device_up"] else None
        if None not in (before, now) and now > before:
            return
        before = now


def test_hung_vcrypto_daemons_never_hang_a_request(start_proxy, certs, upstream, tmp_path):
    runtime = tmp_path / "rt"
    runtime.mkdir()
    proxy = start_proxy(base_config(upstream.address, certs["a"], workers=1,
                                    crypto={"provider": "vcrypto", "stall_timeout_s": 0.75},
                                    vcrypto={"runtime_dir": str(runtime)}))
    daemons = proxy.wait_event("ready")["daemons"]
    ctx = client_context(certs["a"][0])
    for name in ("vcrypto-host", "vcrypto-engine-backend"):
        _until_offloaded(proxy.port, ctx, str(runtime / "backend.sock"))
        os.kill(daemons[name], signal.SIGSTOP)
        try:
            for _ in range(3):  # each within the client's 20 s timeout, correct
                _fetch(proxy.port, ctx)
        finally:
            os.kill(daemons[name], signal.SIGCONT)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # exported once a second by the worker
        if total(scrape(proxy.metrics_url), "vcproxy_crypto_engine_stalls_total") > 0:
            break
        time.sleep(0.2)
    m = scrape(proxy.metrics_url)
    assert total(m, "vcproxy_crypto_engine_stalls_total") > 0  # the backend's stall, seen by the worker
    assert total(m, "vcproxy_crypto_engine_doorbells_total") > 0
    assert total(m, "vcproxy_crypto_fallbacks_total") > 0
    _until_offloaded(proxy.port, ctx, str(runtime / "backend.sock"))
    assert not any(e.get("event") == "daemon_restarted" for e in proxy.events())
