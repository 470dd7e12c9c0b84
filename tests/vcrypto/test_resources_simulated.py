"""The accelerator model on its own: latency, parallelism, capability subset,
deterministic fault draws, crash and recovery. MockClock throughout."""
from __future__ import annotations

import pytest
import trio

from tests.vcrypto._pool_fixtures import seal_case, sign_case
from vcrypto.host.resources import ResourceFault, SimulatedResource
from vcrypto.host.resources.simulated import DeviceState, FaultModel
from vcrypto.ops import Alg, Op, parse_capabilities


async def run_many(r, cases):
    outcomes = {}

    async def one(i, case):
        try:
            case.check(await r.execute(case.job))
            outcomes[i] = "ok"
        except ResourceFault:
            outcomes[i] = "fault"

    async with trio.open_nursery() as nursery:
        for i, case in enumerate(cases):
            nursery.start_soon(one, i, case)
    return [outcomes[i] for i in range(len(cases))]


async def test_latency_and_parallelism(autojump_clock):
    r = SimulatedResource("a", parallelism=3, latency_us={Op.AEAD_SEAL: 1000, Op.SIGN: 5000})
    t0 = trio.current_time()
    assert await run_many(r, [seal_case(i) for i in range(9)]) == ["ok"] * 9
    assert trio.current_time() - t0 == pytest.approx(3 * 0.001)   # 9 jobs, 3 at a time
    t0 = trio.current_time()
    sign_case(0).check(await r.execute(sign_case(0).job))
    assert trio.current_time() - t0 == pytest.approx(0.005)


async def test_capability_subset_is_enforced(autojump_clock):
    r = SimulatedResource("a", parse_capabilities(["aead_seal:aes-128-gcm"]))
    seal_case(1).check(await r.execute(seal_case(1).job))
    with pytest.raises(ResourceFault, match="not supported here"):
        await r.execute(sign_case(1, Alg.ED25519).job)


async def test_fault_draws_are_deterministic_per_seed(autojump_clock):
    """Draws follow arrival order: the same seed gives the same faults for
    the same sequence of jobs (trio may start concurrent tasks in any order,
    so the concurrent run compares the number of faults)."""
    def make(seed):
        return SimulatedResource("a", max_inflight=100, parallelism=100, seed=seed,
                                 faults=FaultModel(error_rate=0.3))

    async def sequential(seed):
        r = make(seed)
        return [await run_many(r, [seal_case(i)]) for i in range(50)]

    runs = [await sequential(seed) for seed in (7, 7, 8)]
    assert runs[0] == runs[1] != runs[2]
    assert 5 <= sum(o == ["fault"] for o in runs[0]) <= 25
    concurrent = [await run_many(make(7), [seal_case(i) for i in range(50)]) for _ in range(2)]
    assert concurrent[0].count("fault") == concurrent[1].count("fault") \
        == sum(o == ["fault"] for o in runs[0])


async def test_hang_never_returns_until_cancelled(autojump_clock):
    r = SimulatedResource("a", faults=FaultModel(hang_rate=1.0))
    with trio.move_on_after(3600) as scope:
        await r.execute(seal_case(1).job)
    assert scope.cancelled_caught and r.injected_hangs == 1


async def test_crash_fails_everything_in_flight_and_stays_down(autojump_clock):
    r = SimulatedResource("a", max_inflight=16, parallelism=2, default_latency_us=1000,
                          faults=FaultModel(crash_after_jobs=6, recover_after_s=5.0))
    outcomes = await run_many(r, [seal_case(i) for i in range(10)])
    # Jobs 1-5 were admitted (2 running, 3 queued); job 6 crashed the device,
    # taking the 5 in flight with it; jobs 7-10 found it down.
    assert outcomes == ["fault"] * 10
    assert r.crashes == 1 and r.state is DeviceState.DOWN
    assert not await r.probe()                       # too early
    await trio.sleep(5.0)
    assert await r.probe() and r.state is DeviceState.UP
    seal_case(1).check(await r.execute(seal_case(1).job))


async def test_crash_at_nth_job_lets_earlier_finished_jobs_stand(autojump_clock):
    r = SimulatedResource("a", faults=FaultModel(crash_after_jobs=3))
    for i in range(2):
        seal_case(i).check(await r.execute(seal_case(i).job))
    with pytest.raises(ResourceFault, match="crashed"):
        await r.execute(seal_case(2).job)
    assert not await r.probe()          # no recover_after_s: stays dead ...
    r.recover()                         # ... until an operator revives it
    assert await r.probe()


async def test_probe_fails_while_erroring(autojump_clock):
    r = SimulatedResource("a", faults=FaultModel(error_rate=1.0))
    assert not await r.probe()
    r.set_faults(FaultModel())
    assert await r.probe()


@pytest.mark.parametrize("kwargs", [dict(error_rate=1.5), dict(error_rate=0.6, hang_rate=0.6),
                                    dict(crash_after_jobs=0), dict(recover_after_s=-1)])
def test_bad_fault_models_are_rejected(kwargs):
    with pytest.raises(ValueError):
        FaultModel(**kwargs)
