"""End to end: a real ``vcrypto-host`` subprocess whose pool holds a
``workers`` resource, an in-process ``openssl`` one, and two simulated
accelerators, one erroring and one hanging. A worker process is SIGKILLed
mid-burst. Every request through a real driver completes correctly (checked
against `cryptography` here), and the host's metrics endpoint shows the
faults, timeouts, retries, unhealthy marks and the probe's re-admission."""
from __future__ import annotations

import os
import re
import signal
import urllib.request

import pytest
import trio

from host_refcheck import check_signature, der_of
from vcrypto.driver import Driver, Item, PayloadPool, SessionParams
from vcrypto.ops import Alg, Op
from vcrypto.wire import virtio_crypto as vc
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

pytestmark = pytest.mark.daemons

POOL = {
    "resources": [
        {"name": "procs", "kind": "workers", "processes": 2},
        {"name": "soft", "kind": "openssl", "max_inflight": 2},
        {"name": "flaky", "kind": "simulated", "seed": 1, "faults": {"error_rate": 1.0}},
        {"name": "stuck", "kind": "simulated", "seed": 2, "faults": {"hang_rate": 1.0}},
    ],
    "policy": "capability",
    "retry": {"max_attempts": 4, "timeout_s": 1.0},
    "probe_interval_s": 0.2,
    "unhealthy_after_faults": 1,
}


def children_of(pid: int) -> set[int]:
    kids: set[int] = set()
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/children") as f:
                kids |= {int(p) for p in f.read().split()}
        except FileNotFoundError:  # that thread ended after the listing (it had no children left)
            continue
    return kids


def scrape(port: int) -> dict[tuple[str, str], float]:
    """{(metric name, resource label or ''): value} for the pool's gauges."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    out = {}
    for line in text.splitlines():
        m = re.match(r'^(vcrypto_host_pool_\w+)(?:\{([^}]*)\})? (\S+)$', line)
        if m:
            labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2) or ""))
            out[(m.group(1), labels.get("resource", labels.get("op", "")))] = float(m.group(3))
    return out


#: per-resource fields exported as gauges (the rest are counters, named ..._total)
GAUGE_FIELDS = ("healthy", "inflight", "max_inflight")


def res(metrics, field: str, resource: str) -> float:
    suffix = "" if field in GAUGE_FIELDS else "_total"
    return metrics[(f"vcrypto_host_pool_resource_{field}{suffix}", resource)]


async def test_faults_through_a_real_host(start_host):
    host = start_host({"pool": POOL}, metrics=True)
    port = host.metrics_port
    workers = children_of(host.proc.pid)
    assert len(workers) == 2, workers

    async def metrics():
        return await trio.to_thread.run_sync(scrape, port)

    async with await Driver.attach(host.socket_path) as drv:
        pool = await PayloadPool.create(drv)
        sign_sid = await drv.create_session(
            SessionParams(Op.SIGN, Alg.RSA_PSS_RSAE_SHA256, key=der_of(Alg.RSA_PSS_RSAE_SHA256)))
        key = bytes(range(16))
        seal_sid = await drv.create_session(SessionParams(Op.AEAD_SEAL, Alg.AES_128_GCM, key=key))

        killed: list[int] = []
        for burst in range(5):       # bounded: the kill must land on a busy worker
            msgs = [os.urandom(64) for _ in range(160)]
            items = [Item(sign_sid, Op.SIGN, Alg.RSA_PSS_RSAE_SHA256, m) for m in msgs]
            ivs = [os.urandom(12) for _ in range(40)]
            items += [Item(seal_sid, Op.AEAD_SEAL, Alg.AES_128_GCM, b"rec %d" % i * 50, iv)
                      for i, iv in enumerate(ivs)]
            results = []
            base = res(await metrics(), "completed", "procs")
            burst_done = trio.Event()

            async def run_burst():
                results.extend(await pool.run(items))
                burst_done.set()

            async def killer():
                # Kill once the burst is under way on the workers; if the
                # burst ends first (a slow scrape), try again next burst.
                while res(await metrics(), "completed", "procs") < base + 20:
                    if burst_done.is_set():
                        return
                    await trio.sleep(0.01)
                victim = sorted(children_of(host.proc.pid))[0]
                os.kill(victim, signal.SIGKILL)
                killed.append(victim)

            with trio.fail_after(60):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(run_burst)
                    nursery.start_soon(killer)
            # Every request completed, correctly.
            assert len(results) == len(items)
            for item, r in zip(items, results):
                assert r.status == vc.VIRTIO_CRYPTO_OK, (item.op, r.status)
                if item.op is Op.SIGN:
                    check_signature(Alg.RSA_PSS_RSAE_SHA256, item.src, r.data)
                else:
                    assert r.data == AESGCM(key).encrypt(item.iv, item.src, None)
            if res(await metrics(), "errors", "procs") >= 1:
                break
        m = await metrics()
        assert res(m, "errors", "procs") >= 1 and res(m, "retries", "procs") >= 1
        assert res(m, "unhealthy_marks", "procs") >= 1
        assert res(m, "errors", "flaky") >= 1 and res(m, "healthy", "flaky") == 0
        assert res(m, "timeouts", "stuck") >= 1 and res(m, "healthy", "stuck") == 0
        assert res(m, "completed", "flaky") == 0 and res(m, "completed", "stuck") == 0
        assert m[("vcrypto_host_pool_failed_total", "")] == 0
        assert m[("vcrypto_host_pool_retries_total", "")] >= 3
        # The killed worker was replaced; the probe re-admitted the resource.
        with trio.fail_after(10):
            while res(await metrics(), "healthy", "procs") != 1:
                await trio.sleep(0.1)
        m = await metrics()
        assert res(m, "readmissions", "procs") >= 1
        kids = children_of(host.proc.pid)
        assert len(kids) == 2 and not kids & set(killed)
        assert (await drv.stats())["device"]["requests"] >= 200
    assert host.alive()
