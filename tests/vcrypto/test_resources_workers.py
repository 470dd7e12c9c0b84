"""``workers``: real worker processes, real crypto, real SIGKILL.

These run on the real clock (worker processes do real I/O)."""
from __future__ import annotations

import os
import signal

import pytest
import trio

from tests.vcrypto._pool_fixtures import ecdh_case, mixed_case, open_case, seal_case, sign_case
from vcrypto.host.resources import CryptoJob, CryptoOpError, ResourceFault, WorkersResource
from vcrypto.ops import Alg


@pytest.fixture
async def workers():
    r = WorkersResource("w", processes=2)
    await r.start()
    try:
        yield r
    finally:
        await r.aclose()


async def test_every_op_family_computes_correctly(workers):
    cases = [seal_case(1), seal_case(2, Alg.CHACHA20_POLY1305), open_case(3),
             sign_case(4), sign_case(5, Alg.RSA_PSS_RSAE_SHA256), sign_case(6, Alg.ED25519),
             ecdh_case(7)]
    for case in cases:
        case.check(await workers.execute(case.job))
    assert workers.executed == len(cases)


async def test_jobs_run_in_parallel_on_both_workers(workers):
    results = {}

    async def one(i):
        case = mixed_case(i)
        results[i] = await workers.execute(case.job)
        case.check(results[i])

    async with trio.open_nursery() as nursery:
        for i in range(40):
            nursery.start_soon(one, i)
    assert len(results) == 40
    assert len(set(workers.worker_pids())) == 2


async def test_bad_request_is_an_op_error_not_a_fault(workers):
    case = open_case(1)
    bad = CryptoJob(case.job.op, case.job.alg, case.job.key, case.job.key_id,
                    bytes(len(case.job.src)), case.job.iv)
    with pytest.raises(CryptoOpError) as info:
        await workers.execute(bad)
    assert info.value.kind is CryptoOpError.Kind.BAD_MESSAGE
    assert await workers.probe()


async def test_killed_worker_fails_its_job_and_is_replaced(workers):
    before = workers.worker_pids()
    # An RSA-4096 key takes a while to sign with: the job is surely in flight
    # when the worker is killed.
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    from vcrypto.ops import Op
    key = rsa.generate_private_key(public_exponent=65537, key_size=4096)
    der = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    slow = CryptoJob(Op.SIGN, Alg.RSA_PSS_RSAE_SHA512, der, b"k4096", b"m" * 10)
    failures = []

    async def signer():
        for _ in range(200):
            try:
                await workers.execute(slow)
            except ResourceFault as exc:
                failures.append(exc)
                return

    async with trio.open_nursery() as nursery:
        nursery.start_soon(signer)
        nursery.start_soon(signer)
        await trio.sleep(0.3)
        os.kill(before[0], signal.SIGKILL)
    assert len(failures) == 1 and "killed by signal 9" in str(failures[0])
    after = workers.worker_pids()
    assert before[0] not in after and before[1] in after and len(after) == 2
    assert workers.replaced == 1
    case = seal_case(9)
    for _ in range(4):     # both workers, including the replacement, serve again
        case.check(await workers.execute(case.job))
    assert await workers.probe()


async def test_worker_killed_while_idle_is_replaced_before_use(workers):
    pid = workers.worker_pids()[0]
    os.kill(pid, signal.SIGKILL)
    await trio.sleep(0.2)
    case = seal_case(3)
    for _ in range(4):
        case.check(await workers.execute(case.job))
    assert pid not in workers.worker_pids()


async def test_timed_out_jobs_leave_the_worker_in_step(workers):
    """Callers that give up (the scheduler's timeout) at any point: before
    the frame is written, while the worker computes, while replies are read.
    Their replies are dropped; the workers stay in step and are not replaced."""
    rsa = sign_case(1, Alg.RSA_PSS_RSAE_SHA256)
    cut = 0
    for delay_s in (0, 0.0001, 0.0005, 0.001, 0.002):
        async with trio.open_nursery() as nursery:
            for _ in range(6):
                async def give_up():
                    nonlocal cut
                    with trio.move_on_after(delay_s) as scope:
                        rsa.check(await workers.execute(rsa.job))
                    cut += scope.cancelled_caught
                nursery.start_soon(give_up)
        for i in range(4):
            case = mixed_case(i)
            case.check(await workers.execute(case.job))
    assert cut > 0 and workers.replaced == 0


async def test_worker_killed_with_several_jobs_in_flight(workers):
    victim = workers.worker_pids()[0]
    rsa = sign_case(1, Alg.RSA_PSS_RSAE_SHA256)
    outcomes = []

    async def one():
        try:
            rsa.check(await workers.execute(rsa.job))
            outcomes.append("ok")
        except ResourceFault:
            outcomes.append("fault")

    async with trio.open_nursery() as nursery:
        for _ in range(8):          # 4 per worker, pipelined
            nursery.start_soon(one)
        await trio.sleep(0)
        while victim not in workers.busy_pids():
            await trio.sleep(0.001)
        os.kill(victim, signal.SIGKILL)
    assert len(outcomes) == 8 and 1 <= outcomes.count("fault") <= 4
    assert workers.replaced == 1 and victim not in workers.worker_pids()
    assert await workers.probe()
