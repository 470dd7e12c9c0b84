"""Interop: headless Chromium (a real client that offers X25519MLKEM768
first) against a real ``vcproxy run`` whose crypto goes through vcrypto
(managed daemons). The proxy's own metrics and access log must show the
hybrid group, the hybrid key exchange must have run at the host (the
frontend's counters: ecdh offloaded, no fallback), and a client without the
hybrid (Python's ssl on OpenSSL 3.0) must still get x25519."""
from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
import time

from proxy_testkit import base_config, client_context, free_port, scrape, total

CHROMIUM = shutil.which("chromium")
DEADLINE_S = 60.0


def _chromium_get(url: str, profile) -> str:
    # --no-sandbox: CI runs as root, where Chromium's sandbox refuses to start.
    args = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
            "--disable-extensions", "--disable-background-networking", "--disable-component-update",
            "--disable-dev-shm-usage", f"--user-data-dir={profile}",
            "--ignore-certificate-errors", "--dump-dom", url]
    out = subprocess.run(args, capture_output=True, timeout=DEADLINE_S, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


def test_chromium_negotiates_x25519mlkem768_through_vcrypto(start_proxy, certs, upstream, tmp_path):
    assert CHROMIUM, "no chromium on PATH: `make sysdeps` installs it (Makefile SYSTEM_TOOLS)"
    host_metrics = f"127.0.0.1:{free_port()}"
    proxy = start_proxy(base_config(upstream.address, certs["a"],
                                    crypto={"provider": "vcrypto", "fallback": "none"},
                                    vcrypto={"host_metrics": host_metrics}))
    dom = _chromium_get(f"https://localhost:{proxy.port}/health", tmp_path / "profile")
    assert "ok" in dom, dom[-500:]
    # a client without the hybrid (OpenSSL 3.0 has none): x25519, still through vcrypto
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=20) as raw:
        with client_context(certs["a"][0]).wrap_socket(raw, server_hostname="localhost") as tls:
            tls.sendall(b"GET /health HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
            reply = b""
            while chunk := tls.recv(65536):
                reply += chunk
    assert reply.endswith(b"ok\n")
    deadline = time.monotonic() + 20
    while True:
        m = scrape(proxy.metrics_url)
        hybrid = total(m, "vcproxy_tls_handshakes_total", result="ok", version="1.3", group="X25519MLKEM768")
        classical = total(m, "vcproxy_tls_handshakes_total", result="ok", version="1.3", group="x25519")
        if (hybrid >= 1 and classical >= 1) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert hybrid >= 1 and classical >= 1, sorted(k for k in m if "handshakes" in k[0])
    # the group in the access log of each client's requests
    groups = {r.get("tls_group") for r in proxy.access()}
    assert {"X25519MLKEM768", "x25519"} <= groups, proxy.access()
    # every key exchange went to the engine, nothing ran in-process instead
    assert total(m, "vcproxy_crypto_ops_total", op="ecdh", provider="vcrypto") >= hybrid + classical
    assert total(m, "vcproxy_crypto_fallbacks_total") == 0
    # ... and the host completed the hybrid's ML-KEM encapsulation + X25519 op
    # (the default pool routes it to openssl by capability: sodium has no ML-KEM)
    host = scrape(f"http://{host_metrics}/metrics")
    assert total(host, "vcrypto_host_completions_total", op="ecdh", alg="X25519MLKEM768", status="ok") >= hybrid
    done = {dict(labels)["kind"]: v for (name, labels), v in host.items()
            if name == "vcrypto_host_pool_resource_errors_total"}
    assert done and sum(done.values()) == 0, done
