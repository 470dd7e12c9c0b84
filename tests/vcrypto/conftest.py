"""Fixtures for the vcrypto host/driver tests: a real ``vcrypto-host``
subprocess on a unix socket in tmp_path, stopped by PID at teardown."""
from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


class HostProcess:
    def __init__(self, proc: subprocess.Popen, socket_path: str, log_path: Path):
        self.proc = proc
        self.socket_path = socket_path
        self.log_path = log_path
        self.metrics_port: int | None = None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        return self.proc.returncode


def _wait_ready(host: HostProcess, metrics: bool, timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not host.alive():
            raise RuntimeError(f"vcrypto-host exited early:\n{host.log()}")
        ready = False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.connect(host.socket_path)
                ready = True
        except OSError:
            pass
        if ready and metrics:
            m = re.search(r'"event":"metrics_listening".*"port":(\d+)', host.log())
            ready = m is not None
            if m:
                host.metrics_port = int(m.group(1))
        if ready:
            return
        time.sleep(0.05)
    raise RuntimeError(f"vcrypto-host not ready in {timeout_s}s:\n{host.log()}")


@pytest.fixture
def start_host(tmp_path):
    """Factory: start_host(config: dict | None, metrics=False) -> HostProcess."""
    started: list[HostProcess] = []

    def start(config: dict | None = None, *, metrics: bool = False, name: str = "host") -> HostProcess:
        sock = str(tmp_path / f"{name}.sock")
        log_path = tmp_path / f"{name}.log"
        args = [sys.executable, "-m", "vcrypto.host", "--socket", sock, "--log-level", "INFO"]
        if config is not None:
            cfg = tmp_path / f"{name}.yaml"
            cfg.write_text(yaml.safe_dump(config))
            args += ["--config", str(cfg)]
        if metrics:
            args += ["--metrics", "127.0.0.1:0"]
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        log_file = open(log_path, "wb")
        proc = subprocess.Popen(args, cwd=ROOT, stdout=log_file, stderr=subprocess.STDOUT, env=env)
        log_file.close()
        host = HostProcess(proc, sock, log_path)
        started.append(host)
        _wait_ready(host, metrics)
        return host

    yield start
    for host in started:
        host.stop()
