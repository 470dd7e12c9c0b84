"""The host's prometheus endpoint reports devices, sessions, request counts by
op/alg/status, notification counters and the pool's per-resource stats."""
from __future__ import annotations

import os
import urllib.request

import trio

from vcrypto.driver import Driver, Item, PayloadPool, SessionParams
from vcrypto.ops import Alg, Op


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        return resp.read().decode()


def _value(text: str, prefix: str) -> float:
    for line in text.splitlines():
        if line.startswith(prefix):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{prefix!r} not in metrics:\n{text}")


async def test_metrics_endpoint(start_host):
    host = start_host(metrics=True)
    assert host.metrics_port
    async with await Driver.attach(host.socket_path) as drv:
        sid = await drv.create_session(SessionParams(Op.AEAD_SEAL, Alg.AES_256_GCM, key=bytes(32)))
        pool = await PayloadPool.create(drv)
        items = [Item(sid, Op.AEAD_SEAL, Alg.AES_256_GCM, b"x" * 100, os.urandom(12))] * 5
        items.append(Item(sid + 999, Op.AEAD_SEAL, Alg.AES_256_GCM, b"x", os.urandom(12)))
        with trio.fail_after(30):
            await pool.run(items)
        text = await trio.to_thread.run_sync(_scrape, host.metrics_port)
    assert _value(text, "vcrypto_host_devices ") >= 1
    assert _value(text, "vcrypto_host_sessions ") >= 1
    assert _value(text, 'vcrypto_host_completions_total{alg="aes-256-gcm",op="aead_seal",status="ok"}') == 5
    assert _value(text, 'vcrypto_host_completions_total{alg="invalid",op="invalid",status="invsess"}') == 1
    assert _value(text, "vcrypto_host_requests_total") == 6
    for name in ("kicks", "calls", "polls", "sleeps"):
        _value(text, f"vcrypto_host_{name}_total")
    assert _value(text, "vcrypto_host_cpu_seconds_total") > 0
    assert "vcrypto_host_pool_resource_" in text, text
    assert _value(text, 'vcrypto_host_batch_size_bucket{le="+Inf"}') >= 1
    assert _value(text, "vcrypto_host_batch_size_sum") == 6
    assert _value(text, "vcrypto_host_inflight ") == 0
    _value(text, "vcrypto_host_reorder_held_total")
