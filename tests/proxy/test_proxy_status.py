"""``vcrypto status`` against the set-up ``make run`` starts: ``vcproxy run``
with the embedded default config (config/vcproxy.yaml: two workers, the
supervisor starting vcrypto-host and vcrypto-engine-backend with the default
pool), only its ports and certificate changed. TLS requests go through, then
the ``vcrypto`` console script is run as a subprocess, finding the daemons
the way an operator's shell would (the supervisor's runtime file in
``$TMPDIR``), and its table and ``--json`` are checked for the pool, the
sessions and the attached frontends."""
from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from proxy_testkit import REPO, Proxy, free_port

pytestmark = pytest.mark.daemons

VCRYPTO = str(Path(sys.executable).with_name("vcrypto"))   # the console script (pyproject)


def make_run_config(cert: tuple[Path, Path]) -> dict:
    config = yaml.safe_load((REPO / "config" / "vcproxy.yaml").read_text())
    demo_port = free_port()
    config["listeners"][0]["port"] = 0
    config["listeners"][0]["tls"]["certificates"] = [{"cert": str(cert[0]), "key": str(cert[1])}]
    config["upstreams"]["demo"]["servers"] = [f"127.0.0.1:{demo_port}"]
    config["demo_upstream"]["port"] = demo_port
    config["vcrypto"]["host_metrics"] = "127.0.0.1:0"
    config["vcrypto"]["backend_metrics"] = "127.0.0.1:0"
    config["metrics"]["port"] = 0
    return config


def vcrypto(*args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([VCRYPTO, *args], env=env, capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="module")
def running(tmp_path_factory, certs):
    tmp = tmp_path_factory.mktemp("status")
    tmpdir = tmp / "tmpdir"       # the supervisor makes its runtime dir here, as in /tmp
    tmpdir.mkdir()
    mp = pytest.MonkeyPatch()
    mp.setenv("TMPDIR", str(tmpdir))
    try:
        proxy = Proxy(tmp, make_run_config(certs["a"]))
    finally:
        mp.undo()
    try:
        proxy.wait_ready()
        yield proxy, tmpdir
    finally:
        proxy.stop()


def test_status_shows_pool_sessions_and_frontends(running, ctx):
    proxy, tmpdir = running
    env = dict(os.environ, TMPDIR=str(tmpdir))
    for _ in range(4):      # full handshakes: ECDH + ECDSA signature at the host
        conn = http.client.HTTPSConnection("127.0.0.1", proxy.port, context=ctx, timeout=30)
        conn.request("GET", "/health")
        assert conn.getresponse().read() == b"ok\n"
        conn.close()
    # A connection kept open, with records big enough to be offloaded: its
    # traffic-key sessions live at the backend and the host while it is open.
    keep = http.client.HTTPSConnection("127.0.0.1", proxy.port, context=ctx, timeout=30)
    try:
        keep.request("GET", "/bytes?n=262144")
        assert len(keep.getresponse().read()) == 262144
        text = vcrypto("status", env=env)
        as_json = vcrypto("status", "--json", env=env)
    finally:
        keep.close()
    assert text.returncode == 0, text.stderr
    assert as_json.returncode == 0, as_json.stderr
    print(text.stdout)

    out = text.stdout
    assert "vcrypto-host  pid" in out and "vcrypto-engine-backend  pid" in out
    for resource in ("sodium", "openssl", "spare"):
        assert f"    {resource} " in out
    assert "frontends 2" in out and "cache hit rate" in out and "polling " in out

    docs = json.loads(as_json.stdout)
    host = docs["vcrypto-host"]["status"]
    backend = docs["vcrypto-engine-backend"]["status"]
    resources = host["pool"]["resources"]
    assert len({r["kind"] for r in resources}) >= 2                 # two implementations at least
    assert all(r["health"] == "healthy" for r in resources)
    assert sum(r["completed"] for r in resources) > 0
    completions = host["totals"]["completions"]
    assert any(k.startswith("sign/") and k.endswith("/ok") for k in completions), completions
    assert any(k.startswith("ecdh/") and k.endswith("/ok") for k in completions), completions
    # the open connection's offloaded records: AEAD sessions at both daemons
    # a connection's traffic keys travel stateless (mech-aead): the 256 KiB
    # download's records were sealed at the host with no AEAD session at all
    assert not any(k.startswith("aead_") for k in backend["sessions"]["by_kind"]), backend["sessions"]
    assert not any(k.startswith("aead_") for d in host["devices"] for k in d["sessions_by_kind"])
    assert any(k.startswith("aead_") and k.endswith("/ok") for k in completions), completions
    assert backend["sessions"]["cache"]["lookups"] > 0
    # the proxy's two workers are the backend's frontends; the backend is the host's device
    assert sorted(f["pid"] for f in backend["frontends"]) == sorted(proxy.workers)
    assert [d["driver_pid"] for d in host["devices"]] == [backend["pid"]]
    assert backend["device"]["up"] and backend["requests"]["completed"] > 0
    assert host["devices"][0]["queues"][0]["state"] == "running"
    assert backend["polling"]["mode"] in ("doorbell", "adaptive")


def test_an_unreachable_daemon_is_named_and_the_other_still_shown(running):
    proxy, tmpdir = running
    runtime_dir = proxy.wait_event("ready")["runtime_dir"]
    env = dict(os.environ)
    result = vcrypto("status", "--runtime-dir", runtime_dir,
                     "--backend-admin", str(tmpdir / "gone.admin.sock"), env=env)
    assert result.returncode == 2
    assert "vcrypto-host  pid" in result.stdout                      # the reachable one
    assert "vcrypto-engine-backend  UNREACHABLE" in result.stdout
    assert "gone.admin.sock: no such socket" in result.stderr
    as_json = vcrypto("status", "--json", "--runtime-dir", runtime_dir,
                      "--backend-admin", str(tmpdir / "gone.admin.sock"), env=env)
    assert as_json.returncode == 2
    docs = json.loads(as_json.stdout)
    assert docs["vcrypto-host"]["ok"] and not docs["vcrypto-engine-backend"]["ok"]


def test_no_daemons_found_is_a_clear_error(tmp_path):
    env = dict(os.environ, TMPDIR=str(tmp_path))
    result = vcrypto("status", env=env)
    if os.path.exists("/run/vcrypto/host.admin.sock"):
        pytest.skip("a system vcrypto-host runs on this machine")
    assert result.returncode == 2
    assert "no running vcrypto daemons found" in result.stderr
