"""The reorder layer at the device: with ``fifo: true`` the used ring is in
submission order even when a slow request (RSA on a thread) is ahead of fast
ones (AEAD inline); with ``fifo: false`` the fast ones do not wait."""
from __future__ import annotations

import os

import pytest
import trio

from host_refcheck import der_of
from vcrypto.driver import DataOp, Driver, SessionParams
from vcrypto.ops import Alg, Op
from vcrypto.shm.region import Region


async def _completion_order(drv: Driver) -> list[int]:
    rsa = await drv.create_session(SessionParams(Op.SIGN, Alg.RSA_PSS_RSAE_SHA512,
                                                 key=der_of(Alg.RSA_PSS_RSAE_SHA512)))
    aead = await drv.create_session(SessionParams(Op.AEAD_SEAL, Alg.AES_128_GCM, key=bytes(16)))
    region = Region.create("fifo", 1 << 16)
    h = await drv.register_region(region)
    ops = []
    for i in range(20):
        base = i * 2048
        region.write(base, os.urandom(12 + 64))
        if i < 2:
            ops.append(DataOp(rsa, Op.SIGN, src=h.buf(base + 12, 64), dst=h.buf(base + 512, 1024),
                              token=i))
        else:
            ops.append(DataOp(aead, Op.AEAD_SEAL, src=h.buf(base + 12, 64),
                              dst=h.buf(base + 512, 80), iv=h.buf(base, 12), token=i))
    q = drv.queues[0]
    assert q.enqueue_burst(ops) == len(ops)
    order: list[int] = []
    with trio.fail_after(20):
        while len(order) < len(ops):
            comps = q.dequeue_burst()
            if not comps:
                await q.wait_used()
            for c in comps:
                assert c.status == 0, c
                order.append(c.token)
    return order


@pytest.mark.parametrize("fifo", [True, False])
async def test_used_ring_order(start_host, fifo):
    host = start_host({"fifo": fifo, "pool": {"resources": [
        {"name": "soft", "kind": "openssl", "max_inflight": 32}]}})
    async with await Driver.attach(host.socket_path) as drv:
        order = await _completion_order(drv)
        held = (await drv.stats())["device"]["reorder_held"]
    if fifo:
        assert order == list(range(20))
        assert held >= 1          # the AEADs that finished before the RSA signatures
    else:
        assert sorted(order) == list(range(20))
        assert order[0] >= 2, order      # an AEAD finished before the RSA signatures
        assert held == 0
