"""Two frontend processes (two proxy workers) share one engine-backend and
host; a forked worker reattaches on its own."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from vcrypto.engine.frontend import Frontend

pytestmark = pytest.mark.daemons
WORKER = str(Path(__file__).with_name("frontend_worker.py"))


def _spawn(sock, seed, *extra):
    return subprocess.Popen([sys.executable, WORKER, sock, "20", "4", str(seed), *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            cwd=Path(__file__).resolve().parents[2])


def _results(proc):
    out, err = proc.communicate(timeout=150)
    assert proc.returncode == 0, err.decode()[-3000:]
    return [json.loads(line) for line in out.decode().splitlines() if line.startswith("{")]


async def test_two_frontend_processes_each_get_their_own_results(host_and_backend):
    _h, backend = host_and_backend
    procs = [_spawn(backend.socket_path, seed) for seed in (1, 2)]
    results = []
    for p in procs:
        results += await trio.to_thread.run_sync(_results, p)
    assert len(results) == 2
    for r in results:
        assert r["bad"] == 0 and r["ok"] == 20 * 4
        assert r["fallback_requests"] == 0 and r["submitted"] > 0
    fe = Frontend(backend.socket_path)
    st = await fe.backend_stats()
    assert st["frontends_attached"] >= 3  # two workers + this probe
    assert st["completed"] >= sum(r["submitted"] for r in results)
    assert st["device_stats"]["device"]["requests"] >= sum(r["submitted"] for r in results)
    await fe.aclose()


async def test_forked_worker_reattaches_cleanly(host_and_backend):
    _h, backend = host_and_backend
    results = await trio.to_thread.run_sync(_results, _spawn(backend.socket_path, 7, "--fork"))
    roles = {r["role"]: r for r in results}
    assert set(roles) == {"main", "child"}
    for r in roles.values():
        assert r["bad"] == 0 and r["fallback_requests"] == 0
    # the child never used its parent's ring: it attached on its own
    assert roles["child"]["attaches"] == 2 and roles["main"]["attaches"] == 2
    fe = Frontend(backend.socket_path)
    with trio.fail_after(10):
        while (st := await fe.backend_stats())["sessions"]:
            await trio.sleep(0.05)
    assert st["frontends"] == 1  # only this probe is still attached
    await fe.aclose()
