"""Keyless mode in the product (DESIGN §5, §7): a certificate with ``key_ref``
signs through a key only vcrypto-host holds (``vcrypto.keys_dir``). The
workers never hold it — their memory is searched for the key's private
scalar and its PEM — and while the host is away a keyless handshake fails
with a TLS alert, a metric and a log line, never a silent in-process key."""
from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import ssl
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from proxy_testkit import base_config, client_context, scrape, total, worker_pids

REQUEST = b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"


def _get(port: int, ctx: ssl.SSLContext) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=20) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost") as tls:
            tls.sendall(REQUEST)
            data = b""
            while chunk := tls.recv(65536):
                data += chunk
    assert data.startswith(b"HTTP/1.1 200 "), data[:100]
    return data


def _memory_holds(pid: int, needles: list[bytes]) -> list[bytes]:
    """Which of ``needles`` occur in the process's readable private/anon memory."""
    found = set()
    with open(f"/proc/{pid}/maps") as maps, open(f"/proc/{pid}/mem", "rb", 0) as mem:
        for line in maps:
            m = re.match(r"([0-9a-f]+)-([0-9a-f]+) (\S+) \S+ \S+ \S+\s*(.*)", line)
            start, end, perms, path = int(m[1], 16), int(m[2], 16), m[3], m[4]
            if "r" not in perms or path.startswith("[v") or end - start > 1 << 30:
                continue
            try:
                mem.seek(start)
                chunk = mem.read(end - start)
            except (OSError, ValueError, OverflowError):
                continue
            found.update(n for n in needles if n in chunk)
    return sorted(found)


def _needles(key_path: Path) -> list[bytes]:
    pem = key_path.read_bytes()
    key = serialization.load_pem_private_key(pem, password=None)
    scalar = key.private_numbers().private_value.to_bytes(32, "big")
    b64_line = pem.splitlines()[2]   # a line of the PEM body
    return [scalar, b64_line]


def test_keyless_certificate_signs_at_the_host_and_workers_never_hold_the_key(
        start_proxy, certs, upstream, tmp_path):
    cert, key = certs["a"]
    keys_dir = tmp_path / "keys"
    keys_dir.mkdir()
    shutil.copy(key, keys_dir / "site.pem")
    runtime = tmp_path / "rt"
    runtime.mkdir()
    config = base_config(upstream.address, None, workers=1,
                         crypto={"provider": "vcrypto", "stall_timeout_s": 0.75},
                         vcrypto={"runtime_dir": str(runtime), "keys_dir": str(keys_dir)})
    config["listeners"][0]["tls"] = {"certificates": [{"cert": str(cert), "key_ref": "site"}]}
    proxy = start_proxy(config)
    ctx = client_context(cert)
    for _ in range(3):
        _get(proxy.port, ctx)
    m = scrape(proxy.metrics_url)
    assert total(m, "vcproxy_crypto_ops_total", op="sign", provider="vcrypto") >= 3
    assert total(m, "vcproxy_crypto_keyless_failures_total") == 0
    for pid in worker_pids(proxy):
        assert _memory_holds(pid, _needles(key)) == [], "a worker holds the certificate key"

    # The host away (hung): keyless handshakes fail cleanly, counted and logged.
    host_pid = proxy.wait_event("ready")["daemons"]["vcrypto-host"]
    os.kill(host_pid, signal.SIGSTOP)
    try:
        failed = 0
        deadline = time.monotonic() + 30
        while failed < 2:
            assert time.monotonic() < deadline, "keyless handshakes kept succeeding with the host stopped"
            try:
                _get(proxy.port, ctx)
            except ssl.SSLError as exc:
                assert "alert" in str(exc).lower() or "internal" in str(exc).lower(), exc
                failed += 1
    finally:
        os.kill(host_pid, signal.SIGCONT)
    deadline = time.monotonic() + 10
    while total(scrape(proxy.metrics_url), "vcproxy_crypto_keyless_failures_total", key_ref="site") < 2:
        assert time.monotonic() < deadline, "keyless failures not exported"
        time.sleep(0.2)
    assert any(e.get("event") == "keyless_sign_failed" and e.get("key_ref") == "site"
               for e in proxy.events())
    deadline = time.monotonic() + 30
    while True:   # back at the host: keyless handshakes succeed again
        try:
            _get(proxy.port, ctx)
            break
        except (ssl.SSLError, OSError):
            assert time.monotonic() < deadline, "keyless handshakes did not recover"
            time.sleep(0.2)


def test_key_ref_needs_vcrypto_and_keys_dir(certs, tmp_path):
    from vcproxy.config import ConfigError, parse_config
    import yaml

    cert, _key = certs["a"]
    data = base_config("127.0.0.1:1", None)
    data["listeners"][0]["tls"] = {"certificates": [{"cert": str(cert), "key_ref": "site"}]}
    with pytest.raises(ConfigError) as info:
        parse_config(yaml.safe_dump(data))
    assert "crypto.provider: vcrypto" in dict(info.value.problems)[
        "listeners[0].tls.certificates[0].key_ref"]
    data["crypto"] = {"provider": "vcrypto"}
    with pytest.raises(ConfigError) as info:
        parse_config(yaml.safe_dump(data))
    assert "keys_dir" in dict(info.value.problems)["listeners[0].tls.certificates[0].key_ref"]
    data["listeners"][0]["tls"]["certificates"][0]["key"] = str(_key)
    with pytest.raises(ConfigError) as info:
        parse_config(yaml.safe_dump(data))
    assert "exactly one" in dict(info.value.problems)["listeners[0].tls.certificates[0].key"]
