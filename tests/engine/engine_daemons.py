"""Start real vcrypto daemons as subprocesses for tests (and for the TLS
interop suite's VcryptoProvider parameter: see ``vcrypto_provider_factory``).

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

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
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
