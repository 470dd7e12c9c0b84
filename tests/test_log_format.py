"""The shared JSON log format (``vcrypto._log``): the timestamp, one line per
record however often logging is configured, stdlib records as events, and
``reopen()`` after a rename (logrotate)."""
from __future__ import annotations

import calendar
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vcrypto._log import JsonLog, event, iso_ts, reopen_logged, route_stdlib

REPO = Path(__file__).resolve().parents[1]
TS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_iso_ts_is_utc_with_milliseconds():
    t = 1796419287.0179
    assert iso_ts(t) == "2026-12-04T21:21:27.017Z"
    assert iso_ts(t + 1) == "2026-12-04T21:21:28.017Z"  # the cached second moves on
    now = iso_ts()
    assert TS.match(now)
    parsed = calendar.timegm(time.strptime(now[:19], "%Y-%m-%dT%H:%M:%S"))
    assert abs(parsed - time.time()) < 5


def test_event_lines_and_reopen_after_a_rename(tmp_path):
    path = tmp_path / "x.log"
    log = JsonLog(str(path), "info")
    log.debug("hidden")
    log.info("first", n=1)
    path.rename(tmp_path / "x.log.1")
    log.info("second")  # still the renamed file: nothing reopened yet
    reopen_logged([log], why="test")
    log.warning("third", path=Path("/p"))
    old, new = _records(tmp_path / "x.log.1"), _records(path)
    assert [r["event"] for r in old] == ["first", "second"]
    assert [r["event"] for r in new] == ["logs_reopened", "third"]
    assert new[0]["files"] == [str(path)] and new[0]["why"] == "test"
    for r in old + new:
        assert TS.match(r["ts"]) and r["pid"] == os.getpid() and r["level"] in ("info", "warning")
    assert old[0]["n"] == 1 and new[1]["path"] == "/p"
    log.close()


def test_stdlib_records_become_events_once_however_often_routed(tmp_path):
    path = tmp_path / "std.log"
    log = JsonLog(str(path), "info")
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        route_stdlib(log)
        route_stdlib(log)  # a reconfigure replaces the handler; it never adds a second
        lib = logging.getLogger("vcrypto.test.lib")
        lib.info("device %d attached", 3)
        event(lib, "warning", "resource_unhealthy", resource="sim0", outcome="fault")
        lib.debug("below the level")
        try:
            raise ValueError("boom")
        except ValueError:
            event(lib, "error", "device_failed", exc_info=True, device=3)
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
    records = _records(path)
    assert [r["event"] for r in records] == ["log", "resource_unhealthy", "device_failed"]
    assert records[0] | {"ts": None} == {"ts": None, "level": "info", "event": "log", "pid": os.getpid(),
                                         "logger": "vcrypto.test.lib", "msg": "device 3 attached"}
    assert records[1]["resource"] == "sim0" and records[1]["level"] == "warning"
    assert "ValueError: boom" in records[2]["traceback"] and records[2]["device"] == 3
    log.close()


@pytest.mark.daemons
@pytest.mark.parametrize("daemon", ["host", "backend"])
def test_a_daemon_logs_json_once_per_line_and_reopens_on_sigusr1(tmp_path, daemon):
    """Each daemon on its own, with a metrics endpoint (whose line the host
    printed twice, once as stdlib text and once as a bare print)."""
    sock, log = tmp_path / "d.sock", tmp_path / "d.log"
    args = ["--socket", str(sock), "--metrics", "127.0.0.1:0", "--log", str(log)]
    module = "vcrypto.host" if daemon == "host" else "vcrypto.engine.backend"
    if daemon == "backend":
        args.append("--no-host")
    out = tmp_path / "stdout"
    with open(out, "wb") as f:
        proc = subprocess.Popen([sys.executable, "-m", module, *args], cwd=REPO, stdout=f, stderr=f)
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not (
                log.exists() and '"event":"listening"' in log.read_text() and "metrics_listening" in log.read_text()):
            assert proc.poll() is None, out.read_text()
            time.sleep(0.05)
        log.rename(tmp_path / "d.log.1")
        proc.send_signal(signal.SIGUSR1)
        while time.monotonic() < deadline and not (log.exists() and "logs_reopened" in log.read_text()):
            assert proc.poll() is None, out.read_text()
            time.sleep(0.05)
    finally:
        proc.terminate()
        proc.wait(10)
    before, after = (tmp_path / "d.log.1").read_text().splitlines(), log.read_text().splitlines()
    assert len(set(before)) == len(before)
    records = [json.loads(line) for line in before + after]
    for r in records:
        assert TS.match(r["ts"]) and r["pid"] == proc.pid and r["level"] in ("info", "warning"), r
    assert [r["event"] for r in records].count("metrics_listening") == 1
    assert records[len(before)]["event"] == "logs_reopened"
    assert out.read_text() == ""  # everything went to the log file
