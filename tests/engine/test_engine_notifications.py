"""Notifications the engine saves at load (DESIGN §6): the frontend's waiter
polls while its trio loop is busy anyway (the backend writes no eventfd),
and the backend holds arrivals while requests are in flight at the host
(frontends ring no doorbell). Both switch off cleanly: a lone request on an
idle engine still gets both notifications, at once."""
from __future__ import annotations

import os
import time

import pytest
import trio
import yaml
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

import engine_daemons
from vcrypto.engine import SessionMeta, SlotStatus
from vcrypto.engine.frontend import Frontend
from vcrypto.ops import Alg, Op


@pytest.mark.parametrize("busy_poll", [True, False])
async def test_a_busy_frontend_polls_its_opdones_instead_of_being_called(local_backend, busy_poll):
    fe = Frontend(local_backend.socket_path, busy_poll=busy_poll)
    assert await fe.start()
    key = os.urandom(16)
    h = await fe.open_session(SessionMeta(Op.AEAD_SEAL, Alg.AES_128_GCM, key))
    calls0 = (await fe.backend_stats())["calls"]
    done = trio.Event()

    async def busy():          # other connections' work: the loop never sleeps
        while not done.is_set():
            t = time.perf_counter()
            while time.perf_counter() - t < 0.0002:   # 200 us of work per step
                pass
            await trio.sleep(0)

    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(busy)
            for i in range(40):
                [(st, out)] = await fe.run(h, [(b"r%d" % i, b"n" * 12, b"")])
                assert (st, out) == (SlotStatus.OK, AESGCM(key).encrypt(b"n" * 12, b"r%d" % i, None))
            done.set()
    calls = (await fe.backend_stats())["calls"] - calls0
    if busy_poll:
        assert calls <= 2 and fe.stats.waiter_polls > 0, (calls, fe.stats)
    else:
        assert calls >= 10 and fe.stats.waiter_polls == 0, (calls, fe.stats)
    # Quiet loop (nothing else runnable): a lone request costs the waiter at
    # most a couple of polling ticks, then it blocks (no spinning at idle).
    polls = fe.stats.waiter_polls
    with trio.fail_after(10):
        [(st, _)] = await fe.run(h, [(b"alone", b"n" * 12, b"")])
    assert st is SlotStatus.OK and fe.stats.waiter_polls - polls <= 4
    polls = fe.stats.waiter_polls
    await trio.sleep(0.1)
    assert fe.stats.waiter_polls == polls
    await fe.aclose()


@pytest.mark.parametrize("hold_us", ["500", "0"])
async def test_arrivals_while_the_host_works_ring_no_doorbell(tmp_path, hold_us):
    """A 30 ms request is in flight at the host; three more arrive from other
    tasks meanwhile. With the in-flight hold the backend does not advertise
    sleep, so only the first request rings; each later one is still taken
    within the hold bound (it does not wait for the slow one)."""
    pool = {"resources": [{"name": "slow", "kind": "simulated", "parallelism": 4,
                           "max_inflight": 8, "default_latency_us": 30000}]}
    cfg = tmp_path / "host.yaml"
    cfg.write_text(yaml.safe_dump({"pool": pool}))
    host = engine_daemons.host(tmp_path, config=str(cfg)).start()
    backend = engine_daemons.backend(tmp_path, host_socket=host.socket_path,
                                     extra=["--inflight-hold-us", hold_us]).start()
    try:
        fe = Frontend(backend.socket_path)
        assert await fe.start()
        h = await fe.open_session(SessionMeta(Op.ECDH, Alg.X25519))
        peer = os.urandom(32)
        await fe.run(h, [(peer, b"", b"")])      # the session exists at the host now
        with trio.fail_after(10):
            while not fe.attachment.shared.backend_sleeping:   # idle, advertised
                await trio.sleep(0.005)
        doorbells0 = fe.stats.doorbells
        finished: list[float] = []

        async def one(delay_s: float):
            await trio.sleep(delay_s)
            [(st, _)] = await fe.run(h, [(peer, b"", b"")])
            assert st is SlotStatus.OK
            finished.append(trio.current_time() - t0)

        t0 = trio.current_time()
        with trio.fail_after(20):
            async with trio.open_nursery() as nursery:
                for k, delay in enumerate((0.0, 0.005, 0.010, 0.015)):
                    nursery.start_soon(one, delay)
        rung = fe.stats.doorbells - doorbells0
        st = engine_daemons.backend_stats(backend.socket_path)
        if hold_us != "0":
            assert rung == 1 and st["inflight_holds"] > 0, (rung, st["inflight_holds"])
            # taken within the bound, not behind the first request: all four
            # overlap at the host (4-way resource), done ~30 ms after each start
            assert max(finished) < 0.030 + 0.015 + 0.015, finished
        else:
            assert rung == 4 and st["inflight_holds"] == 0, (rung, st["inflight_holds"])
        await fe.aclose()
    finally:
        backend.stop()
        host.stop()
