"""Modes and process model through the real process: tcp mode, SNI, resumption across workers,
TLS faults, vcrypto daemon crash, external daemons, supervisor death, start failures."""
from __future__ import annotations

import hashlib
import json
import os
import socket
import ssl
import subprocess
import sys
import time

import yaml

from vcproxy.proxy.demo_upstream import expected_sha256
from proxy_testkit import REPO, base_config, client_context, scrape, total


def tls_exchange(port: int, ctx: ssl.SSLContext, request: bytes, session=None) -> tuple[bytes, ssl.SSLSocket]:
    raw = socket.create_connection(("127.0.0.1", port), timeout=20)
    tls = ctx.wrap_socket(raw, server_hostname="localhost", session=session)
    tls.sendall(request)
    data = b""
    while chunk := tls.recv(65536):
        data += chunk
    return data, tls


def test_tcp_mode_pumps_bytes_after_tls(start_proxy, certs, upstream):
    config = base_config(upstream.address, certs["a"])
    config["listeners"][0].update({"mode": "tcp", "upstream": "demo"})
    config["routes"] = []
    proxy = start_proxy(config)
    ctx = client_context(certs["a"][0])
    reply, tls = tls_exchange(proxy.port, ctx, b"GET /headers HTTP/1.1\r\nHost: raw\r\nConnection: close\r\n\r\n")
    tls.close()
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ")
    names = [n for n, _ in json.loads(body)["headers"]]
    assert names == ["host", "connection"]  # untouched: no proxy headers in tcp mode
    payload = os.urandom(3 * 1024 * 1024 + 7)
    request = (b"POST /upload HTTP/1.1\r\nHost: raw\r\nConnection: close\r\nContent-Length: "
               + str(len(payload)).encode() + b"\r\n\r\n" + payload)
    reply, tls = tls_exchange(proxy.port, ctx, request)
    tls.close()
    assert json.loads(reply.partition(b"\r\n\r\n")[2])["sha256"] == hashlib.sha256(payload).hexdigest()
    records = [r for r in proxy.access() if r.get("mode") == "tcp"]
    assert len(records) >= 1 and records[0]["result"] == "ok"


def test_tickets_resume_on_any_worker(start_proxy, certs, upstream):
    """Workers share the supervisor's ticket keys: a ticket from one resumes on the other."""
    proxy = start_proxy(base_config(upstream.address, certs["a"], workers=2))
    ctx = client_context(certs["a"][0])
    request = b"GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    reply, first = tls_exchange(proxy.port, ctx, request)
    assert reply.endswith(b"ok\n") and not first.session_reused
    session = first.session
    first.close()
    resumed = 0
    for _ in range(6):  # SO_REUSEPORT spreads these over both workers
        reply, tls = tls_exchange(proxy.port, ctx, request, session=session)
        assert reply.endswith(b"ok\n")
        resumed += tls.session_reused
        tls.close()
    assert resumed == 6
    m = scrape(proxy.metrics_url)
    assert total(m, "vcproxy_tls_handshakes_total", result="ok", resumed="true") == 6
    assert total(m, "vcproxy_tls_handshakes_total", result="ok", resumed="false") == 1
    # a resumed handshake signs nothing: one signature in all
    assert total(m, "vcproxy_crypto_ops_total", op="sign") == 1


def test_vcrypto_daemon_crash_is_survived_and_restarted(start_proxy, certs, upstream):
    """SIGKILL the engine-backend: traffic keeps flowing (the frontend runs requests
    in-process, counted as fallbacks) and the supervisor restarts the daemon."""
    proxy = start_proxy(base_config(upstream.address, certs["a"], workers=1, crypto={"provider": "vcrypto"}))
    ready = proxy.wait_event("ready")
    backend_pid = ready["daemons"]["vcrypto-engine-backend"]
    ctx = client_context(certs["a"][0])
    request = b"GET /bytes?n=200000 HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    reply, tls = tls_exchange(proxy.port, ctx, request)
    tls.close()
    assert reply.startswith(b"HTTP/1.1 200 ")
    os.kill(backend_pid, 9)
    for _ in range(3):  # during and after the crash
        reply, tls = tls_exchange(proxy.port, ctx, request)
        tls.close()
        body = reply.partition(b"\r\n\r\n")[2]
        assert hashlib.sha256(body).hexdigest() == expected_sha256(200000)
    event = proxy.wait_event("daemon_restarted", timeout_s=20)
    assert event["daemon"] == "vcrypto-engine-backend" and event["pid"] != backend_pid
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # counted as each op runs in-process
        if total(scrape(proxy.metrics_url), "vcproxy_crypto_fallbacks_total") > 0:
            break
        time.sleep(0.2)
    m = scrape(proxy.metrics_url)
    assert total(m, "vcproxy_crypto_fallbacks_total") > 0
    assert total(m, "vcproxy_daemon_restarts_total", daemon="vcrypto-engine-backend") == 1
    reply, tls = tls_exchange(proxy.port, ctx, request)  # and after the restart
    tls.close()
    assert reply.startswith(b"HTTP/1.1 200 ")


def test_tls_fault_after_handshake_is_a_quiet_close(start_proxy, certs, upstream):
    """A forged record after the handshake: the server closes that connection (bad_record_mac)
    without treating it as a bug, and keeps serving."""
    proxy = start_proxy(base_config(upstream.address, certs["a"]))
    ctx = client_context(certs["a"][0])
    raw = socket.create_connection(("127.0.0.1", proxy.port), timeout=10)
    tls = ctx.wrap_socket(raw, server_hostname="localhost")
    forged = socket.socket(fileno=os.dup(tls.fileno()))
    forged.sendall(b"\x17\x03\x03\x00\x20" + os.urandom(32))  # application_data record, wrong tag
    forged.close()
    try:
        while tls.recv(65536):
            pass
    except (ssl.SSLError, OSError):
        pass  # the server's alert, then the close
    tls.close()
    reply, tls = tls_exchange(proxy.port, ctx, b"GET /health HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    tls.close()
    assert reply.endswith(b"ok\n")
    assert [e for e in proxy.events() if e["event"] == "connection_failed"] == []


def test_sni_selects_the_certificate(start_proxy, certs, upstream):
    config = base_config(upstream.address, None)
    config["listeners"][0]["tls"] = {"certificates": [
        {"cert": str(certs["a"][0]), "key": str(certs["a"][1]), "names": ["a.test"]},
        {"cert": str(certs["b"][0]), "key": str(certs["b"][1]), "names": ["*.b.test"]}]}
    proxy = start_proxy(config)
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE

    def served(name: str) -> bytes:
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as raw:
            with ctx.wrap_socket(raw, server_hostname=name) as tls:
                return tls.getpeercert(binary_form=True)

    der = {k: ssl.PEM_cert_to_DER_cert(certs[k][0].read_text()) for k in ("a", "b")}
    assert served("a.test") == der["a"]
    assert served("www.b.test") == der["b"]
    assert served("unknown.test") == der["a"]  # the first certificate is the default


def test_children_stop_when_the_supervisor_is_killed(start_proxy, certs, upstream, tmp_path):
    # runtime_dir in tmp_path: a SIGKILLed supervisor cannot clean its runtime directory up
    proxy = start_proxy(base_config(upstream.address, certs["a"], workers=2, crypto={"provider": "vcrypto"},
                                    vcrypto={"runtime_dir": str(tmp_path / "runtime")}))
    ready = proxy.wait_event("ready")
    children = list(ready["workers"]) + list(ready["daemons"].values())
    os.kill(proxy.proc.pid, 9)
    proxy.proc.wait(10)
    deadline = time.monotonic() + 20
    alive = children
    while alive and time.monotonic() < deadline:
        alive = [pid for pid in children if _running(pid)]
        time.sleep(0.1)
    for pid in alive:  # on failure, do not leak what the test started
        os.kill(pid, 9)
    assert alive == []


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_external_vcrypto_daemons(start_proxy, certs, upstream, tmp_path):
    """vcrypto.manage: false — the daemons run on their own (systemd/Kubernetes style)
    and the workers' frontends attach to the configured backend socket."""
    host_sock, backend_sock = str(tmp_path / "host.sock"), str(tmp_path / "backend.sock")
    logs = open(tmp_path / "daemons.log", "w")
    daemons = [subprocess.Popen([sys.executable, "-m", "vcrypto.host", "--socket", host_sock],
                                cwd=REPO, stdout=logs, stderr=logs)]
    try:
        _wait_path(host_sock, daemons[0])
        daemons.append(subprocess.Popen([sys.executable, "-m", "vcrypto.engine.backend", "--host-socket", host_sock,
                                         "--socket", backend_sock], cwd=REPO, stdout=logs, stderr=logs))
        _wait_path(backend_sock, daemons[1])
        proxy = start_proxy(base_config(upstream.address, certs["a"], crypto={"provider": "vcrypto", "fallback": "none"},
                                        vcrypto={"manage": False, "backend_socket": backend_sock}))
        assert proxy.wait_event("ready")["daemons"] == {}
        reply, tls = tls_exchange(proxy.port, client_context(certs["a"][0]),
                                  b"GET /health HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        tls.close()
        assert reply.endswith(b"ok\n")
        ctx12 = ssl.create_default_context(cafile=str(certs["a"][0]))
        ctx12.maximum_version = ssl.TLSVersion.TLSv1_2
        reply, tls = tls_exchange(proxy.port, ctx12,
                                  b"GET /health HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        assert tls.version() == "TLSv1.2"
        tls.close()
        assert reply.endswith(b"ok\n")
        # (the key-share pool's counters are exported once a second)
        deadline = time.monotonic() + 5
        while True:
            m = scrape(proxy.metrics_url)
            asked = sum(total(m, "vcproxy_crypto_key_shares_total", event=e) for e in ("used", "missed"))
            if asked == 2 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        # Both full handshakes asked the worker's key-share pool. TLS 1.3: one
        # ECDH (the first handshake finds the pool empty: the one-op exchange;
        # its miss starts the refill). TLS 1.2: two (our share, then the
        # derive), or just the derive when its share came from the pool. All on the engine.
        assert asked == 2
        used = total(m, "vcproxy_crypto_key_shares_total", event="used")
        assert total(m, "vcproxy_crypto_ops_total", op="ecdh", provider="vcrypto") == 1 + 2 - used
        assert total(m, "vcproxy_crypto_ops_total", op="sign", provider="vcrypto") == 2
        assert total(m, "vcproxy_tls_handshakes_total", result="ok", version="1.2") == 1
        assert total(m, "vcproxy_tls_handshakes_total", result="ok", version="1.3") == 1
        assert total(m, "vcproxy_crypto_fallbacks_total") == 0
    finally:
        for d in reversed(daemons):
            d.terminate()
            try:
                d.wait(10)
            except subprocess.TimeoutExpired:
                d.kill()
                d.wait(5)
        logs.close()


def _wait_path(path: str, proc: subprocess.Popen, timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    while not os.path.exists(path):
        assert proc.poll() is None, f"daemon exited with {proc.returncode}"
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.05)


def test_port_in_use_is_a_clear_start_failure(tmp_path, certs, upstream):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        config = base_config(upstream.address, certs["a"])
        config["listeners"][0]["port"] = port
        config["metrics"] = {"port": 0}
        path = tmp_path / "c.yaml"
        path.write_text(yaml.safe_dump(config))
        result = subprocess.run([sys.executable, "-m", "vcproxy", "run", "--config", str(path)], cwd=REPO,
                                capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    events = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    failed = [e for e in events if e["event"] == "start_failed"]
    assert failed and f"listeners[0]: cannot bind 127.0.0.1:{port}" in failed[0]["error"]
