"""The scheduler under trio, driving simulated accelerators on a MockClock.

Every result is checked against `cryptography` computed in the test."""
from __future__ import annotations

import pytest
import trio

from tests.vcrypto._pool_fixtures import mixed_case, open_case, seal_case, sign_case
from vcrypto.host.scheduling._core import FailoverSpec, PolicyKind
from vcrypto.host.resources import CryptoJob, CryptoOpError, SimulatedResource
from vcrypto.host.resources.simulated import FaultModel
from vcrypto.host.scheduling._scheduler import NoCapableResource, RetryPolicy, Scheduler
from vcrypto.ops import Alg, Op, parse_capabilities


async def run_cases(scheduler: Scheduler, cases, *, concurrency: int = 1000):
    """Submit every case concurrently (at most ``concurrency`` at a time) and
    check each result."""
    limit = trio.Semaphore(concurrency)

    async def one(case):
        async with limit:
            case.check(await scheduler.submit(case.job))

    async with trio.open_nursery() as nursery:
        for case in cases:
            nursery.start_soon(one, case)


async def test_ops_only_reach_capable_resources(autojump_clock):
    aead = SimulatedResource("aead", parse_capabilities(["aead_seal:*", "aead_open:*"]), 4)
    sign = SimulatedResource("sign", parse_capabilities(["sign:ecdsa_secp256r1_sha256"]), 4)
    ecdh = SimulatedResource("ecdh", parse_capabilities(["ecdh:*", "aead_seal:aes-128-gcm"]), 4)
    async with Scheduler([aead, sign, ecdh]) as scheduler:
        await run_cases(scheduler, [mixed_case(i) for i in range(120)])
        for r in (aead, sign, ecdh):
            assert r.seen_ops and set(r.seen_ops) <= r.capabilities
        # a capability only one resource has: only it saw it
        assert (Op.ECDH, Alg.X25519) in ecdh.seen_ops
        with pytest.raises(NoCapableResource) as info:
            await scheduler.submit(sign_case(0, Alg.ED25519).job)
        assert info.value.kind is CryptoOpError.Kind.NOT_SUPPORTED
        stats = scheduler.stats()
        assert stats.not_supported == 1 and stats.succeeded == 120


async def test_round_robin_spreads_within_ten_percent(autojump_clock):
    # Different speeds: round-robin deals in turn, not by speed. (A resource
    # at max_inflight is skipped rather than waited for, so this holds while
    # none saturates.)
    resources = [SimulatedResource(f"r{i}", max_inflight=8, parallelism=8,
                                   default_latency_us=lat, seed=i)
                 for i, lat in enumerate([100, 300, 50])]
    async with Scheduler(resources, policy=PolicyKind.ROUND_ROBIN) as scheduler:
        await run_cases(scheduler, [seal_case(i) for i in range(300)], concurrency=6)
        counts = {n: s.completed for n, s in scheduler.stats().resources.items()}
    assert sum(counts.values()) == 300
    for n, c in counts.items():
        assert abs(c - 100) <= 10, counts


async def test_failover_primary_until_saturated_spills_and_returns(autojump_clock):
    qat = SimulatedResource("qat", max_inflight=4, parallelism=4, default_latency_us=200)
    sw = SimulatedResource("sw", max_inflight=16, parallelism=16, default_latency_us=1000)
    scheduler = Scheduler([qat, sw], groups={"hw": ["qat"], "soft": ["sw"]},
                          policy=PolicyKind.FAILOVER,
                          failover=FailoverSpec("hw", "soft", spill_hysteresis_jobs=8))
    async with scheduler:
        # Light load (never more than the primary's 4 slots): all on the primary.
        await run_cases(scheduler, [seal_case(i) for i in range(40)], concurrency=4)
        s = scheduler.stats().resources
        assert (s["qat"].completed, s["sw"].completed) == (40, 0)
        # A burst of 40 at once: the primary saturates, the rest spills.
        await run_cases(scheduler, [seal_case(i) for i in range(40, 80)])
        s = scheduler.stats().resources
        assert s["sw"].completed > 0 and s["sw"].spills == s["sw"].completed
        assert qat.max_seen_inflight <= 4
        spilled = s["sw"].completed
        # Load drops: after at most the hysteresis, back to the primary.
        await run_cases(scheduler, [seal_case(i) for i in range(80, 120)], concurrency=1)
        s = scheduler.stats().resources
        assert s["sw"].completed - spilled <= 8
        assert s["qat"].completed >= 40 + 4 + 32


async def test_failover_on_failing_primary_and_return_after_probe(autojump_clock):
    qat = SimulatedResource("qat", max_inflight=4, seed=1)
    sw = SimulatedResource("sw", max_inflight=4, seed=2)
    scheduler = Scheduler([qat, sw], groups={"hw": ["qat"], "soft": ["sw"]},
                          policy=PolicyKind.FAILOVER,
                          failover=FailoverSpec("hw", "soft", spill_hysteresis_jobs=8),
                          retry=RetryPolicy(max_attempts=3, timeout_s=1.0, probe_interval_s=0.5))
    async with scheduler:
        qat.set_faults(FaultModel(error_rate=1.0))
        await run_cases(scheduler, [seal_case(i) for i in range(30)], concurrency=2)
        s = scheduler.stats().resources
        assert not s["qat"].healthy and s["qat"].unhealthy_marks == 1
        assert s["qat"].errors >= 2 and s["qat"].retries == s["qat"].errors
        assert s["sw"].completed == 30
        # While it fails, probes keep it out.
        await trio.sleep(2.0)
        assert not scheduler.stats().resources["qat"].healthy
        qat.set_faults(FaultModel())
        await trio.sleep(0.6)
        s = scheduler.stats().resources
        assert s["qat"].healthy and s["qat"].readmissions == 1
        await run_cases(scheduler, [seal_case(i) for i in range(30, 50)], concurrency=1)
        assert scheduler.stats().resources["qat"].completed >= 20 - 8


async def test_back_pressure_awaits_a_slot(autojump_clock):
    r = SimulatedResource("only", max_inflight=2, parallelism=8)
    async with Scheduler([r]) as scheduler:
        await run_cases(scheduler, [seal_case(i) for i in range(30)])
        stats = scheduler.stats()
    assert r.max_seen_inflight == 2
    assert stats.waits > 0 and stats.succeeded == 30


async def test_bad_request_is_not_retried_and_does_not_mark_unhealthy(autojump_clock):
    a, b = SimulatedResource("a"), SimulatedResource("b")
    async with Scheduler([a, b]) as scheduler:
        case = open_case(1)
        bad = CryptoJob(case.job.op, case.job.alg, case.job.key, case.job.key_id,
                        case.job.src[:-1] + bytes([case.job.src[-1] ^ 1]), case.job.iv)
        for _ in range(3):
            with pytest.raises(CryptoOpError) as info:
                await scheduler.submit(bad)
            assert info.value.kind is CryptoOpError.Kind.BAD_MESSAGE
        stats = scheduler.stats()
    assert stats.op_errors == 3 and stats.retries == 0
    assert all(s.healthy for s in stats.resources.values())


async def test_size_routing_small_jobs_to_named_group(autojump_clock):
    from vcrypto.host.scheduling._core import SizeRoutingSpec
    small = SimulatedResource("small", max_inflight=4)
    big = SimulatedResource("big", max_inflight=4)
    scheduler = Scheduler([small, big], groups={"tiny": ["small"]},
                          size_routing=SizeRoutingSpec(max_bytes=256, group="tiny"))
    async with scheduler:
        await run_cases(scheduler, [seal_case(i, size=100) for i in range(10)]
                        + [seal_case(i, size=4096) for i in range(10, 20)])
    assert small.executed == 10 and big.executed == 10


async def test_context_manager_lets_the_body_error_through_and_closes(autojump_clock):
    r = SimulatedResource("a")
    with pytest.raises(ValueError, match="body"):
        async with Scheduler([r]) as scheduler:
            await scheduler.submit(seal_case(1).job)
            raise ValueError("body")
    # Cancellation from outside ends it too.
    with trio.move_on_after(1) as scope:
        async with Scheduler([SimulatedResource("b")]):
            await trio.sleep_forever()
    assert scope.cancelled_caught


async def test_waiting_jobs_get_slots_in_arrival_order(autojump_clock):
    r = SimulatedResource("one", max_inflight=1, parallelism=1, default_latency_us=1000)
    done: list[int] = []
    async with Scheduler([r]) as scheduler:
        async def one(i):
            case = seal_case(i)
            case.check(await scheduler.submit(case.job))
            done.append(i)

        async with trio.open_nursery() as nursery:
            for i in range(40):
                nursery.start_soon(one, i)
                await trio.sleep(0.00001)      # arrive one after another
        stats = scheduler.stats()
    assert done == list(range(40))
    assert r.max_seen_inflight == 1
    # Each job waited once and was woken only when granted its slot.
    assert stats.waits == 39
