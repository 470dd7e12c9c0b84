"""The scheduler's synchronous fast path (``submit_now``): a small job on an
in-process resource runs at once; anything else is handed on to ``submit``
with the decision already taken, and every counter, retry and health rule is
the one ``submit`` follows. Results are checked against `cryptography`."""
from __future__ import annotations

import pytest
import trio

from tests.vcrypto._pool_fixtures import open_case, seal_case, sign_case
from vcrypto.host.scheduling._core import PolicyKind
from vcrypto.host.resources import CryptoOpError, ResourceFault, SimulatedResource
from vcrypto.host.resources.openssl import OpensslResource
from vcrypto.host.scheduling._scheduler import JobFailed, NoCapableResource, Pending, RetryPolicy, Scheduler
from vcrypto.ops import Alg, Op, parse_capabilities


class FaultyInline(OpensslResource):
    """An in-process resource whose inline attempts fail ``faults`` times."""

    def __init__(self, name, faults, **kw):
        super().__init__(name, **kw)
        self.faults = faults

    def execute_inline(self, job):
        if self.faults:
            self.faults -= 1
            raise ResourceFault("injected inline fault")
        return super().execute_inline(job)


async def test_small_jobs_run_inline_and_are_counted_once():
    soft = OpensslResource("soft")
    async with Scheduler([soft]) as scheduler:
        cases = [seal_case(i) for i in range(5)] + [sign_case(7)]
        for case in cases:
            result = scheduler.submit_now(case.job)
            assert isinstance(result, bytes)
            case.check(result)
        s = scheduler.stats()
    r = s.resources["soft"]
    assert (s.submitted, s.succeeded, s.waits) == (6, 6, 0)
    assert (r.assigned, r.completed, r.inflight) == (6, 6, 0)
    assert soft.threaded == 0


async def test_a_threaded_job_is_handed_on_with_its_slot():
    soft = OpensslResource("soft", max_inflight=2)
    async with Scheduler([soft]) as scheduler:
        case = sign_case(1, Alg.RSA_PSS_RSAE_SHA256)
        pending = scheduler.submit_now(case.job)
        assert isinstance(pending, Pending) and pending.run is not None
        assert scheduler.stats().resources["soft"].inflight == 1   # the slot is held
        case.check(await scheduler.submit(case.job, pending))
        s = scheduler.stats()
    assert (s.submitted, s.succeeded) == (1, 1)
    assert (s.resources["soft"].assigned, s.resources["soft"].inflight) == (1, 0)
    assert soft.threaded == 1


async def test_a_saturated_pool_makes_the_job_wait_in_line():
    soft = OpensslResource("soft", max_inflight=1)
    async with Scheduler([soft]) as scheduler:
        rsa = sign_case(1, Alg.RSA_PSS_RSAE_SHA256)
        held = scheduler.submit_now(rsa.job)          # takes the only slot
        seal = seal_case(2)
        waiting = scheduler.submit_now(seal.job)
        assert isinstance(waiting, Pending) and waiting.run is None
        results = {}

        async def run(name, case, pending):
            results[name] = await scheduler.submit(case.job, pending)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(run, "rsa", rsa, held)
            nursery.start_soon(run, "seal", seal, waiting)
        rsa.check(results["rsa"])
        seal.check(results["seal"])
        s = scheduler.stats()
    assert (s.submitted, s.succeeded, s.waits) == (2, 2, 1)


async def test_an_inline_fault_is_retried_elsewhere_and_marks_unhealthy(autojump_clock):
    bad = FaultyInline("bad", faults=1)
    good = SimulatedResource("good")
    async with Scheduler([bad, good], unhealthy_after_faults=1) as scheduler:
        case = seal_case(3)
        pending = scheduler.submit_now(case.job)    # least loaded: "bad" (index 0)
        assert isinstance(pending, Pending)
        assert pending.tried == ["bad"] and pending.run is None and pending.attempts == 1
        case.check(await scheduler.submit(case.job, pending))
        s = scheduler.stats()
        assert (s.submitted, s.succeeded, s.failed, s.retries) == (1, 1, 0, 1)
        assert s.resources["bad"].errors == 1 and s.resources["bad"].retries == 1
        assert not s.resources["bad"].healthy
        assert s.resources["good"].completed == 1
        # the probe re-admits it; the next small job runs inline there again
        assert await scheduler.probe_now() == ["bad"]
        seal_case(4).check(scheduler.submit_now(seal_case(4).job))
        assert scheduler.stats().resources["bad"].completed == 1


async def test_an_inline_fault_with_no_attempt_left_fails_the_job():
    bad = FaultyInline("bad", faults=5)
    async with Scheduler([bad], retry=RetryPolicy(max_attempts=1)) as scheduler:
        with pytest.raises(JobFailed, match="injected inline fault"):
            scheduler.submit_now(seal_case(1).job)
        s = scheduler.stats()
    assert (s.submitted, s.failed, s.resources["bad"].errors, s.resources["bad"].inflight) \
        == (1, 1, 1, 0)


async def test_bad_requests_and_unsupported_ops_raise_at_once():
    soft = OpensslResource("soft", capabilities=parse_capabilities(["aead_open:*"]))
    async with Scheduler([soft]) as scheduler:
        case = open_case(1)
        tampered = type(case.job)(**{**{f: getattr(case.job, f) for f in
                                       ("op", "alg", "key", "key_id", "iv", "aad", "seq")},
                                    "src": bytes([case.job.src[0] ^ 1]) + case.job.src[1:]})
        with pytest.raises(CryptoOpError) as ei:
            scheduler.submit_now(tampered)
        assert ei.value.kind is CryptoOpError.Kind.BAD_MESSAGE
        with pytest.raises(NoCapableResource):
            scheduler.submit_now(seal_case(1).job)
        s = scheduler.stats()
    assert (s.submitted, s.op_errors, s.not_supported, s.failed) == (2, 1, 1, 0)
    assert s.resources["soft"].healthy and s.resources["soft"].errors == 0


async def test_round_robin_advances_once_per_job_on_the_fast_path(autojump_clock):
    """Inline and handed-on jobs share one decision each: an even spread."""
    soft = OpensslResource("soft")
    sim = SimulatedResource("sim", max_inflight=64)
    async with Scheduler([soft, sim], policy=PolicyKind.ROUND_ROBIN) as scheduler:
        cases = [seal_case(i) for i in range(40)]
        handed = []
        for case in cases:
            result = scheduler.submit_now(case.job)
            if isinstance(result, bytes):
                case.check(result)
            else:
                assert result.run is not None and result.run.resource == "sim"
                handed.append((case, result))

        async def run(case, pending):
            case.check(await scheduler.submit(case.job, pending))

        async with trio.open_nursery() as nursery:
            for case, pending in handed:
                nursery.start_soon(run, case, pending)
        s = scheduler.stats()
    assert s.resources["soft"].completed == 20 and s.resources["sim"].completed == 20
    assert s.submitted == s.succeeded == 40
    assert Op.AEAD_SEAL.value in s.inflight_by_op and s.inflight_by_op[Op.AEAD_SEAL.value] == 0
