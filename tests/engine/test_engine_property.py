"""Property: whatever mix of concurrent tasks, sessions and batch sizes, every
request gets exactly its own correct result (hypothesis drives the plan)."""
from __future__ import annotations

import pytest
import trio
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from hypothesis import HealthCheck, given, settings, strategies as st

import engine_daemons
from vcrypto.engine import SessionMeta, SlotStatus
from vcrypto.engine.frontend import Frontend
from vcrypto.ops import Alg, Op


@pytest.fixture(scope="module")
def module_backend(tmp_path_factory):
    d = engine_daemons.backend(tmp_path_factory.mktemp("prop"), extra=["--slots", "32"]).start()
    try:
        yield d
    finally:
        d.stop()


KEYS = [(Alg.AES_128_GCM, AESGCM, b"k" * 16), (Alg.AES_256_GCM, AESGCM, b"K" * 32),
        (Alg.CHACHA20_POLY1305, ChaCha20Poly1305, b"c" * 32)]

request = st.tuples(st.integers(0, 2), st.binary(max_size=3000), st.binary(min_size=12, max_size=12),
                    st.binary(max_size=20))
task_plan = st.lists(st.lists(request, min_size=1, max_size=40), min_size=1, max_size=4)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(plans=st.lists(task_plan, min_size=1, max_size=24))
async def test_every_request_gets_its_own_result(module_backend, plans):
    fe = Frontend(module_backend.socket_path, linger_s=0)
    handles = [await fe.open_session(SessionMeta(Op.AEAD_SEAL, alg, key)) for alg, _, key in KEYS]
    wrong = []

    async def task(plan):
        for batch in plan:
            # one run() per session: group the batch's requests by key
            for s in {k for k, *_ in batch}:
                items = [(src, iv, aad) for k, src, iv, aad in batch if k == s]
                res = await fe.run(handles[s], items)
                cipher = KEYS[s][1](KEYS[s][2])
                want = [(SlotStatus.OK, cipher.encrypt(iv, src, aad)) for src, iv, aad in items]
                if res != want:
                    wrong.append((s, len(items)))

    with trio.fail_after(60):
        async with trio.open_nursery() as n:
            for plan in plans:
                n.start_soon(task, plan)
    assert wrong == []
    assert fe.stats.fallback_requests == 0
    for h in handles:
        await fe.close_session(h, linger=False)
    await fe.aclose()
