"""Each vcrypto daemon run on its own (as systemd runs it) with ``--metrics``
on a port another process holds: one JSON start_failed line naming the address, exit
status 78 (not restartable), no traceback, and no unix socket left behind
for a supervisor to mistake for readiness."""
from __future__ import annotations

import json
import socket
import subprocess
import sys

import pytest

from vcrypto.metrics_endpoint import EXIT_METRICS_UNAVAILABLE


@pytest.mark.parametrize("prog, argv", [
    ("vcrypto-host", ["-m", "vcrypto.host", "--socket", "{sock}"]),
    ("vcrypto-engine-backend", ["-m", "vcrypto.engine.backend", "--socket", "{sock}", "--host-socket", "{sock}.h"]),
])
def test_a_daemon_with_its_metrics_port_taken_exits_78_in_one_line(tmp_path, prog, argv):
    sock_path = str(tmp_path / "d.sock")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        args = [a.format(sock=sock_path) for a in argv] + ["--metrics", f"127.0.0.1:{port}"]
        result = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=60)
    assert result.returncode == EXIT_METRICS_UNAVAILABLE == 78, result.stderr
    assert "Traceback" not in result.stderr
    records = [json.loads(line) for line in result.stderr.splitlines()]  # one JSON log format
    assert [(r["level"], r["event"], r["error"]) for r in records] == [
        ("error", "start_failed",
         f"{prog}: --metrics 127.0.0.1:{port}: cannot bind 127.0.0.1:{port}: Address already in use")], \
        result.stderr
    assert not (tmp_path / "d.sock").exists()
