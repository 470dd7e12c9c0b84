"""Fail-over through a real ``vcrypto-host``: a small simulated accelerator
as the primary group, in-process openssl as the secondary. A burst larger
than the primary's slots spills to the secondary (counted in the host's
metrics); a trickle afterwards goes back to the primary. Results are checked
against `cryptography`."""
from __future__ import annotations

import os
import re
import urllib.request

import pytest
import trio
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from vcrypto.driver import Driver, Item, PayloadPool, SessionParams
from vcrypto.ops import Alg, Op

pytestmark = pytest.mark.daemons

POOL = {
    "resources": [
        {"name": "qat", "kind": "simulated", "max_inflight": 2, "parallelism": 2,
         "default_latency_us": 2000},
        {"name": "soft", "kind": "openssl", "max_inflight": 4},
    ],
    "groups": [{"name": "hw", "resources": ["qat"]}, {"name": "sw", "resources": ["soft"]}],
    "policy": "failover",
    "failover": {"primary": "hw", "secondary": "sw", "spill_hysteresis_jobs": 8},
}


def resource_gauges(port: int) -> dict[tuple[str, str], float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return {(m.group(1), m.group(2)): float(m.group(3)) for m in re.finditer(
        r'^vcrypto_host_pool_resource_(\w+?)(?:_total)?\{[^}]*resource="([^"]+)"[^}]*\} (\S+)$', text, re.M)}


async def test_failover_spills_and_returns_through_the_host(start_host):
    host = start_host({"pool": POOL}, metrics=True)
    key = os.urandom(32)

    async def gauges():
        return await trio.to_thread.run_sync(resource_gauges, host.metrics_port)

    async with await Driver.attach(host.socket_path) as drv:
        pool = await PayloadPool.create(drv)
        sid = await drv.create_session(SessionParams(Op.AEAD_SEAL, Alg.AES_256_GCM, key=key))

        async def run(n: int, window: int):
            items = [Item(sid, Op.AEAD_SEAL, Alg.AES_256_GCM, os.urandom(100), os.urandom(12))
                     for _ in range(n)]
            with trio.fail_after(60):
                results = await pool.run(items, window=window)
            for item, r in zip(items, results):
                assert r.ok and r.data == AESGCM(key).encrypt(item.iv, item.src, None)

        await run(10, window=1)            # one at a time: the primary only
        g = await gauges()
        assert (g[("completed", "qat")], g[("completed", "soft")]) == (10, 0)
        await run(60, window=60)           # a burst: the primary saturates and spills
        g = await gauges()
        assert g[("spills", "soft")] > 0 and g[("spills", "soft")] == g[("completed", "soft")]
        spilled = g[("completed", "soft")]
        await run(20, window=1)            # a trickle again: back to the primary
        g = await gauges()
        assert g[("completed", "soft")] - spilled <= 8     # at most the hysteresis
        assert g[("completed", "qat")] >= 10 + 2 + 12
        assert g[("healthy", "qat")] == 1 and g[("errors", "qat")] == 0
