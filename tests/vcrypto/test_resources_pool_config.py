"""``pool`` config: parsed into typed objects, every error names its path."""
from __future__ import annotations

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.vcrypto._pool_fixtures import seal_case, sign_case
from vcrypto.host.scheduling._core import PolicyKind
from vcrypto.host.scheduling._pool import PoolConfigError, build_scheduler, parse_pool_config
from vcrypto.host.resources import (OpensslResource, SimulatedResource, SodiumResource,
                                    WorkersResource)
from vcrypto.ops import Alg, Op

FULL = yaml.safe_load("""
resources:
  - {name: soft, kind: openssl, max_inflight: 3}
  - {name: procs, kind: workers, processes: 1}
  - name: qat
    kind: simulated
    capabilities: ["aead_seal:*", "sign:ecdsa_secp256r1_sha256"]
    max_inflight: 16
    parallelism: 2
    latency_us: {aead_seal: 20, sign: 150}
    seed: 7
    faults: {error_rate: 0.1, crash_after_jobs: 100, recover_after_s: 2}
groups:
  - {name: hw, resources: [qat]}
  - {name: sw, resources: [soft, procs]}
policy: failover
failover: {primary: hw, secondary: sw, spill_hysteresis_jobs: 4}
size_routing: {max_bytes: 2048, group: sw}
retry: {max_attempts: 4, timeout_s: 2.5}
probe_interval_s: 0.5
unhealthy_after_faults: 3
""")


def test_full_config_parses_to_typed_objects():
    cfg = parse_pool_config(FULL)
    soft, procs, qat = cfg.resources
    assert (soft.kind, soft.max_inflight) == ("openssl", 3)
    assert (procs.max_inflight, procs.options["processes"]) == (2, 1)   # pipelined: 2 per process
    assert qat.capabilities == {(Op.AEAD_SEAL, a) for a in
                                (Alg.AES_128_GCM, Alg.AES_256_GCM, Alg.CHACHA20_POLY1305)} | {
        (Op.SIGN, Alg.ECDSA_SECP256R1_SHA256)}
    assert qat.options["latency_us"] == {Op.AEAD_SEAL: 20.0, Op.SIGN: 150.0}
    assert qat.options["faults"].crash_after_jobs == 100
    assert cfg.policy is PolicyKind.FAILOVER and cfg.failover.spill_hysteresis_jobs == 4
    assert cfg.size_routing.max_bytes == 2048 and cfg.groups["sw"] == ("soft", "procs")
    assert (cfg.retry.max_attempts, cfg.retry.timeout_s, cfg.retry.probe_interval_s) == (4, 2.5, 0.5)
    scheduler = cfg.build()
    kinds = {n: type(r) for n, r in scheduler.resources.items()}
    assert kinds == {"soft": OpensslResource, "procs": WorkersResource, "qat": SimulatedResource}
    assert scheduler.core.unhealthy_after_faults == 3


async def test_default_pool_is_heterogeneous_and_works():
    # Two implementations taken in turn in the primary group, a workers
    # process as the failover secondary.
    scheduler = build_scheduler(None)
    assert [type(r) for r in scheduler.resources.values()] == [
        SodiumResource, OpensslResource, WorkersResource]
    assert scheduler.core.policy is PolicyKind.FAILOVER
    assert scheduler.core.failover.balance == "round_robin"
    async with scheduler:
        for case in (seal_case(1), sign_case(2, Alg.ED25519),
                     sign_case(3), seal_case(4, Alg.CHACHA20_POLY1305)):
            case.check(await scheduler.submit(case.job))


def with_(path_value: dict) -> dict:
    cfg = yaml.safe_load(yaml.safe_dump(FULL))
    for path, value in path_value.items():
        node = cfg
        *parents, last = path
        for p in parents:
            node = node[p]
        if value is KeyError:
            del node[last]
        else:
            node[last] = value
    return cfg


@pytest.mark.parametrize("change, message", [
    ({("resources", 2, "kind"): "gpu"},
     "pool.resources[2].kind: unknown kind 'gpu' (one of openssl, sodium, workers, simulated)"),
    ({("resources", 0, "colour"): "red"}, "pool.resources[0].colour: unknown key"),
    ({("resources", 1, "processes"): 0}, "pool.resources[1].processes: must be >= 1, got 0"),
    ({("resources", 1, "processes"): "two"}, "pool.resources[1].processes: expected an integer"),
    ({("resources", 1, "name"): "soft"}, "pool.resources[1].name: 'soft' already names resources[0]"),
    ({("resources", 2, "capabilities"): ["sign:aes-128-gcm"]},
     "pool.resources[2].capabilities: capability 'sign:aes-128-gcm': aes-128-gcm is not valid"),
    ({("resources", 2, "latency_us", "hash"): 3}, "pool.resources[2].latency_us.hash: unknown op"),
    ({("resources", 2, "faults", "error_rate"): 1.5},
     "pool.resources[2].faults.error_rate: must be in [0.0, 1.0], got 1.5"),
    ({("resources", 2, "faults", "explode"): True}, "pool.resources[2].faults.explode: unknown key"),
    ({("resources", 0, "kind"): KeyError}, "pool.resources[0].kind: required"),
    ({("groups", 0, "resources"): ["qat", "nope"]},
     "pool.groups[0].resources[1]: unknown resource 'nope'"),
    ({("policy",): "random"}, "pool.policy: unknown policy 'random'"),
    ({("failover",): KeyError}, "pool.failover: required with policy failover"),
    ({("failover", "secondary"): "hw"}, "pool.failover.secondary: must differ from primary"),
    ({("failover", "primary"): "fast"}, "pool.failover.primary: unknown group 'fast'"),
    ({("size_routing", "group"): "x"}, "pool.size_routing.group: unknown group 'x'"),
    ({("retry", "timeout_s"): 0}, "pool.retry.timeout_s: must be > 0"),
    ({("retry", "attempts"): 2}, "pool.retry.attempts: unknown key"),
    ({("resources",): []}, "pool.resources: at least one resource is required"),
    ({("resources",): "openssl"}, "pool.resources: expected a list, got str"),
    ({("probe_interval_s",): True}, "pool.probe_interval_s: expected a number, got bool"),
    ({("typo",): 1}, "pool.typo: unknown key"),
])
def test_errors_name_the_config_path(change, message):
    with pytest.raises(PoolConfigError) as info:
        parse_pool_config(with_(change))
    assert str(info.value).startswith(message), str(info.value)


def test_config_path_prefix_is_the_callers():
    with pytest.raises(PoolConfigError, match=r"^host\.pool\.resources: required"):
        build_scheduler({}, config_path="host.pool")
    with pytest.raises(PoolConfigError, match=r"^pool: expected a mapping, got list"):
        build_scheduler([])


# Any YAML-shaped value: a PoolConfig or a PoolConfigError, nothing else.
_scalars = st.one_of(st.none(), st.booleans(), st.integers(-5, 5), st.floats(-1, 10),
                     st.sampled_from(["openssl", "workers", "simulated", "gpu", "*", "hw",
                                      "aead_seal:*", "failover", "soft", ""]))
_keys = st.sampled_from(["resources", "groups", "policy", "failover", "size_routing", "retry",
                         "probe_interval_s", "name", "kind", "capabilities", "max_inflight",
                         "processes", "faults", "error_rate", "latency_us", "primary",
                         "secondary", "group", "max_bytes", "timeout_s", "typo"])
_yamlish = st.recursive(_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(_keys, inner, max_size=5)), max_leaves=20)


@settings(max_examples=150, deadline=None)
@given(st.one_of(_yamlish, st.dictionaries(_keys, _yamlish, max_size=6)))
def test_any_input_parses_or_names_its_path(raw):
    try:
        parse_pool_config(raw)
    except PoolConfigError as exc:
        assert str(exc).startswith("pool")


@settings(max_examples=100, deadline=None)
@given(st.lists(st.fixed_dictionaries(
    {"name": st.sampled_from(["a", "b", "c"]), "kind": st.sampled_from(["simulated", "openssl"])},
    optional={"max_inflight": st.integers(-1, 3), "capabilities": st.lists(
        st.sampled_from(["*", "sign:*", "ecdh:x25519", "aead_open:chacha20-poly1305", "x:y"]),
        max_size=2)}), max_size=3))
def test_resource_lists_parse_or_name_their_path(resources):
    try:
        cfg = parse_pool_config({"resources": resources})
    except PoolConfigError as exc:
        assert str(exc).startswith("pool.resources")
    else:
        cfg.build()
