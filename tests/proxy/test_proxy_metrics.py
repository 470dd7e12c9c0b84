"""The supervisor's metrics endpoint, end to end on a real `vcproxy run`:
the reload counter counted once per SIGHUP (rejections included), the last
reload time, certificate expiry refreshed on reload, build info, and the
endpoint's paths (`metrics.path`, `/healthz`, `/readyz`, 404 elsewhere).
"""
from __future__ import annotations

import http.client
import signal
import threading
import time
import urllib.error
import urllib.request

from cryptography import x509

from proxy_testkit import base_config, client_context, free_port, running_proxy, scrape, timed_request, total
from tests.engine import engine_daemons


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def not_after(cert_path) -> float:
    return x509.load_pem_x509_certificate(cert_path.read_bytes()).not_valid_after_utc.timestamp()


def expiries(samples) -> dict[tuple[str, str], float]:
    """(listener, name) -> vcproxy_certificate_not_after_timestamp_seconds."""
    return {(dict(labels)["listener"], dict(labels)["name"]): v for (metric, labels), v in samples.items()
            if metric == "vcproxy_certificate_not_after_timestamp_seconds"}


def test_one_sighup_counts_once_and_rejections_count(start_proxy, certs, upstream):
    config = base_config(upstream.address, certs["a"], workers=2)
    proxy = start_proxy(config)
    m = scrape(proxy.metrics_url)
    assert total(m, "vcproxy_config_last_reload_successful") == 1
    started_s = total(m, "vcproxy_config_last_reload_success_timestamp_seconds")
    assert abs(started_s - time.time()) < 120
    assert expiries(m) == {("listener0", "localhost"): not_after(certs["a"][0])}
    assert total(m, "vcproxy_build_info") == 1

    # one good SIGHUP, two workers: ok counts 1 (the supervisor's), not 2; the
    # new certificate's names and expiry replace the old ones
    config["listeners"][0]["tls"]["certificates"] = [
        {"cert": str(certs["b"][0]), "key": str(certs["b"][1]), "names": ["b.example"]}]
    proxy.write_config(config)
    proxy.signal(signal.SIGHUP)
    proxy.wait_event("reloaded", count=2)
    m = scrape(proxy.metrics_url)
    assert total(m, "vcproxy_config_reloads_total", result="ok") == 1
    assert total(m, "vcproxy_config_reloads_total", result="rejected") == 0
    assert total(m, "vcproxy_config_last_reload_success_timestamp_seconds") > started_s
    assert expiries(m) == {("listener0", "b.example"): not_after(certs["b"][0])}

    # a broken file: rejected by the supervisor, counted once
    proxy.config_path.write_text("listeners: [{port: 'nope'}]\n")
    proxy.signal(signal.SIGHUP)
    proxy.wait_event("reload_rejected")
    m = scrape(proxy.metrics_url)
    assert total(m, "vcproxy_config_reloads_total", result="rejected") == 1
    assert total(m, "vcproxy_config_reloads_total", result="ok") == 1
    assert total(m, "vcproxy_config_last_reload_successful") == 0

    # a change a reload cannot apply (the port): rejected by the supervisor
    # before any worker sees it, not one failure per worker
    moved = dict(config, listeners=[dict(config["listeners"][0], port=free_port())])
    proxy.write_config(moved)
    proxy.signal(signal.SIGHUP)
    event = proxy.wait_event("reload_rejected", count=2)
    assert event["problems"][0][0] == "listeners[0]"
    m = scrape(proxy.metrics_url)
    assert total(m, "vcproxy_config_reloads_total", result="rejected") == 2
    assert total(m, "vcproxy_worker_reload_failures_total") == 0
    assert not [e for e in proxy.events() if e.get("event") == "reload_failed"]


def test_metrics_path_healthz_readyz_and_404(tmp_path, certs, upstream):
    config = base_config(upstream.address, certs["a"], metrics={"path": "/prom"},
                         limits={"drain_timeout_s": 10})
    with running_proxy(tmp_path, config) as proxy:
        assert proxy.metrics_url.endswith("/prom")
        base = proxy.metrics_url.removesuffix("/prom")
        status, body = get(proxy.metrics_url)
        assert status == 200 and "# TYPE vcproxy_build_info gauge" in body
        for path in ("/metrics", "/", "/healthz/x", "/prom/x"):
            status, body = get(base + path)
            assert status == 404 and "vcproxy_" not in body, (path, status, body)
        assert get(base + "/healthz") == (200, "ok\n")
        assert get(base + "/readyz") == (200, "ready\n")

        # draining: not ready (a load balancer stops routing) while still alive
        ctx = client_context(certs["a"][0])
        done = []

        def slow():
            conn = http.client.HTTPSConnection("127.0.0.1", proxy.port, context=ctx, timeout=30)
            conn.request("GET", "/slow?s=3")
            done.append(conn.getresponse().status)

        t = threading.Thread(target=slow)
        t.start()
        time.sleep(0.5)
        proxy.signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        while (ready := get(base + "/readyz"))[0] == 200 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert ready == (503, "not ready: draining\n")
        assert get(base + "/healthz") == (200, "ok\n")
        t.join(30)
        assert done == [200]


def test_readyz_needs_vcrypto_when_no_fallback_is_allowed(tmp_path, certs, upstream):
    """crypto.fallback: none: /readyz is 503 while the workers' engine is away,
    200 again once they reattached (the engine-backend is ours, not managed)."""
    daemon_dir = tmp_path / "engine"
    daemon_dir.mkdir()
    backend = engine_daemons.backend(daemon_dir).start()   # --no-host: computes in its own process
    try:
        config = base_config(upstream.address, certs["a"], crypto={"provider": "vcrypto", "fallback": "none"},
                             vcrypto={"manage": False, "backend_socket": backend.socket_path})
        with running_proxy(tmp_path, config) as proxy:
            base = proxy.metrics_url.removesuffix("/metrics")

            def wait_ready(want: int) -> tuple[int, str]:
                deadline = time.monotonic() + 20
                while (got := get(base + "/readyz"))[0] != want and time.monotonic() < deadline:
                    time.sleep(0.1)
                return got

            assert wait_ready(200) == (200, "ready\n")
            assert total(scrape(proxy.metrics_url), "vcproxy_crypto_engine_attached") == 1
            backend.stop()
            status, body = wait_ready(503)
            assert status == 503 and "vcrypto attached in 0 of 1 workers" in body, body
            assert get(base + "/healthz") == (200, "ok\n")
            backend.start()
            assert wait_ready(200) == (200, "ready\n")
    finally:
        backend.stop()


def test_engine_away_every_op_is_counted_as_a_fallback_at_once(tmp_path, certs, upstream):
    """crypto.fallback: per_op with the engine-backend's socket missing: each
    handshake's ECDH and signature is handed to the vcrypto provider
    (crypto_ops_total{provider="vcrypto"}) and computed in-process by its
    frontend, so each is in crypto_fallbacks_total under its own op the moment
    it ran: a scrape right after the traffic shows no offload that did not
    happen (the frontend's counts used to be copied once a second as op="any")."""
    config = base_config(upstream.address, certs["a"], crypto={"provider": "vcrypto", "fallback": "per_op"},
                         vcrypto={"manage": False, "backend_socket": str(tmp_path / "nothing.sock")})
    with running_proxy(tmp_path, config) as proxy:
        ctx = client_context(certs["a"][0])
        for _ in range(3):
            timed_request(proxy.port, ctx)
        m = scrape(proxy.metrics_url)   # no wait: nothing may lag behind the ops
        for op in ("ecdh", "sign"):
            assert total(m, "vcproxy_crypto_ops_total", op=op, provider="vcrypto") == 3, op
            assert total(m, "vcproxy_crypto_fallbacks_total", op=op, reason="engine_unavailable") == 3, op
        assert total(m, "vcproxy_crypto_engine_attached") == 0
