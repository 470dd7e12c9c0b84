"""The backend's socket across restarts: a killed backend's stale socket file
does not stop the next one from starting; a live backend's is never stolen."""
import json
import os
import subprocess
import sys
import time

import engine_daemons


def test_restart_after_sigkill_replaces_the_stale_socket(tmp_path):
    first = engine_daemons.backend(tmp_path).start()
    first.kill()
    assert os.path.exists(first.socket_path)          # SIGKILL leaves the file behind
    proc = subprocess.Popen([sys.executable, *first.args], cwd=engine_daemons.REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        events = []
        for _ in range(20):   # the first lines: admin_listening, metrics, ... then listening
            line = proc.stdout.readline().decode()
            events.append(json.loads(line)["event"])
            if events[-1] == "listening":
                break
        assert events[-1] == "listening", events
        assert engine_daemons.backend_stats(first.socket_path) is not None
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_second_backend_on_a_live_socket_fails_clearly(tmp_path):
    live = engine_daemons.backend(tmp_path).start()
    try:
        out = subprocess.run([sys.executable, *live.args], cwd=engine_daemons.REPO,
                             capture_output=True, timeout=30)
        assert out.returncode == 2
        assert b"another process is serving" in out.stderr, out.stderr
        # the live backend still owns and serves its socket
        assert engine_daemons.backend_stats(live.socket_path) is not None
    finally:
        live.stop()


def test_host_restart_after_sigkill_and_no_stealing_a_live_socket(tmp_path):
    first = engine_daemons.host(tmp_path).start()
    first.kill()
    assert os.path.exists(first.socket_path)
    proc = subprocess.Popen([sys.executable, *first.args], cwd=engine_daemons.REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while not engine_daemons._connectable(first.socket_path):
            assert proc.poll() is None and time.monotonic() < deadline, "host did not restart"
            time.sleep(0.05)
        # a second host on the live path refuses clearly and leaves it alone
        out = subprocess.run([sys.executable, *first.args], cwd=engine_daemons.REPO,
                             capture_output=True, timeout=30)
        assert out.returncode == 2
        assert b"another process is serving" in out.stderr, out.stderr
        assert engine_daemons._connectable(first.socket_path)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
