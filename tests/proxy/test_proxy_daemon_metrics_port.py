"""A vcrypto daemon's metrics port taken by another process (a real listening
socket): one line naming the address and the config key, the daemon's own
exit status, no traceback, and no restart loop."""
from __future__ import annotations

import http.client
import os
import signal
import socket
import subprocess
import time

import pytest

from vcrypto.metrics_endpoint import EXIT_METRICS_UNAVAILABLE

from proxy_testkit import START_TIMEOUT_S, Proxy, base_config, free_port, running_proxy

DAEMONS = [("vcrypto-host", "host_metrics"), ("vcrypto-engine-backend", "backend_metrics")]


def _occupied() -> socket.socket:
    """A loopback port some other process listens on (here: this test)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    return sock


def _vcrypto_config(upstream, cert, key: str, port: int) -> dict:
    return base_config(upstream.address, cert, crypto={"provider": "vcrypto"},
                       vcrypto={key: f"127.0.0.1:{port}"})


def _output(proxy: Proxy) -> str:
    return (proxy.tmp / "stdout.log").read_text()


def _daemon_failures(proxy: Proxy, name: str) -> list[str]:
    """The daemon's own start_failed lines (it logs JSON to the supervisor's error log)."""
    return [str(e["error"]) for e in proxy.events()
            if e.get("event") == "start_failed" and str(e.get("error", "")).startswith(f"{name}:")]


@pytest.mark.parametrize("name, key", DAEMONS)
def test_a_taken_daemon_metrics_port_fails_the_start_in_one_line(tmp_path, upstream, certs, name, key):
    with _occupied() as busy:
        port = busy.getsockname()[1]
        proxy = Proxy(tmp_path, _vcrypto_config(upstream, certs["a"], key, port))
        try:
            status = proxy.proc.wait(timeout=START_TIMEOUT_S / 2)
        except subprocess.TimeoutExpired:
            status = None
        finally:
            proxy.stop()
    events = proxy.events()
    assert status == EXIT_METRICS_UNAVAILABLE, f"vcproxy still running (restart loop?): {[e['event'] for e in events]}"
    out = _output(proxy)
    assert "Traceback" not in out, out
    mine = _daemon_failures(proxy, name)
    assert len(mine) == 1 and f"127.0.0.1:{port}" in mine[0] and "Address already in use" in mine[0], out
    (failed,) = [e for e in events if e["event"] == "start_failed"
                 and not str(e.get("error", "")).startswith(f"{name}:")]  # the supervisor's, not the daemon's
    assert f"127.0.0.1:{port} (vcrypto.{key})" in failed["error"], failed
    assert not [e for e in events if e["event"] in ("ready", "daemon_died", "daemon_restarted")], events


def test_a_daemon_whose_metrics_port_is_taken_meanwhile_is_not_restarted(tmp_path, upstream, certs, ctx):
    """The engine-backend dies, another process takes its metrics port before
    the restart: the supervisor stops restarting it with one error event, and
    the proxy keeps serving TLS in-process (crypto.fallback: per_op)."""
    port = free_port()
    config = _vcrypto_config(upstream, certs["a"], "backend_metrics", port)
    with running_proxy(tmp_path, config) as proxy:
        pid = proxy.wait_event("ready")["daemons"]["vcrypto-engine-backend"]
        os.kill(pid, signal.SIGKILL)
        busy = socket.socket()
        busy.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        deadline = time.monotonic() + 5  # the kernel frees the port as the daemon dies
        while True:
            try:
                busy.bind(("127.0.0.1", port))
                break
            except OSError:
                assert time.monotonic() < deadline, "the killed daemon's port never came free"
                time.sleep(0.005)
        busy.listen()
        with busy:
            event = proxy.wait_event("daemon_not_restarted", 20)
            assert event["daemon"] == "vcrypto-engine-backend" and event["status"] == EXIT_METRICS_UNAVAILABLE
            assert f"127.0.0.1:{port} (vcrypto.backend_metrics)" in event["error"]
            time.sleep(2)  # a restart loop (every ~0.5 s) would show here
            events = [e["event"] for e in proxy.events()]
            assert events.count("daemon_died") == 1 and events.count("daemon_not_restarted") == 1, events
            assert "daemon_restarted" not in events and "daemon_restart_failed" not in events, events
            assert proxy.proc.poll() is None
            conn = http.client.HTTPSConnection("127.0.0.1", proxy.port, context=ctx, timeout=10)
            conn.request("GET", "/")
            assert conn.getresponse().status == 200
            conn.close()
    out = _output(proxy)
    assert "Traceback" not in out, out
    assert len(_daemon_failures(proxy, "vcrypto-engine-backend")) == 1, out
