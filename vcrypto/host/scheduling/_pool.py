"""The ``pool`` section of the host config -> a typed ``PoolConfig`` -> a ``Scheduler``.

The YAML the host loads hands this module a plain dict; every key is
checked (unknown keys rejected, wrong types named) and every error names its
config path, e.g. ``pool.resources[2].kind: unknown kind 'gpu' (one of
openssl, sodium, workers, simulated)``. ``build_scheduler(None)`` gives the
default pool ``DEFAULT_POOL_CONFIG``: two implementations in the primary
group taken in turn (``sodium`` = libsodium, ``openssl`` = OpenSSL through
`cryptography`), capability routing between them (libsodium has no P-256,
ECDSA, RSA or AES-128-GCM: those go to ``openssl`` only), and one
``workers`` process as the failover secondary when the primary is full or
failing::

    resources:
      - {name: sodium, kind: sodium}
      - {name: openssl, kind: openssl}
      - {name: spare, kind: workers, processes: 1}
    groups:
      - {name: main, resources: [sodium, openssl]}
      - {name: spare, resources: [spare]}
    policy: failover
    failover: {primary: main, secondary: spare, balance: round_robin}

Shape (defaults in brackets)::

    pool:
      resources:                       # required, at least one
        - name: soft                   # required, unique
          kind: openssl                # openssl | sodium | workers | simulated
          capabilities: ["*"]          # ["*"] | ["op:*", "op:alg", ...]  [*]; a wildcard
                                       # means what the kind can do (sodium: x25519,
                                       # ed25519, chacha20-poly1305, aes-256-gcm
                                       # with AES-NI); naming more is an error
          max_inflight: 64             # [openssl/sodium 64, workers 2 x processes, simulated 8]
          # openssl and sodium:
          thread_threshold_bytes: 262144   # AEAD at least this big runs on a thread
          # openssl only:
          threads: 4                       # [max_inflight]
        - name: procs
          kind: workers
          processes: 2                 # [2] worker processes
        - name: qat
          kind: simulated
          parallelism: 4               # [4] jobs served at once
          latency_us: {aead_seal: 20, sign: 150}   # per op; others default_latency_us
          default_latency_us: 100      # [100]
          seed: 0                      # [0] fault draws are deterministic
          faults:                      # [none]
            error_rate: 0.0            # share of jobs failing with a resource fault
            hang_rate: 0.0             # share of jobs never answering
            crash_after_jobs: null     # the device dies at its N-th job ...
            recover_after_s: null      # ... and a probe revives it this long after
      groups:                          # [none]
        - {name: hw, resources: [qat]}
        - {name: sw, resources: [soft, procs]}
      policy: failover                 # capability | round_robin | failover  [capability]
      failover:                        # required with policy failover
        primary: hw
        secondary: sw
        spill_hysteresis_jobs: 8       # [8] jobs that follow a spill to the secondary
        balance: least_loaded          # [least_loaded] | round_robin: choice within a group
      size_routing:                    # [none] jobs with src <= max_bytes go to group
        max_bytes: 2048
        group: sw
      retry:
        max_attempts: 3                # [3] attempts per job, on different resources
        timeout_s: 5.0                 # [5.0] per attempt; a hang becomes a fault
      probe_interval_s: 1.0            # [1.0] probe unhealthy resources this often
      unhealthy_after_faults: 2        # [2] consecutive faults mark a resource unhealthy
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from ._core import FailoverSpec, PolicyKind, SizeRoutingSpec
from vcrypto.host.resources import RESOURCE_KINDS, FaultModel, Resource
from vcrypto.host.resources.openssl import DEFAULT_MAX_INFLIGHT as OPENSSL_MAX_INFLIGHT
from vcrypto.host.resources.openssl import OpensslResource
from vcrypto.host.resources.simulated import SimulatedResource
from vcrypto.host.resources.sodium import DEFAULT_MAX_INFLIGHT as SODIUM_MAX_INFLIGHT
from vcrypto.host.resources.sodium import SodiumResource
from vcrypto.host.resources.workers import WorkersResource
from ._scheduler import RetryPolicy, Scheduler
from vcrypto.ops import Op, parse_capabilities

__all__ = ["PoolConfigError", "PoolConfig", "parse_pool_config", "build_scheduler",
           "DEFAULT_POOL_CONFIG"]

DEFAULT_POOL_CONFIG: dict[str, Any] = {
    "resources": [
        {"name": "sodium", "kind": "sodium"},
        {"name": "openssl", "kind": "openssl"},
        {"name": "spare", "kind": "workers", "processes": 1},
    ],
    "groups": [
        {"name": "main", "resources": ["sodium", "openssl"]},
        {"name": "spare", "resources": ["spare"]},
    ],
    "policy": "failover",
    "failover": {"primary": "main", "secondary": "spare", "balance": "round_robin"},
}


class PoolConfigError(ValueError):
    """The pool config is invalid; the message starts with the config path."""

    def __init__(self, path: str, problem: str):
        super().__init__(f"{path}: {problem}")
        self.path = path
        self.problem = problem


# ----------------------------------------------------------------- readers

class _Section:
    """Typed access to one mapping of the config, remembering its path and
    which keys were read, so ``done()`` can reject the rest."""

    def __init__(self, value: object, path: str):
        if not isinstance(value, Mapping):
            raise PoolConfigError(path, f"expected a mapping, got {_tname(value)}")
        self.value = value
        self.path = path
        self._seen: set[str] = set()

    def at(self, key: str) -> str:
        return f"{self.path}.{key}"

    def raw(self, key: str, default: object = ..., *, required: bool = False) -> object:
        self._seen.add(key)
        if key in self.value and self.value[key] is not None:
            return self.value[key]
        if required:
            raise PoolConfigError(self.at(key), "required")
        return default

    def int(self, key: str, default: int | None = None, *, minimum: int = 0,
            required: bool = False) -> int | None:
        v = self.raw(key, default, required=required)
        if v is None:
            return None
        if isinstance(v, bool) or not isinstance(v, int):
            raise PoolConfigError(self.at(key), f"expected an integer, got {_tname(v)}")
        if v < minimum:
            raise PoolConfigError(self.at(key), f"must be >= {minimum}, got {v}")
        return v

    def float(self, key: str, default: float | None = None, *, minimum: float = 0.0,
              maximum: float | None = None) -> float | None:
        v = self.raw(key, default)
        if v is None:
            return None
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise PoolConfigError(self.at(key), f"expected a number, got {_tname(v)}")
        if v < minimum or (maximum is not None and v > maximum):
            bound = f"in [{minimum}, {maximum}]" if maximum is not None else f">= {minimum}"
            raise PoolConfigError(self.at(key), f"must be {bound}, got {v}")
        return float(v)

    def str(self, key: str, default: str | None = None, *, required: bool = False) -> str | None:
        v = self.raw(key, default, required=required)
        if v is None:
            return None
        if not isinstance(v, str) or not v:
            raise PoolConfigError(self.at(key), f"expected a non-empty string, got {_tname(v)}")
        return v

    def list(self, key: str, *, required: bool = False) -> list:
        v = self.raw(key, [], required=required)
        if not isinstance(v, list):
            raise PoolConfigError(self.at(key), f"expected a list, got {_tname(v)}")
        return v

    def section(self, key: str) -> _Section | None:
        v = self.raw(key, None)
        return None if v is None else _Section(v, self.at(key))

    def done(self) -> None:
        extra = sorted(str(k) for k in self.value if k not in self._seen)
        if extra:
            raise PoolConfigError(self.at(extra[0]),
                                  f"unknown key (expected one of {', '.join(sorted(self._seen))})")


def _tname(v: object) -> str:
    return "null" if v is None else type(v).__name__


# ------------------------------------------------------------ typed config

@dataclasses.dataclass(frozen=True)
class ResourceConfig:
    name: str
    kind: str
    capabilities: frozenset
    max_inflight: int
    options: Mapping[str, Any]      # kind-specific constructor keywords

    def build(self) -> Resource:
        cls = RESOURCE_KINDS[self.kind]
        return cls(self.name, self.capabilities, self.max_inflight, **self.options)


@dataclasses.dataclass(frozen=True)
class PoolConfig:
    resources: tuple[ResourceConfig, ...]
    groups: Mapping[str, tuple[str, ...]]
    policy: PolicyKind
    failover: FailoverSpec | None
    size_routing: SizeRoutingSpec | None
    retry: RetryPolicy
    unhealthy_after_faults: int

    def build(self) -> Scheduler:
        return Scheduler([r.build() for r in self.resources], groups=dict(self.groups),
                         policy=self.policy, failover=self.failover,
                         size_routing=self.size_routing, retry=self.retry,
                         unhealthy_after_faults=self.unhealthy_after_faults)


def _parse_resource(raw: object, path: str) -> ResourceConfig:
    s = _Section(raw, path)
    name = s.str("name", required=True)
    kind = s.str("kind", required=True)
    if kind not in RESOURCE_KINDS:
        raise PoolConfigError(s.at("kind"), f"unknown kind {kind!r} "
                                            f"(one of {', '.join(RESOURCE_KINDS)})")
    caps_raw = s.raw("capabilities", ["*"])
    if not isinstance(caps_raw, list) or not all(isinstance(c, str) for c in caps_raw):
        raise PoolConfigError(s.at("capabilities"), "expected a list of strings")
    supported = RESOURCE_KINDS[kind].supported
    caps: set = set()
    for entry in caps_raw:
        try:
            entry_caps = parse_capabilities([entry])
        except ValueError as exc:
            raise PoolConfigError(s.at("capabilities"), str(exc)) from None
        if "*" in entry:
            caps |= entry_caps & supported     # a wildcard: what this kind can do
        elif not entry_caps <= supported:
            raise PoolConfigError(s.at("capabilities"),
                                  f"kind {kind} cannot do {entry} (it can do: "
                                  f"{', '.join(sorted(f'{o.value}:{a.value}' for o, a in supported))})")
        else:
            caps |= entry_caps
    caps = frozenset(caps)
    if not caps:
        raise PoolConfigError(s.at("capabilities"), "must not be empty")
    options: dict[str, Any] = {}
    if kind == OpensslResource.kind:
        max_inflight = s.int("max_inflight", OPENSSL_MAX_INFLIGHT, minimum=1)
        options["thread_threshold_bytes"] = s.int("thread_threshold_bytes", 256 * 1024)
        options["threads"] = s.int("threads", None, minimum=1)
    elif kind == SodiumResource.kind:
        max_inflight = s.int("max_inflight", SODIUM_MAX_INFLIGHT, minimum=1)
        options["thread_threshold_bytes"] = s.int("thread_threshold_bytes", 256 * 1024)
    elif kind == WorkersResource.kind:
        processes = s.int("processes", 2, minimum=1)
        max_inflight = s.int("max_inflight", 2 * processes, minimum=1)
        options["processes"] = processes
    else:
        assert kind == SimulatedResource.kind
        max_inflight = s.int("max_inflight", 8, minimum=1)
        options["parallelism"] = s.int("parallelism", 4, minimum=1)
        options["seed"] = s.int("seed", 0)
        options["default_latency_us"] = s.float("default_latency_us", 100.0)
        options["latency_us"] = _parse_latencies(s.section("latency_us"))
        options["faults"] = _parse_faults(s.section("faults"))
    s.done()
    return ResourceConfig(name, kind, caps, max_inflight, options)


def _parse_latencies(s: _Section | None) -> dict[Op, float]:
    if s is None:
        return {}
    out = {}
    for key in list(s.value):
        try:
            op = Op(key)
        except ValueError:
            raise PoolConfigError(s.at(str(key)), f"unknown op (one of "
                                                  f"{', '.join(o.value for o in Op)})") from None
        out[op] = s.float(key)
    return out


def _parse_faults(s: _Section | None) -> FaultModel:
    if s is None:
        return FaultModel()
    model = dict(
        error_rate=s.float("error_rate", 0.0, maximum=1.0),
        hang_rate=s.float("hang_rate", 0.0, maximum=1.0),
        crash_after_jobs=s.int("crash_after_jobs", None, minimum=1),
        recover_after_s=s.float("recover_after_s", None),
    )
    s.done()
    try:
        return FaultModel(**model)
    except ValueError as exc:
        raise PoolConfigError(s.path, str(exc)) from None


def parse_pool_config(raw: Mapping[str, Any] | None, *, config_path: str = "pool") -> PoolConfig:
    """Validate the pool section; raise ``PoolConfigError`` naming the path."""
    s = _Section(DEFAULT_POOL_CONFIG if raw is None else raw, config_path)
    resources = tuple(_parse_resource(r, f"{s.at('resources')}[{i}]")
                      for i, r in enumerate(s.list("resources", required=True)))
    if not resources:
        raise PoolConfigError(s.at("resources"), "at least one resource is required")
    names: dict[str, int] = {}
    for i, r in enumerate(resources):
        if r.name in names:
            raise PoolConfigError(f"{s.at('resources')}[{i}].name",
                                  f"{r.name!r} already names resources[{names[r.name]}]")
        names[r.name] = i

    groups: dict[str, tuple[str, ...]] = {}
    for i, g_raw in enumerate(s.list("groups")):
        g = _Section(g_raw, f"{s.at('groups')}[{i}]")
        gname = g.str("name", required=True)
        if gname in groups:
            raise PoolConfigError(g.at("name"), f"group {gname!r} is defined twice")
        members = g.list("resources", required=True)
        for j, m in enumerate(members):
            if m not in names:
                raise PoolConfigError(f"{g.at('resources')}[{j}]",
                                      f"unknown resource {m!r} (one of {', '.join(names)})")
        g.done()
        groups[gname] = tuple(members)

    def group_ref(sec: _Section, key: str) -> str:
        g = sec.str(key, required=True)
        if g not in groups:
            raise PoolConfigError(sec.at(key), f"unknown group {g!r} "
                                               f"(defined: {', '.join(groups) or 'none'})")
        return g

    policy_name = s.str("policy", PolicyKind.CAPABILITY.value)
    try:
        policy = PolicyKind(policy_name)
    except ValueError:
        raise PoolConfigError(s.at("policy"), f"unknown policy {policy_name!r} (one of "
                                              f"{', '.join(p.value for p in PolicyKind)})") from None
    failover = None
    fs = s.section("failover")
    if fs is not None:
        balance = fs.str("balance", "least_loaded")
        if balance not in FailoverSpec.BALANCES:
            raise PoolConfigError(fs.at("balance"), f"unknown balance {balance!r} "
                                                    f"(one of {', '.join(FailoverSpec.BALANCES)})")
        failover = FailoverSpec(group_ref(fs, "primary"), group_ref(fs, "secondary"),
                                fs.int("spill_hysteresis_jobs", 8), balance)
        fs.done()
        if failover.primary == failover.secondary:
            raise PoolConfigError(fs.at("secondary"), "must differ from primary")
    if policy is PolicyKind.FAILOVER and failover is None:
        raise PoolConfigError(s.at("failover"), "required with policy failover")

    size_routing = None
    ss = s.section("size_routing")
    if ss is not None:
        size_routing = SizeRoutingSpec(ss.int("max_bytes", required=True),
                                       group_ref(ss, "group"))
        ss.done()

    retry_kw: dict[str, Any] = {}
    rs = s.section("retry")
    if rs is not None:
        retry_kw["max_attempts"] = rs.int("max_attempts", 3, minimum=1)
        retry_kw["timeout_s"] = rs.float("timeout_s", 5.0)
        rs.done()
        if retry_kw["timeout_s"] <= 0:
            raise PoolConfigError(rs.at("timeout_s"), "must be > 0")
    probe_interval_s = s.float("probe_interval_s", 1.0)
    if probe_interval_s <= 0:
        raise PoolConfigError(s.at("probe_interval_s"), "must be > 0")
    retry = RetryPolicy(probe_interval_s=probe_interval_s, **retry_kw)
    unhealthy_after_faults = s.int("unhealthy_after_faults", 2, minimum=1)
    s.done()
    return PoolConfig(resources, groups, policy, failover, size_routing, retry,
                      unhealthy_after_faults)


def build_scheduler(pool_config: Mapping[str, Any] | None, *,
                    config_path: str = "pool") -> Scheduler:
    """Parse ``pool_config`` (``None``: the default pool) and build the
    scheduler with its resources (not yet started: ``async with`` it)."""
    return parse_pool_config(pool_config, config_path=config_path).build()
