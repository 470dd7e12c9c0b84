"""``Type=notify`` readiness: each daemon tells ``$NOTIFY_SOCKET`` READY=1 once
it serves, and STOPPING=1 when it stops.

The test plays systemd's part with a real AF_UNIX datagram socket (a path,
and an ``@abstract`` name) with SO_PASSCRED, so every notification comes
with the sender's pid: READY=1 must come from the daemon itself (systemd's
``NotifyAccess=main``), and only once its sockets accept connections.
"""
from __future__ import annotations

import os
import signal
import socket
import struct
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import yaml

from tests.proxy.proxy_testkit import DemoUpstream, make_cert
from vcrypto import sdnotify

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.daemons
READY_TIMEOUT_S = 60.0


class NotifyListener:
    """What systemd binds for a unit: a datagram socket receiving credentials."""

    def __init__(self, tmp: Path, abstract: bool) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        if abstract:
            name = f"vcpx-test-notify-{uuid.uuid4().hex}"
            self.sock.bind("\0" + name)
            self.env_value = "@" + name
        else:
            path = tmp / "notify.sock"
            self.sock.bind(str(path))
            self.env_value = str(path)

    def receive(self, timeout_s: float) -> tuple[int, dict[str, str]]:
        """(sender pid, assignments) of the next datagram."""
        self.sock.settimeout(timeout_s)
        data, ancillary, _flags, _addr = self.sock.recvmsg(4096, socket.CMSG_SPACE(struct.calcsize("iII")))
        pid = next(struct.unpack("iII", payload[:12])[0] for level, kind, payload in ancillary
                   if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS)
        return pid, dict(line.split("=", 1) for line in data.decode().splitlines())

    def close(self) -> None:
        self.sock.close()


@pytest.fixture(params=["path", "abstract"])
def notify_listener(request, tmp_path):
    listener = NotifyListener(tmp_path, abstract=request.param == "abstract")
    yield listener
    listener.close()


def _spawn(args: list[str], tmp: Path, notify: NotifyListener, name: str) -> subprocess.Popen:
    env = dict(os.environ, NOTIFY_SOCKET=notify.env_value)
    log = open(tmp / f"{name}.log", "wb")
    try:
        return subprocess.Popen([sys.executable, *args], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    finally:
        log.close()


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def _connects(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(str(path))
            return True
        except OSError:
            return False


def _ready_then_stopping(proc: subprocess.Popen, notify: NotifyListener, tmp: Path, name: str):
    """The first notification (asserted READY=1 from ``proc``), then SIGTERM and
    the STOPPING=1 that must follow it."""
    try:
        pid, ready = notify.receive(READY_TIMEOUT_S)
    except TimeoutError:
        raise AssertionError(f"no notification from {name} in {READY_TIMEOUT_S}s (exit {proc.poll()}):\n"
                             + (tmp / f"{name}.log").read_text(errors="replace")[-2000:]) from None
    assert pid == proc.pid and ready.get("READY") == "1", (pid, ready)
    return ready


def _expect_stopping(proc: subprocess.Popen, notify: NotifyListener) -> None:
    proc.send_signal(signal.SIGTERM)
    pid, stopping = notify.receive(20)
    assert pid == proc.pid and stopping.get("STOPPING") == "1", (pid, stopping)
    assert proc.wait(20) == 0


def test_host_ready_once_its_socket_listens(tmp_path, notify_listener):
    sock = tmp_path / "host.sock"
    proc = _spawn(["-m", "vcrypto.host", "--socket", str(sock)], tmp_path, notify_listener, "host")
    try:
        ready = _ready_then_stopping(proc, notify_listener, tmp_path, "host")
        assert _connects(sock)     # READY=1 came after listen(): a driver can attach now
        assert str(sock) in ready.get("STATUS", "")
        _expect_stopping(proc, notify_listener)
    finally:
        _stop(proc)


def test_engine_backend_ready_once_its_socket_listens(tmp_path, notify_listener):
    sock = tmp_path / "backend.sock"
    proc = _spawn(["-m", "vcrypto.engine.backend", "--no-host", "--socket", str(sock)], tmp_path,
                  notify_listener, "backend")
    try:
        _ready_then_stopping(proc, notify_listener, tmp_path, "backend")
        assert _connects(sock)
        _expect_stopping(proc, notify_listener)
    finally:
        _stop(proc)


@pytest.mark.parametrize("daemon", ["vcrypto.host", "vcrypto.engine.backend"])
def test_sigterm_right_after_ready_is_not_lost(tmp_path, daemon):
    """systemctl stop at once after start: the daemon has sent READY=1 and must
    already act on SIGTERM (the backend used to re-arm its loop in run() after
    READY, losing a stop() that came first; it hung until SIGKILL)."""
    notify = NotifyListener(tmp_path, abstract=True)
    args = ["-m", daemon, "--socket", str(tmp_path / "d.sock")]
    args += ["--no-host"] if daemon.endswith("backend") else []
    for attempt in range(3):   # the window is small: a few tries catch a regression reliably
        proc = _spawn(args, tmp_path, notify, f"d{attempt}")
        try:
            _ready_then_stopping(proc, notify, tmp_path, f"d{attempt}")
            _expect_stopping(proc, notify)
        finally:
            _stop(proc)
    notify.close()


def test_supervisor_ready_after_workers_listen_and_only_it_notifies(tmp_path, notify_listener):
    """vcproxy run with its own daemons (manage: true): the daemons would send
    their own READY=1 first if they inherited $NOTIFY_SOCKET; the first
    notification must be the supervisor's, once a worker accepts TLS."""
    upstream = DemoUpstream(tmp_path)
    cert, key = make_cert(tmp_path, "server")
    config = {
        "listeners": [{"port": 0, "tls": {"certificates": [{"cert": str(cert), "key": str(key)}]}}],
        "upstreams": {"demo": {"servers": [upstream.address]}},
        "routes": [{"upstream": "demo"}],
        "workers": 1,
        "crypto": {"provider": "vcrypto"},
        "metrics": {"port": 0},
        "logging": {"error_log": str(tmp_path / "error.log"), "access_log": str(tmp_path / "access.log")},
    }
    (tmp_path / "vcproxy.yaml").write_text(yaml.safe_dump(config))
    proc = _spawn(["-m", "vcproxy", "run", "--config", str(tmp_path / "vcproxy.yaml")], tmp_path,
                  notify_listener, "vcproxy")
    try:
        ready = _ready_then_stopping(proc, notify_listener, tmp_path, "vcproxy")
        address = ready["STATUS"].removeprefix("serving ").split(", ")[0]
        host, _, port = address.rpartition(":")
        with socket.create_connection((host, int(port)), timeout=10):
            pass   # a worker is listening at READY=1
        _expect_stopping(proc, notify_listener)
        # nothing else (no daemon, no worker) notified meanwhile
        with pytest.raises(TimeoutError):
            notify_listener.receive(0.2)
    finally:
        _stop(proc)
        upstream.stop()


def test_no_notify_socket_is_a_no_op():
    assert sdnotify.notify("READY=1", env={}) is False


@pytest.mark.parametrize("value", ["relative/path", "vsock:2:1234"])
def test_unsupported_addresses_are_an_error(value):
    with pytest.raises(sdnotify.NotifyError, match="only absolute paths"):
        sdnotify.notify("READY=1", env={"NOTIFY_SOCKET": value})


def test_unreachable_socket_is_reported_not_fatal(tmp_path):
    env = {"NOTIFY_SOCKET": str(tmp_path / "gone.sock")}
    with pytest.raises(sdnotify.NotifyError, match="gone.sock"):
        sdnotify.notify("READY=1", env=env)
    warnings = []
    os.environ["NOTIFY_SOCKET"] = env["NOTIFY_SOCKET"]
    try:
        assert sdnotify.notify_or_warn("READY=1", warn=warnings.append) is False
    finally:
        del os.environ["NOTIFY_SOCKET"]
    assert len(warnings) == 1 and "gone.sock" in warnings[0]


@pytest.mark.parametrize("daemon, extra", [("vcrypto.host", []), ("vcrypto.engine.backend", ["--no-host"])])
def test_a_daemon_reports_a_failed_notification_as_one_json_event(tmp_path, daemon, extra):
    """NOTIFY_SOCKET naming nothing (a unit restarted under a manager that went
    away): the daemon keeps serving and says so in its own log, in the one log
    format, as the supervisor does (``sd_notify_failed``)."""
    import json
    import time

    sock, log = tmp_path / "d.sock", tmp_path / "d.log"
    env = dict(os.environ, NOTIFY_SOCKET=str(tmp_path / "gone.sock"))
    with open(tmp_path / "stderr.log", "wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", daemon, *extra, "--socket", str(sock), "--log", str(log)],
                                cwd=REPO, env=env, stdout=err, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        events: list[dict] = []
        while time.monotonic() < deadline and not any(e.get("event") == "sd_notify_failed" for e in events):
            assert proc.poll() is None, (tmp_path / "stderr.log").read_text()
            time.sleep(0.05)
            events = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
        failed = [e for e in events if e.get("event") == "sd_notify_failed"]
        assert len(failed) == 1 and "gone.sock" in failed[0]["error"], (events, (tmp_path / "stderr.log").read_text())
        assert _connects(sock)
    finally:
        _stop(proc)
    assert proc.returncode == 0
