"""The split deployment as deploy/systemd runs it: two users on one machine.

vcrypto-host and the engine-backend run as a crypto user, the proxy as a
proxy user that shares only a group with it; the daemons' sockets live in a
runtime directory of that group (systemd's ``RuntimeDirectory=vcrypto``,
``Group=vcrypto``, ``SupplementaryGroups=vcrypto`` for vcproxy). The proxy
is configured for daemons it does not manage (``vcrypto.manage: false``
with the socket paths). Real TLS handshakes through it must be offloaded to
vcrypto with no fallback: before the daemons set a socket mode and group,
the workers got EACCES on ``backend.sock`` (``srwxr-xr-x``, owned by the
crypto user) and silently did all crypto in-process.

Needs root (it creates the users, as CI's ``.ci/run`` runs); everything runs
on loopback and every process is stopped by PID.
"""
from __future__ import annotations

import grp
import json
import os
import shutil
import signal
import socket
import ssl
import stat
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from tests.engine.engine_daemons import backend_stats
from tests.proxy.proxy_testkit import DemoUpstream, make_cert, scrape, total
from tests.deploy.split_testkit import Account, ensure_user, own, runnable_python

pytestmark = [pytest.mark.daemons,
              pytest.mark.skipif(os.geteuid() != 0, reason="creates system users and switches to them: root only")]

SHARED = "vcpx-test-shared"      # the `vcrypto` group of deploy/systemd
CRYPTO_USER = "vcpx-test-crypto"
PROXY_USER = "vcpx-test-proxy"
START_TIMEOUT_S = 60.0


class Split:
    """The users, a readable Python for them, and the directories of the set-up."""

    def __init__(self, top: Path) -> None:
        self.top = top
        self.crypto: Account = ensure_user(CRYPTO_USER, SHARED)
        self.proxy: Account = ensure_user(PROXY_USER, SHARED)
        self.shared_gid = grp.getgrnam(SHARED).gr_gid
        self.python, self.env, self.how = runnable_python(top / "python", self.proxy)
        self.etc = top / "etc"
        self.etc.mkdir(mode=0o755)
        # /run/vcrypto: the crypto user's, traversable by the shared group only
        self.run = own(top / "run", self.crypto.uid, self.shared_gid, 0o750)
        self.proxy_dir = own(top / "proxy", self.proxy.uid, self.proxy.gid, 0o750)
        self.logs = top / "logs"
        self.logs.mkdir(mode=0o700)
        self.procs: list[subprocess.Popen] = []

    def spawn(self, account: Account, name: str, argv: list[str]) -> subprocess.Popen:
        log = open(self.logs / f"{name}.log", "wb")
        proc = subprocess.Popen([*self.python, *argv], env=self.env, cwd=self.etc, stdout=log,
                                stderr=subprocess.STDOUT, **account.popen_kwargs())
        log.close()
        self.procs.append(proc)
        return proc

    def log(self, name: str) -> str:
        return (self.logs / f"{name}.log").read_text(errors="replace")

    def wait_socket(self, proc: subprocess.Popen, name: str, path: Path) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise AssertionError(f"{name} exited {proc.returncode}:\n{self.log(name)[-3000:]}")
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                probe.connect(str(path))
                return
            except OSError:
                time.sleep(0.05)
            finally:
                probe.close()
        raise AssertionError(f"{name} not listening on {path} after {START_TIMEOUT_S}s:\n{self.log(name)[-3000:]}")

    def stop(self) -> None:
        for proc in reversed(self.procs):   # the proxy first, the host last
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)


@pytest.fixture
def split():
    top = Path(tempfile.mkdtemp(prefix="vcpx-split-"))
    top.chmod(0o755)   # mkdtemp's 0700 would shut the users out
    setup = Split(top)
    try:
        yield setup
    finally:
        setup.stop()
        shutil.rmtree(top, ignore_errors=True)


def _events(path: Path) -> list[dict]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            pass
    return out


def _start_daemons(split: Split, backend_mode: str = "0660") -> tuple[Path, Path]:
    host_sock, backend_sock = split.run / "host.sock", split.run / "backend.sock"
    host_yaml = split.etc / "host.yaml"   # the host's own config (deploy/systemd: /etc/vcrypto/host.yaml)
    host_yaml.write_text(yaml.safe_dump({"socket_mode": "0660", "socket_group": SHARED}))
    host = split.spawn(split.crypto, "host", ["-m", "vcrypto.host", "--socket", str(host_sock),
                                              "--config", str(host_yaml)])
    split.wait_socket(host, "host", host_sock)
    backend = split.spawn(split.crypto, "backend", [
        "-m", "vcrypto.engine.backend", "--host-socket", str(host_sock), "--socket", str(backend_sock),
        "--socket-mode", backend_mode, "--socket-group", SHARED])
    split.wait_socket(backend, "backend", backend_sock)
    return host_sock, backend_sock


def _proxy_handshakes(split: Split, host_sock: Path, backend_sock: Path, handshakes: int):
    """The proxy as the proxy user, attached to the crypto user's daemons;
    ``handshakes`` real TLS connections through it. Returns (proxy metrics
    after its workers exported their counters, its error-log events)."""
    upstream = DemoUpstream(split.logs)
    try:
        cert, key = make_cert(split.etc, "server")
        own(key, split.proxy.uid, split.proxy.gid, 0o600)
        cert.chmod(0o644)
        error_log = split.proxy_dir / "error.log"
        config = {
            "listeners": [{"address": "127.0.0.1", "port": 0,
                           "tls": {"certificates": [{"cert": str(cert), "key": str(key)}]}}],
            "upstreams": {"demo": {"servers": [upstream.address]}},
            "routes": [{"upstream": "demo"}],
            "workers": 1,
            "crypto": {"provider": "vcrypto"},
            # the daemons run on their own: the proxy only attaches to them
            "vcrypto": {"manage": False, "runtime_dir": str(split.proxy_dir / "rt"),
                        "host_socket": str(host_sock), "backend_socket": str(backend_sock)},
            "metrics": {"address": "127.0.0.1", "port": 0},
            "logging": {"error_log": str(error_log), "access_log": str(split.proxy_dir / "access.log")},
        }
        config_path = split.etc / "vcproxy.yaml"
        config_path.write_text(yaml.safe_dump(config))
        proxy = split.spawn(split.proxy, "proxy", ["-m", "vcproxy", "run", "--config", str(config_path)])
        deadline = time.monotonic() + START_TIMEOUT_S
        ready = None
        while ready is None and time.monotonic() < deadline:
            ready = next((e for e in _events(error_log) if e.get("event") == "ready"), None)
            if proxy.poll() is not None:
                raise AssertionError(f"vcproxy exited {proxy.returncode}:\n{split.log('proxy')[-3000:]}")
            time.sleep(0.05)
        assert ready is not None, f"vcproxy not ready ({split.how}):\n{split.log('proxy')[-3000:]}"
        assert ready["daemons"] == {}   # it started none: they are the crypto user's
        port = int(next(iter(ready["listeners"].values())).rsplit(":", 1)[1])

        ctx = ssl.create_default_context(cafile=str(cert))
        for _ in range(handshakes):   # full handshakes (ECDHE + signature each) and a request
            with socket.create_connection(("127.0.0.1", port), timeout=20) as raw, \
                    ctx.wrap_socket(raw, server_hostname="localhost") as tls:
                tls.sendall(b"GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
                reply = b""
                while chunk := tls.recv(65536):
                    reply += chunk
            assert reply.startswith(b"HTTP/1.1 200 ") and reply.endswith(b"ok\n"), reply[:200]
        return scrape(ready["metrics"]), _events(error_log)
    finally:
        upstream.stop()


def test_split_users_offload_with_no_fallback(split):
    host_sock, backend_sock = _start_daemons(split)
    for path in (host_sock, backend_sock):
        st = os.lstat(path)
        assert stat.S_ISSOCK(st.st_mode)
        assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (split.crypto.uid, split.shared_gid, 0o660), path
    m, events = _proxy_handshakes(split, host_sock, backend_sock, handshakes=4)
    # Ground truth: the engine-backend (the crypto user's) served an attached
    # frontend and completed the handshakes' ECDH and signatures.
    stats = backend_stats(str(backend_sock))
    assert stats["frontends_attached"] >= 1, stats
    assert stats["completed"] >= 8, stats
    fallbacks = total(m, "vcproxy_crypto_fallbacks_total")
    assert fallbacks == 0, (f"the proxy user fell back to in-process crypto ({fallbacks}):\n"
                            + split.log("proxy")[-2000:])
    assert total(m, "vcproxy_crypto_ops_total", op="ecdh", provider="vcrypto") >= 4
    assert total(m, "vcproxy_crypto_ops_total", op="sign", provider="vcrypto") >= 4
    assert total(m, "vcproxy_crypto_ops_total", op="sign", provider="inline") == 0
    assert not [e for e in events if e.get("event", "").startswith("vcrypto_socket_")]


def test_a_socket_the_proxy_user_may_not_use_is_named_at_start(split):
    """The control: backend.sock 0600 (only the crypto user) is the failure of
    #14 again: the supervisor says so at start-up (naming the socket), and the
    workers' crypto falls back in-process, which the metrics show."""
    host_sock, backend_sock = _start_daemons(split, backend_mode="0600")
    m, events = _proxy_handshakes(split, host_sock, backend_sock, handshakes=1)
    denied = [e for e in events if e.get("event") == "vcrypto_socket_denied"]
    assert len(denied) == 1 and denied[0]["socket"] == str(backend_sock), events
    assert total(m, "vcproxy_crypto_fallbacks_total") > 0
    assert backend_stats(str(backend_sock))["frontends_attached"] == 0


def test_socket_group_the_user_is_not_in_is_a_clear_error(split):
    """A group the daemon's user does not belong to cannot be given the socket:
    exit 2 naming the option, and no socket file left with the wrong access."""
    backend = split.spawn(split.crypto, "backend-badgroup", [
        "-m", "vcrypto.engine.backend", "--no-host", "--socket", str(split.run / "b.sock"),
        "--socket-group", "root"])
    assert backend.wait(30) == 2
    out = split.log("backend-badgroup")
    assert "--socket-group" in out and "must be a member" in out, out
    assert not (split.run / "b.sock").exists()
