"""The scheduler's decisions, sans-IO: no trio, no clock."""
from __future__ import annotations

import collections

import pytest

from vcrypto.host._sched_core import (
    NO_CAPABLE, ConfigError, FailoverSpec, Outcome, PolicyKind, ResourceSpec, Run,
    SchedulerCore, SizeRoutingSpec, Wait,
)
from vcrypto.ops import ALL_CAPABILITIES, Alg, Op, parse_capabilities

SEAL = (Op.AEAD_SEAL, Alg.AES_128_GCM)
SIGN = (Op.SIGN, Alg.ECDSA_SECP256R1_SHA256)


def spec(name, caps=ALL_CAPABILITIES, max_inflight=4):
    return ResourceSpec(name, "simulated", caps, max_inflight)


def run_one(core: SchedulerCore, cap=SEAL, src_len=0, tried=(), outcome=Outcome.OK) -> Run:
    d = core.pick(cap, src_len, tried)
    assert isinstance(d, Run), d
    core.started(d, cap[0], retry=bool(tried))
    core.finished(d.resource, cap[0], outcome)
    return d


def test_capability_routes_only_to_capable():
    core = SchedulerCore([spec("aead", parse_capabilities(["aead_seal:*", "aead_open:*"])),
                          spec("sign", parse_capabilities(["sign:*"]))])
    assert {run_one(core, SEAL).resource for _ in range(10)} == {"aead"}
    assert {run_one(core, SIGN).resource for _ in range(10)} == {"sign"}
    assert core.pick((Op.ECDH, Alg.X25519)) is NO_CAPABLE


def test_capability_least_loaded_then_waits_when_all_saturated():
    core = SchedulerCore([spec("a", max_inflight=2), spec("b", max_inflight=1)])
    picks = []
    for _ in range(3):
        d = core.pick(SEAL)
        assert isinstance(d, Run)
        core.started(d, Op.AEAD_SEAL, retry=False)
        picks.append(d.resource)
    assert sorted(picks) == ["a", "a", "b"]
    assert core.pick(SEAL) == Wait("saturated")
    core.finished("b", Op.AEAD_SEAL, Outcome.OK)
    assert core.pick(SEAL) == Run("b")


def test_round_robin_rotates_among_capable_and_skips_saturated():
    core = SchedulerCore([spec("a"), spec("b", parse_capabilities(["sign:*"])), spec("c")],
                         policy=PolicyKind.ROUND_ROBIN)
    counts = collections.Counter(run_one(core).resource for _ in range(300))
    assert counts == {"a": 150, "c": 150}
    # A saturated resource is skipped, not waited for.
    for _ in range(4):
        d = Run("a")
        core.started(d, Op.AEAD_SEAL, retry=False)
    assert {run_one(core).resource for _ in range(5)} == {"c"}


def failover_core(primary_max=2, hysteresis=3):
    return SchedulerCore(
        [spec("qat", max_inflight=primary_max), spec("sw", max_inflight=8)],
        groups={"hw": ["qat"], "soft": ["sw"]}, policy=PolicyKind.FAILOVER,
        failover=FailoverSpec("hw", "soft", spill_hysteresis_jobs=hysteresis))


def test_failover_spills_when_saturated_with_hysteresis_then_returns():
    core = failover_core(primary_max=2, hysteresis=3)
    held = []
    for _ in range(2):
        d = core.pick(SEAL)
        assert d == Run("qat")
        core.started(d, Op.AEAD_SEAL, retry=False)
        held.append(d)
    d = core.pick(SEAL)
    assert d == Run("sw", spill=True)          # primary at max_inflight: spill
    core.started(d, Op.AEAD_SEAL, retry=False)
    core.finished("sw", Op.AEAD_SEAL, Outcome.OK)
    for d in held:                             # primary is free again ...
        core.finished(d.resource, Op.AEAD_SEAL, Outcome.OK)
    # ... but the next 3 jobs still go to the secondary (hysteresis) ...
    assert [run_one(core) for _ in range(3)] == [Run("sw", spill=True)] * 3
    # ... and then back to the primary.
    assert [run_one(core).resource for _ in range(5)] == ["qat"] * 5
    stats = core.stats()
    assert stats.resources["sw"].spills == 4 and stats.spills == 4
    assert stats.resources["qat"].completed == 7


def test_failover_health_marks_unhealthy_spills_and_returns_after_readmit():
    core = failover_core(hysteresis=2)
    run_one(core, outcome=Outcome.FAULT)
    assert core.is_healthy("qat")              # one fault: not yet
    d = core.pick(SEAL, tried=["qat"])         # the retry goes elsewhere
    assert d == Run("sw", spill=True)
    core.started(d, Op.AEAD_SEAL, retry=True)
    core.finished("sw", Op.AEAD_SEAL, Outcome.OK)
    # hysteresis after the retry: 2 more to software
    assert [run_one(core).resource for _ in range(2)] == ["sw", "sw"]
    run_one(core, outcome=Outcome.TIMEOUT)     # qat again: second consecutive fault
    assert not core.is_healthy("qat") and core.unhealthy() == ["qat"]
    assert {run_one(core).resource for _ in range(10)} == {"sw"}
    core.readmit("qat")
    # At most the hysteresis (2) more to software, then the primary for good.
    after = [run_one(core).resource for _ in range(6)]
    first = after.index("qat")
    assert first <= 2 and after[first:] == ["qat"] * (6 - first)
    s = core.stats().resources["qat"]
    assert (s.errors, s.timeouts, s.unhealthy_marks, s.readmissions, s.healthy) == (1, 1, 1, 1, True)


def test_failover_waits_when_both_groups_full():
    core = failover_core(primary_max=1, hysteresis=0)
    core.started(Run("qat"), Op.AEAD_SEAL, retry=False)
    for _ in range(8):
        core.started(Run("sw"), Op.AEAD_SEAL, retry=False)
    assert core.pick(SEAL) == Wait("saturated")


def test_op_errors_do_not_harm_health_and_success_resets_fault_run():
    core = SchedulerCore([spec("a")], unhealthy_after_faults=2)
    run_one(core, outcome=Outcome.FAULT)
    run_one(core)                              # success resets the run
    run_one(core, outcome=Outcome.FAULT)
    for _ in range(5):
        run_one(core, outcome=Outcome.OP_ERROR)
    assert core.is_healthy("a")
    run_one(core, outcome=Outcome.FAULT)
    run_one(core, outcome=Outcome.FAULT)
    assert not core.is_healthy("a")
    assert core.pick(SEAL) == Wait("unhealthy")


def test_retry_prefers_untried_but_may_reuse_the_only_capable():
    core = SchedulerCore([spec("a"), spec("b")])
    assert core.pick(SEAL, tried=["a"]) == Run("b")
    assert core.pick(SEAL, tried=["b"]) == Run("a")
    assert isinstance(core.pick(SEAL, tried=["a", "b"]), Run)
    solo = SchedulerCore([spec("w")])
    assert solo.pick(SEAL, tried=["w"]) == Run("w")


def test_size_routing_sends_small_jobs_to_their_group():
    core = SchedulerCore([spec("inproc", max_inflight=1), spec("accel")],
                         groups={"small": ["inproc"]},
                         size_routing=SizeRoutingSpec(max_bytes=2048, group="small"))
    assert run_one(core, src_len=100).resource == "inproc"
    assert run_one(core, src_len=2048).resource == "inproc"
    assert {run_one(core, src_len=2049).resource for _ in range(5)} == {"accel"}
    core.started(Run("inproc"), Op.AEAD_SEAL, retry=False)
    assert core.pick(SEAL, src_len=10) == Wait("saturated")   # its group is full
    core.mark_unhealthy("inproc")
    assert core.pick(SEAL, src_len=10) == Run("accel")        # group unusable: policy


def test_inflight_by_op_and_totals():
    core = SchedulerCore([spec("a")])
    core.started(Run("a"), Op.SIGN, retry=False)
    assert core.stats().inflight_by_op["sign"] == 1
    core.finished("a", Op.SIGN, Outcome.OK)
    assert core.stats().inflight_by_op["sign"] == 0


@pytest.mark.parametrize("kwargs, message", [
    (dict(groups={"g": ["nope"]}), "unknown resource 'nope'"),
    (dict(policy=PolicyKind.FAILOVER), "needs a failover section"),
    (dict(groups={"g": ["a"]}, policy=PolicyKind.FAILOVER,
          failover=FailoverSpec("g", "x")), "secondary names unknown group 'x'"),
    (dict(size_routing=SizeRoutingSpec(10, "g")), "unknown group 'g'"),
])
def test_inconsistent_core_config_is_rejected(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        SchedulerCore([spec("a")], **kwargs)


def test_duplicate_names_and_empty_pool_rejected():
    with pytest.raises(ConfigError, match="used twice"):
        SchedulerCore([spec("a"), spec("a")])
    with pytest.raises(ConfigError, match="no resources"):
        SchedulerCore([])
