"""Start real vcrypto daemons as subprocesses for tests, and the fixtures the
TLS interop suite uses to run a second time over ``VcryptoProvider``
(``engine_stack``, ``vcrypto_tls_provider``: import both into a conftest).

Every process started here is stopped by PID in ``Daemon.stop``.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


class Daemon:
    def __init__(self, args: list[str], socket_path: str, log_path: Path):
        self.args = args
        self.socket_path = socket_path
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None

    def start(self, timeout_s: float = 20.0) -> Daemon:
        if os.path.exists(self.socket_path):
            os.unlink(self.socket_path)
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([sys.executable, *self.args], cwd=REPO,
                                     stdout=self._log, stderr=self._log)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.args} exited with {self.proc.returncode}:\n"
                                   + self.log_path.read_text(errors="replace")[-3000:])
            if _connectable(self.socket_path):
                return self
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"{self.args} not ready after {timeout_s}s:\n"
                           + self.log_path.read_text(errors="replace")[-3000:])

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def pause(self) -> None:
        """SIGSTOP: the daemon hangs without dying (its sockets stay open)."""
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.resume()  # a paused daemon would not act on SIGTERM
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        if getattr(self, "_log", None) is not None:
            self._log.close()
            self._log = None

    @property
    def pid(self) -> int:
        return self.proc.pid


def _connectable(path: str) -> bool:
    if not os.path.exists(path):
        return False
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(path)
        return True
    except OSError:
        return False
    finally:
        s.close()


def backend(tmp: Path, *, host_socket: str | None = None, extra: list[str] = (),
            name: str = "engine") -> Daemon:
    sock = str(tmp / f"{name}.sock")
    args = ["-m", "vcrypto.engine.backend", "--socket", sock]
    args += ["--host-socket", host_socket] if host_socket else ["--no-host"]
    return Daemon(args + list(extra), sock, tmp / f"{name}.log")


def host(tmp: Path, *, config: str | None = None, name: str = "host") -> Daemon:
    sock = str(tmp / f"{name}.sock")
    args = ["-m", "vcrypto.host", "--socket", sock]
    if config:
        args += ["--config", config]
    return Daemon(args, sock, tmp / f"{name}.log")


def backend_stats(socket_path: str, timeout_s: float = 5.0) -> dict:
    """The backend's counters over its control socket (sync, no attach)."""
    from vcrypto.engine.contract import control as _control

    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout_s)
        s.connect(socket_path)
        s.sendall(_control.encode({"t": "stats", "id": 1}))
        dec = _control.FrameDecoder()
        while True:
            data = s.recv(65536)
            if not data:
                raise RuntimeError("engine-backend closed the connection")
            for msg in dec.feed(data):
                if msg.get("id") == 1:
                    return msg["stats"]


class EngineStack:
    """A real vcrypto-host and an engine-backend attached to it."""

    def __init__(self, tmp: Path):
        self.host = host(tmp)
        self.backend = backend(tmp, host_socket=self.host.socket_path)

    def start(self) -> EngineStack:
        self.host.start()
        try:
            self.backend.start()
        except BaseException:
            self.host.stop()
            raise
        return self

    def stop(self) -> None:
        self.backend.stop()
        self.host.stop()

    def provider(self, **kw):
        from vcproxy.vcrypto_provider import VcryptoProvider

        return VcryptoProvider(self.backend.socket_path, **kw)

    def host_requests(self) -> int:
        st = backend_stats(self.backend.socket_path)
        return (st.get("device_stats") or {}).get("device", {}).get("requests", 0)


# -- fixtures for other suites (import them into a conftest) -------------------------


@pytest.fixture(scope="session")
def engine_stack(tmp_path_factory):
    """One vcrypto-host + engine-backend pair for the whole test session."""
    stack = EngineStack(tmp_path_factory.mktemp("vcrypto-engine")).start()
    try:
        yield stack
    finally:
        stack.stop()


@pytest.fixture
def vcrypto_tls_provider(engine_stack):
    """A ``VcryptoProvider`` on the shared stack. After the test: nothing fell
    back to in-process crypto, and the host executed at least every request
    the frontend offloaded (the host's own counters prove the ops ran there)."""
    before = engine_stack.host_requests()
    provider = engine_stack.provider()
    yield provider
    stats = provider.frontend.stats
    try:
        assert stats.fallback_requests == 0, (
            f"in-process fallback during the test: {stats} ({provider.frontend.last_detach_reason})")
        # A request whose task was cancelled when the test's server shut down is
        # still in the ring: the backend and host finish it on their own, so wait
        # (bounded) for the host's count rather than sampling it once.
        deadline = time.monotonic() + 10.0
        while (executed := engine_stack.host_requests() - before) < stats.submitted:
            assert time.monotonic() < deadline, (
                f"host executed {executed} of {stats.submitted} offloaded requests: {stats}")
            time.sleep(0.02)
    finally:
        provider.frontend.close_nowait()
