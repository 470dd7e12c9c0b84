"""Fault handling at the scheduler: a worker process SIGKILLed mid-burst, a
simulated accelerator that hangs, one that errors, one that crashes. Every
request still completes correctly (checked against `cryptography`), retried
elsewhere within bounds; the resource is marked unhealthy, re-admitted by a
probe, and all of it is counted in the stats the metrics endpoint reads."""
from __future__ import annotations

import os
import signal

import pytest
import trio

from tests.vcrypto._pool_fixtures import mixed_case, seal_case, sign_case
from vcrypto.host.resources import OpensslResource, SimulatedResource, WorkersResource
from vcrypto.host.resources.simulated import DeviceState, FaultModel
from vcrypto.host.scheduling._scheduler import JobFailed, RetryPolicy, Scheduler
from vcrypto.ops import Alg


async def run_all(scheduler, cases, concurrency=1000):
    limit = trio.Semaphore(concurrency)

    async def one(case):
        async with limit:
            case.check(await scheduler.submit(case.job))

    async with trio.open_nursery() as nursery:
        for case in cases:
            nursery.start_soon(one, case)


FAST_PROBES = RetryPolicy(max_attempts=3, timeout_s=1.0, probe_interval_s=0.5,
                          probe_timeout_s=0.5)


async def test_hanging_accelerator_times_out_retries_and_is_readmitted(autojump_clock):
    accel = SimulatedResource("accel", max_inflight=8, seed=3,
                              faults=FaultModel(hang_rate=1.0))
    soft = SimulatedResource("soft", max_inflight=8, seed=4)
    async with Scheduler([accel, soft], retry=FAST_PROBES) as scheduler:
        t0 = trio.current_time()
        await run_all(scheduler, [seal_case(i) for i in range(60)], concurrency=8)
        # Bounded: no job waited longer than its attempts' timeouts.
        assert trio.current_time() - t0 < 60 * FAST_PROBES.timeout_s
        s = scheduler.stats()
        a = s.resources["accel"]
        assert s.succeeded == 60 and s.failed == 0
        assert a.completed == 0 and a.timeouts >= 2 and a.unhealthy_marks >= 1
        assert not a.healthy
        assert a.retries == a.timeouts and s.retries == a.timeouts
        assert accel.injected_hangs >= a.timeouts
        # Still hanging: the probe times out too, so it stays out.
        await trio.sleep(2.0)
        assert not scheduler.stats().resources["accel"].healthy
        accel.set_faults(FaultModel())
        await trio.sleep(1.1)
        a = scheduler.stats().resources["accel"]
        assert a.healthy and a.readmissions >= 1
        before = a.completed
        await run_all(scheduler, [seal_case(i) for i in range(20)], concurrency=4)
        assert scheduler.stats().resources["accel"].completed > before


async def test_erroring_accelerator_every_request_completes(autojump_clock):
    accel = SimulatedResource("accel", max_inflight=4, seed=5,
                              faults=FaultModel(error_rate=1.0))
    soft = SimulatedResource("soft", max_inflight=4, seed=6)
    async with Scheduler([accel, soft], retry=FAST_PROBES) as scheduler:
        await run_all(scheduler, [mixed_case(i) for i in range(48)], concurrency=6)
        s = scheduler.stats()
        a = s.resources["accel"]
        assert s.succeeded == 48
        assert a.completed == 0 and a.errors >= 2 and not a.healthy
        assert accel.injected_errors >= a.errors
        accel.set_faults(FaultModel())
        await trio.sleep(0.6)
        assert scheduler.stats().resources["accel"].readmissions == 1


async def test_crashed_accelerator_fails_inflight_and_recovers_via_probe(autojump_clock):
    accel = SimulatedResource("accel", max_inflight=16, parallelism=8, default_latency_us=500,
                              faults=FaultModel(crash_after_jobs=25, recover_after_s=3.0))
    soft = SimulatedResource("soft", max_inflight=4, default_latency_us=2000)
    async with Scheduler([accel, soft], retry=FAST_PROBES) as scheduler:
        await run_all(scheduler, [seal_case(i) for i in range(80)])
        s = scheduler.stats()
        a = s.resources["accel"]
        assert s.succeeded == 80 and s.failed == 0
        assert accel.crashes == 1 and accel.state is DeviceState.DOWN
        # the crashing job plus the ones in flight with it all failed over
        assert a.errors >= 2 and not a.healthy
        await trio.sleep(2.0)                         # before recover_after_s
        assert not scheduler.stats().resources["accel"].healthy
        await trio.sleep(1.6)
        a = scheduler.stats().resources["accel"]
        assert a.healthy and a.readmissions == 1 and accel.state is DeviceState.UP


async def test_retries_are_bounded_when_every_resource_fails(autojump_clock):
    a = SimulatedResource("a", faults=FaultModel(error_rate=1.0))
    b = SimulatedResource("b", faults=FaultModel(hang_rate=1.0))
    retry = RetryPolicy(max_attempts=3, timeout_s=1.0, probe_interval_s=100)
    async with Scheduler([a, b], retry=retry, unhealthy_after_faults=10) as scheduler:
        t0 = trio.current_time()
        with pytest.raises(JobFailed, match="failed on 3 attempt"):
            await scheduler.submit(seal_case(1).job)
        assert trio.current_time() - t0 <= 3 * retry.timeout_s
        s = scheduler.stats()
    assert s.failed == 1 and s.retries == 2
    assert s.resources["a"].errors + s.resources["b"].errors + s.resources["b"].timeouts == 3


async def test_all_capable_unhealthy_fails_after_bounded_wait(autojump_clock):
    a = SimulatedResource("a", faults=FaultModel(error_rate=1.0))
    retry = RetryPolicy(max_attempts=2, timeout_s=1.0, probe_interval_s=100)
    async with Scheduler([a], retry=retry, unhealthy_after_faults=1) as scheduler:
        with pytest.raises(JobFailed):
            await scheduler.submit(seal_case(1).job)
        t0 = trio.current_time()
        with pytest.raises(JobFailed, match="every capable resource is unhealthy"):
            await scheduler.submit(seal_case(2).job)
        assert trio.current_time() - t0 == pytest.approx(retry.timeout_s)


async def test_workers_process_sigkilled_mid_burst():
    """Real processes, real clock: SIGKILL a worker while it holds a job in a
    burst of 2 MiB seals (big enough that the worker is busy for a while)."""
    workers = WorkersResource("procs", processes=2)
    soft = OpensslResource("soft", max_inflight=1)
    retry = RetryPolicy(max_attempts=3, timeout_s=10.0, probe_interval_s=0.2)
    scheduler = Scheduler([workers, soft], retry=retry, unhealthy_after_faults=1)
    async with scheduler:
        first_pids = set(workers.worker_pids())
        cases = [seal_case(i, size=2 * 1024 * 1024) for i in range(40)]
        killed = []

        async def killer():
            # Kill a worker that holds a job; the job may just have finished
            # as the signal lands (its reply already in the pipe), so try
            # again, a bounded number of times, until a job saw the death.
            with trio.fail_after(20):
                while scheduler.stats().resources["procs"].errors == 0 and len(killed) < 5:
                    # (a pid already killed may still look busy until its death is seen)
                    busy = [pid for pid in workers.busy_pids() if pid not in killed]
                    if busy and scheduler.stats().resources["procs"].completed >= 2:
                        os.kill(busy[0], signal.SIGKILL)
                        killed.append(busy[0])
                        await trio.sleep(0.05)
                    else:
                        await trio.sleep(0.002)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(killer)
            nursery.start_soon(run_all, scheduler, cases, 4)
        s = scheduler.stats()
        p = s.resources["procs"]
        assert s.succeeded == 40 and s.failed == 0
        assert p.errors >= 1 and p.retries == p.errors and p.unhealthy_marks >= 1
        assert s.resources["soft"].completed > 0
        assert workers.replaced == len(killed)
        assert not set(killed) & set(workers.worker_pids())
        assert set(killed) <= first_pids
        # The probe re-admits it (its replacement worker answers a ping).
        with trio.fail_after(5):
            while not scheduler.stats().resources["procs"].healthy:
                await trio.sleep(0.05)
        assert scheduler.stats().resources["procs"].readmissions >= 1
        before = scheduler.stats().resources["procs"].completed
        await run_all(scheduler, [seal_case(i) for i in range(10)], 4)
        assert scheduler.stats().resources["procs"].completed > before


async def test_a_hanging_probe_delays_no_other_probe(autojump_clock):
    stuck = SimulatedResource("stuck", faults=FaultModel(hang_rate=1.0))
    flaky = SimulatedResource("flaky", faults=FaultModel(error_rate=1.0))
    retry = RetryPolicy(max_attempts=1, timeout_s=0.5, probe_interval_s=0.1,
                        probe_timeout_s=100.0)
    async with Scheduler([stuck, flaky], retry=retry, unhealthy_after_faults=1) as scheduler:
        for r in ("stuck", "flaky"):
            scheduler.core.mark_unhealthy(r)
        await trio.sleep(1.0)            # stuck's first probe now hangs for 100 s
        flaky.set_faults(FaultModel())
        await trio.sleep(0.25)
        s = scheduler.stats().resources
        assert s["flaky"].healthy and not s["stuck"].healthy
        assert stuck.injected_hangs == 1   # one probe at a time per resource
        seal_case(1).check(await scheduler.submit(seal_case(1).job))
        assert await scheduler.probe_now() == []    # stuck: already being probed


async def test_a_resource_bug_is_isolated_like_a_fault(autojump_clock):
    class Buggy(SimulatedResource):
        async def execute(self, job):
            raise RuntimeError("bug in the resource")

    buggy, good = Buggy("buggy"), SimulatedResource("good")
    async with Scheduler([buggy, good], unhealthy_after_faults=1) as scheduler:
        await run_all(scheduler, [seal_case(i) for i in range(10)], concurrency=2)
        s = scheduler.stats()
    assert s.succeeded == 10 and s.resources["buggy"].errors >= 1
    assert not s.resources["buggy"].healthy
