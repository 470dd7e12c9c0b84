"""The reorder layer at the real used ring: a ``vcrypto-host`` subprocess
whose pool has a slow and a fast simulated accelerator (round-robin), one
burst of AEAD seals from a real driver. With ``fifo: true`` the used ring
gives the completions back in submission order; with ``fifo: false`` the
fast resource's completions overtake the slow ones (nothing waits behind
them). Results are checked against `cryptography`."""
from __future__ import annotations

import os

import pytest
import trio
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from vcrypto.driver import DataOp, Driver, SessionParams
from vcrypto.ops import Alg, Op
from vcrypto.shm.region import Region
from vcrypto.wire import virtio_crypto as vc

pytestmark = pytest.mark.daemons

N = 24
SLOT = 256


def pool(slow_latency_us: int) -> dict:
    return {
        "resources": [
            {"name": "slow", "kind": "simulated", "max_inflight": 16, "parallelism": 16,
             "default_latency_us": slow_latency_us},
            {"name": "fast", "kind": "simulated", "max_inflight": 16, "parallelism": 16,
             "default_latency_us": 100},
        ],
        "policy": "round_robin",
    }


@pytest.mark.parametrize("fifo", [True, False])
async def test_used_ring_order(start_host, fifo):
    host = start_host({"fifo": fifo, "pool": pool(slow_latency_us=200_000)},
                      name=f"fifo-{fifo}")
    key = os.urandom(16)
    async with await Driver.attach(host.socket_path) as drv:
        sid = await drv.create_session(SessionParams(Op.AEAD_SEAL, Alg.AES_128_GCM, key=key))
        region = Region.create("reorder-test", N * SLOT)
        handle = await drv.register_region(region)
        ops, expected = [], []
        for i in range(N):
            base = i * SLOT
            iv, msg = os.urandom(12), b"record %d" % i
            region.write(base, iv)
            region.write(base + 12, msg)
            dst = handle.buf(base + 64, len(msg) + 16)
            ops.append(DataOp(sid, Op.AEAD_SEAL, src=handle.buf(base + 12, len(msg)), dst=dst,
                              iv=handle.buf(base, 12), token=(i, dst)))
            expected.append(AESGCM(key).encrypt(iv, msg, None))
        q = drv.queues[0]
        assert q.enqueue_burst(ops) == N
        order = []
        with trio.fail_after(30):
            while len(order) < N:
                completions = q.dequeue_burst()
                if not completions:
                    await q.wait_used()
                    continue
                for c in completions:
                    i, dst = c.token
                    assert c.status == vc.VIRTIO_CRYPTO_OK
                    assert bytes(dst.view()[:c.dst_len]) == expected[i]
                    order.append(i)
        assert sorted(order) == list(range(N))
        if fifo:
            assert order == list(range(N))
        else:
            # Round-robin put half the burst on the slow resource (which half
            # depends on the order trio starts the host's tasks in): the
            # fast half is published first, without waiting behind it.
            assert order != list(range(N))
            assert sorted(order[: N // 2]) != list(range(N // 2))
        region.close()
