"""Logs, end to end: one JSON format for the supervisor, the workers and the
vcrypto daemons; SIGUSR1 reopens every log file (logrotate); the access
log's fields (bytes, user agent, TLS, request id, upstream timing) over
HTTP/1.1 and HTTP/2; failed handshakes at info with the client and the
alert; upstream health transitions logged and counted.

One real ``vcproxy run`` (2 workers, ``crypto.provider: vcrypto`` so the
supervisor also runs vcrypto-host and vcrypto-engine-backend) serves every
test; the log-rotation test runs last (it renames the files the others read).
"""
from __future__ import annotations

import http.client
import json
import os
import re
import signal
import socket
import ssl
import threading
import time

import pytest

from proxy_testkit import base_config, free_port, running_proxy, scrape, scrape_until, total
from test_proxy_h2 import Client as H2Client

TS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
LEVELS = {"debug", "info", "warning", "error"}


class Flappy:
    """A TCP server on a fixed loopback port that can go away and come back:
    what the health checks probe (connect only)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.sock: socket.socket | None = None
        self.up()

    def up(self) -> None:
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", self.port))
        s.listen(64)
        self.sock = s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, args=(s, self._stop), daemon=True)
        self._thread.start()

    @staticmethod
    def _accept(s: socket.socket, stop: threading.Event) -> None:
        s.settimeout(0.05)
        while not stop.is_set():
            try:
                conn, _ = s.accept()
                conn.close()
            except OSError:
                continue

    def down(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()
        self.sock = None


@pytest.fixture(scope="module")
def flappy():
    f = Flappy()
    yield f
    if f.sock is not None:
        f.down()


@pytest.fixture(scope="module")
def proxy(tmp_path_factory, certs, upstream, flappy):
    config = base_config(upstream.address, certs["a"], workers=2, crypto={"provider": "vcrypto"})
    # a second listener whose peer (127.0.0.1) is a trusted hop that echoes request ids
    config["listeners"].append({"name": "trusted", "port": 0, "trusted_proxies": ["127.0.0.1/32"],
                                "echo_request_id": True,
                                "tls": {"certificates": [{"cert": str(certs["a"][0]), "key": str(certs["a"][1])}]}})
    config["upstreams"]["flappy"] = {"servers": [f"127.0.0.1:{flappy.port}"], "health_check": {
        "enabled": True, "interval_s": 0.1, "timeout_s": 0.5, "unhealthy_after": 1, "healthy_after": 1}}
    with running_proxy(tmp_path_factory.mktemp("logs"), config) as p:
        ready = p.wait_event("ready")
        p.daemon_pids = ready["daemons"]
        yield p


def _get(port: int, ctx: ssl.SSLContext, path: str, headers: dict | None = None, body: bytes | None = None):
    # by name: the client sends SNI (not for an IP address), the access log's tls_sni
    conn = http.client.HTTPSConnection("localhost", port, context=ctx, timeout=30)
    try:
        conn.request("POST" if body is not None else "GET", path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response, response.read()
    finally:
        conn.close()


def _access_line(proxy, **match) -> dict:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        found = [r for r in proxy.access() if all(r.get(k) == v for k, v in match.items())]
        if found:
            return found[-1]
        time.sleep(0.05)
    raise AssertionError(f"no access line with {match}: {proxy.access()[-3:]}")


def _lines(path) -> list[str]:
    return [line for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def _check_line(line: str) -> dict:
    record = json.loads(line)
    assert TS.match(record["ts"]), line
    assert record["level"] in LEVELS and isinstance(record["event"], str) and isinstance(record["pid"], int), line
    return record


def test_every_process_writes_one_json_format(proxy, ctx):
    assert _get(proxy.port, ctx, "/health")[0].status == 200
    daemons = set(proxy.daemon_pids.values())
    # the daemons' start-up lines reach the supervisor's error log file
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not daemons <= {e["pid"] for e in proxy.events()}:
        time.sleep(0.05)
    lines = _lines(proxy.error_log)
    records = [_check_line(line) for line in lines]
    pids = {r["pid"] for r in records}
    assert {proxy.proc.pid, *proxy.workers, *daemons} <= pids, (pids, proxy.daemon_pids)
    assert len(set(lines)) == len(lines), "a line printed twice"
    # nothing else went to the supervisor's stdout/stderr (which the daemons inherit)
    for line in _lines(proxy.tmp / "stdout.log"):
        _check_line(line)
    for record in proxy.access():
        assert TS.match(record["ts"]), record


def test_access_log_fields_over_http11(proxy, ctx):
    body = b"x" * 5000
    response, data = _get(proxy.port, ctx, "/headers?t=fields", body=body,
                          headers={"User-Agent": "logtest/1.0", "X-Request-Id": "spoofed-by-client"})
    assert response.status == 200
    sent_up = dict(json.loads(data)["headers"])
    record = _access_line(proxy, target="/headers?t=fields")
    # not a trusted hop: its id is replaced by ours, which the upstream got
    assert record["request_id"] != "spoofed-by-client" and sent_up["x-request-id"] == record["request_id"]
    assert response.getheader("x-request-id") is None  # echo_request_id is off on this listener
    assert record["user_agent"] == "logtest/1.0"
    assert 5000 < record["bytes_in"] < 5000 + 1000
    assert len(data) < record["bytes_out"] < len(data) + 1000
    assert (record["tls_version"], record["tls_sni"], record["tls_resumed"]) == ("TLSv1.3", "localhost", False)
    assert record["tls_cipher"].startswith("TLS_")
    assert record["upstream_connect_s"] >= 0 and isinstance(record["upstream_reused"], bool)
    assert 0 < record["upstream_response_s"] <= record["duration_s"]
    # upstream response time is a histogram too (batched per request: on
    # /metrics within the worker's flush interval)
    def counted(samples):
        return total(samples, "vcproxy_upstream_response_seconds_count", upstream="demo") >= 1
    assert counted(scrape_until(proxy.metrics_url, counted))


def test_a_trusted_hop_keeps_its_request_id_and_it_is_echoed(proxy, ctx):
    port = proxy.listeners["trusted"]
    response, data = _get(port, ctx, "/headers?t=trusted", headers={"X-Request-Id": "lb-abc-123"})
    assert dict(json.loads(data)["headers"])["x-request-id"] == "lb-abc-123"
    assert response.getheader("x-request-id") == "lb-abc-123"
    assert _access_line(proxy, target="/headers?t=trusted")["request_id"] == "lb-abc-123"
    # a malformed id from a trusted hop is not passed on (it would be logged and forwarded)
    response, data = _get(port, ctx, "/headers?t=bad-id", headers={"X-Request-Id": "a b,c"})
    record = _access_line(proxy, target="/headers?t=bad-id")
    assert record["request_id"] != "a b,c" and response.getheader("x-request-id") == record["request_id"]
    # generated ids differ per request
    _get(port, ctx, "/headers?t=gen1")
    _get(port, ctx, "/headers?t=gen2")
    assert (_access_line(proxy, target="/headers?t=gen1")["request_id"]
            != _access_line(proxy, target="/headers?t=gen2")["request_id"])


def test_access_log_fields_over_http2(proxy, ctx):
    c = H2Client(proxy.port, ctx)
    try:
        sid = c.request([(b":method", b"GET"), (b":scheme", b"https"), (b":authority", b"localhost"),
                         (b":path", b"/bytes?n=20000&t=h2"), (b"user-agent", b"h2test/2")])
        status, body = c.response(sid)
    finally:
        c.close()
    assert status == 200 and len(body) == 20000
    record = _access_line(proxy, target="/bytes?n=20000&t=h2")
    assert record["http_version"] == "2" and record["user_agent"] == "h2test/2"
    assert record["bytes_out"] == 20000 and record["bytes_in"] == 0
    assert re.fullmatch(r"[0-9a-f]{22}", record["request_id"]), record
    assert record["tls_version"] == "TLSv1.3" and record["tls_sni"] == "localhost"
    assert record["upstream_response_s"] > 0 and record["upstream_connect_s"] >= 0


def test_failed_handshakes_are_logged_at_info_with_the_client_and_the_alert(proxy, certs):
    # 1. garbage instead of a ClientHello: the proxy sends an alert
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as s:
        s.sendall(b"\x16\x03\x01\x00\x04junk")
        s.recv(100)
    # 2. a client that does not trust the certificate: it sends the alert
    other = ssl.create_default_context(cafile=str(certs["b"][0]))
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as raw:
        with pytest.raises(ssl.SSLError):
            other.wrap_socket(raw, server_hostname="localhost")
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        failed = [e for e in proxy.events() if e["event"] == "handshake_failed"]
        if {e.get("alert_from") for e in failed} >= {"proxy", "client"}:
            break
        time.sleep(0.05)
    by = {e.get("alert_from"): e for e in failed}
    assert set(by) >= {"proxy", "client"}, failed
    for e in by.values():
        assert e["level"] == "info" and e["client"] == "127.0.0.1" and e["client_port"] > 0, e
    assert by["proxy"]["alert"] == "illegal_parameter", by["proxy"]  # handshake type 0x6a ("j") is none
    assert by["client"]["alert"] in ("unknown_ca", "bad_certificate"), by["client"]


def test_upstream_health_transitions_are_logged_and_counted(proxy, flappy):
    server = f"127.0.0.1:{flappy.port}"
    labels = {"upstream": "flappy", "server": server}
    assert total(scrape(proxy.metrics_url), "vcproxy_upstream_up", **labels) == 1.0

    def wait_for(name: str, count: int) -> list[dict]:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            found = [e for e in proxy.events() if e["event"] == name and e.get("server") == server]
            if len(found) >= count:
                return found
            time.sleep(0.05)
        raise AssertionError(f"not {count} {name} events: {proxy.events()[-5:]}")

    flappy.down()
    downs = wait_for("upstream_down", 2)  # each worker probes and reports what it saw
    assert {e["pid"] for e in downs} == set(proxy.workers)
    assert all(e["upstream"] == "flappy" and e["level"] == "warning" and "probe failed" in e["reason"]
               for e in downs), downs
    samples = scrape(proxy.metrics_url)
    assert total(samples, "vcproxy_upstream_up", **labels) == 0.0
    assert total(samples, "vcproxy_upstream_health_transitions_total", to="down", **labels) == 2
    flappy.up()
    ups = wait_for("upstream_up", 2)
    assert all(e["level"] == "info" and e["reason"] == "probe succeeded" for e in ups), ups
    deadline = time.monotonic() + 10
    while total(scrape(proxy.metrics_url), "vcproxy_upstream_up", **labels) != 1.0:
        assert time.monotonic() < deadline, "upstream_up did not return to 1"
        time.sleep(0.05)
    assert total(scrape(proxy.metrics_url), "vcproxy_upstream_health_transitions_total", to="up", **labels) == 2


def test_sigusr1_reopens_every_log_file(proxy, ctx):
    """Last in this module: logrotate's way -- rename, then SIGUSR1 to the supervisor."""
    rotated_error, rotated_access = proxy.tmp / "error.log.1", proxy.tmp / "access.log.1"
    proxy.error_log.rename(rotated_error)
    proxy.access_log.rename(rotated_access)
    proxy.signal(signal.SIGUSR1)
    writers = {proxy.proc.pid, *proxy.workers, *proxy.daemon_pids.values()}
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        reopened = {e["pid"] for e in proxy.events() if e["event"] == "logs_reopened"}
        if reopened >= writers:
            break
        time.sleep(0.05)
    assert reopened >= writers, (reopened, writers, _lines(rotated_error)[-5:])
    assert _get(proxy.port, ctx, "/health?after=rotate")[0].status == 200
    assert _access_line(proxy, target="/health?after=rotate")
    assert not [line for line in _lines(rotated_access) if "after=rotate" in line]
    assert not [line for line in _lines(rotated_error) if '"logs_reopened"' in line]
    assert proxy.proc.poll() is None


def test_sigusr1_while_a_worker_restarts_does_not_kill_it(tmp_path, certs, upstream):
    """A log rotation (SIGUSR1, forwarded to every running child) that lands
    while a worker is still starting (before its signal receiver exists)
    must not kill it: SIGUSR1's default action is to terminate. The
    supervisor's children start with SIGUSR1 ignored until they handle it."""
    config = base_config(upstream.address, certs["a"], workers=1)
    with running_proxy(tmp_path, config) as proxy:
        [worker] = proxy.workers
        os.kill(worker, signal.SIGKILL)
        proxy.wait_event("worker_died")
        # rotate "logs" every 20 ms for the whole restart window (backoff,
        # interpreter start, config load, listeners)
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline:
            proxy.signal(signal.SIGUSR1)
            time.sleep(0.02)
        proxy.wait_event("worker_restarted")
        died = [e for e in proxy.events() if e.get("event") == "worker_died"]
        assert [e["status"] for e in died] == [-signal.SIGKILL], died
        assert proxy.proc.poll() is None
