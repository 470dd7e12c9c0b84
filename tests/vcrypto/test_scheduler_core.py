"""The scheduler's decisions, sans-IO: no trio, no clock."""
from __future__ import annotations

import collections

import pytest

from vcrypto.host.scheduling._core import (
    NO_CAPABLE, SchedulerConfigError, FailoverSpec, Outcome, PolicyKind, ResourceSpec, Run,
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
    with pytest.raises(SchedulerConfigError, match=message):
        SchedulerCore([spec("a")], **kwargs)


def test_duplicate_names_and_empty_pool_rejected():
    with pytest.raises(SchedulerConfigError, match="used twice"):
        SchedulerCore([spec("a"), spec("a")])
    with pytest.raises(SchedulerConfigError, match="no resources"):
        SchedulerCore([])


# ---------------------------------------------------------------- properties

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_CAP_SETS = [ALL_CAPABILITIES, parse_capabilities(["aead_seal:*"]),
             parse_capabilities(["sign:*", "ecdh:*"]), parse_capabilities(["aead_seal:aes-128-gcm"])]
_CAPS = [SEAL, SIGN, (Op.ECDH, Alg.X25519), (Op.AEAD_SEAL, Alg.CHACHA20_POLY1305),
         (Op.AEAD_OPEN, Alg.AES_128_GCM)]


@settings(max_examples=150, deadline=None)
@given(
    resources=st.lists(st.tuples(st.integers(0, 3), st.integers(1, 3)), min_size=1, max_size=4),
    policy=st.sampled_from(list(PolicyKind)),
    actions=st.lists(st.tuples(st.sampled_from(["pick", "finish", "readmit"]),
                               st.integers(0, 4), st.integers(0, 5000),
                               st.sampled_from(list(Outcome))), max_size=80),
)
def test_core_invariants_under_any_sequence(resources, policy, actions):
    specs = [spec(f"r{i}", _CAP_SETS[c], m) for i, (c, m) in enumerate(resources)]
    names = [s.name for s in specs]
    groups = {"g1": names[: max(1, len(names) // 2)], "g2": names[len(names) // 2:] or names}
    core = SchedulerCore(specs, groups=groups, policy=policy,
                         failover=FailoverSpec("g1", "g2", 2), unhealthy_after_faults=2,
                         size_routing=SizeRoutingSpec(1000, "g2"))
    running: list[tuple[str, Op]] = []
    for kind, i, size, outcome in actions:
        if kind == "pick":
            cap = _CAPS[i]
            capable = [s for s in specs if cap in s.capabilities]
            d = core.pick(cap, size)
            if not capable:
                assert d is NO_CAPABLE
                continue
            if isinstance(d, Run):
                s = next(s for s in specs if s.name == d.resource)
                assert cap in s.capabilities and core.is_healthy(s.name)
                assert core.inflight(s.name) < s.max_inflight
                core.started(d, cap[0], retry=False)
                running.append((d.resource, cap[0]))
            else:
                assert isinstance(d, Wait)
                ready = [s for s in capable if core.is_healthy(s.name)
                         and core.inflight(s.name) < s.max_inflight]
                if d.reason == "unhealthy":
                    assert not any(core.is_healthy(s.name) for s in capable)
                elif ready:
                    # Only size routing makes a job wait while a capable
                    # resource has room: small jobs for their (full) group,
                    # large ones for the (full) resources outside it.
                    in_g2 = {s.name for s in capable if s.name in groups["g2"]}
                    if size <= 1000:
                        assert any(core.is_healthy(n) for n in in_g2)
                        assert not {s.name for s in ready} & in_g2
                    else:
                        assert len(in_g2) < len(capable)
                        assert {s.name for s in ready} <= in_g2
        elif kind == "finish" and running:
            name, op = running.pop(i % len(running))
            core.finished(name, op, outcome)
        elif kind == "readmit":
            core.readmit(names[i % len(names)])
    stats = core.stats()
    for s in specs:
        assert stats.resources[s.name].inflight == sum(1 for n, _ in running if n == s.name)
        assert 0 <= stats.resources[s.name].inflight <= s.max_inflight
    assert sum(stats.inflight_by_op.values()) == len(running)


@pytest.mark.parametrize("balance", ["least_loaded", "round_robin"])
def test_failover_balance_within_the_primary_group(balance):
    # Two primary members, one of which holds a long job: least_loaded sends
    # everything to the idle one, round_robin takes them in turn (skipping a
    # full one), as the default pool's sodium/openssl pair needs.
    core = SchedulerCore([spec("sodium"), spec("openssl"), spec("spare")],
                         groups={"main": ["sodium", "openssl"], "spare": ["spare"]},
                         policy=PolicyKind.FAILOVER,
                         failover=FailoverSpec("main", "spare", balance=balance))
    core.started(Run("openssl"), Op.SIGN, retry=False)     # a long RSA signature
    counts = collections.Counter(run_one(core).resource for _ in range(10))
    if balance == "round_robin":
        assert counts == {"sodium": 5, "openssl": 5}
    else:
        assert counts == {"sodium": 10}
    for _ in range(3):                                     # openssl full (4 slots)
        core.started(Run("openssl"), Op.SIGN, retry=False)
    assert collections.Counter(run_one(core).resource for _ in range(4)) == {"sodium": 4}
    assert not any(core.stats().resources[n].spills for n in core.names)
    with pytest.raises(SchedulerConfigError, match="balance 'random'"):
        SchedulerCore([spec("a")], groups={"g": ["a"], "h": ["a"]}, policy=PolicyKind.FAILOVER,
                      failover=FailoverSpec("g", "h", balance="random"))
