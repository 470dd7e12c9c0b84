"""AEAD input without a copy (the view itself: test_host_datapath): a job that
has to wait (a task, another process) is given its own bytes, never a view
into memory the driver may unmap meanwhile."""
from __future__ import annotations

import os

import pytest
import trio
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from vcrypto.driver import Driver, Item, PayloadPool, SessionParams
from vcrypto.ops import Alg, Op


@pytest.mark.daemons
async def test_aead_on_worker_processes_gets_bytes(start_host):
    """A ``workers`` resource runs jobs in other processes (pickled): every
    AEAD record still comes back right, so the job that waited held bytes."""
    host = start_host({"pool": {"resources": [{"name": "procs", "kind": "workers",
                                               "processes": 1}]}})
    key = os.urandom(16)
    async with await Driver.attach(host.socket_path) as drv:
        pool = await PayloadPool.create(drv)
        sid = await drv.create_session(SessionParams(Op.AEAD_SEAL, Alg.AES_128_GCM, key=key))
        items = [Item(sid, Op.AEAD_SEAL, Alg.AES_128_GCM, os.urandom(16384), os.urandom(12))
                 for _ in range(6)]
        with trio.fail_after(60):
            results = await pool.run(items, window=6)
    for item, r in zip(items, results):
        assert r.ok and r.data == AESGCM(key).encrypt(item.iv, item.src, None)
