"""The scheduler's decisions, as plain code: which resource runs a job.

Theory of operation
-------------------
``SchedulerCore`` holds what the scheduler knows about every resource of the
pool (capabilities, groups, in-flight count, health, counters) and answers
one question: for a job needing ``(op, alg)`` with ``src_len`` bytes, having
already failed on ``tried`` resources, which resource runs it now?  The
answer is a ``Run`` (go), a ``Wait`` (every capable resource is busy or
unhealthy: block until something changes, never spin) or ``NO_CAPABLE`` (no
resource in the pool can do this at all: the request is unsupported).

The trio layer (``vcrypto.host.scheduling._scheduler``) executes the decision, measures
time and reports the outcome back through ``started`` / ``finished``; it owns
every await. Nothing here touches trio, clocks or randomness, so every policy
is tested by calling these methods directly.

Policies (DESIGN.md §7, §8a):

- ``capability``: any healthy capable resource with a free slot, least loaded
  (in-flight / max_inflight), ties to the one that was given fewest jobs.
- ``round_robin``: capable resources in turn; a saturated or unhealthy one is
  skipped, not waited for.
- ``failover``: the primary group while it has a healthy capable resource
  with a free slot; otherwise spill to the secondary group. Spilling starts a
  hysteresis: the next ``spill_hysteresis_jobs`` jobs also go to the secondary
  (QAT Engine sends the next 8 requests to software after a retry), so a
  primary that is at its limit is not hammered job by job. Then jobs return
  to the primary. Capacity overflow and health fail-over both spill; a
  resource outside both groups is used only when neither group can do the op.
  Within a group, ``balance`` chooses: ``least_loaded`` (as ``capability``)
  or ``round_robin`` (capable members in turn, as the ``round_robin``
  policy), which spreads a group of different implementations evenly even
  when none of them is ever busy (the default pool does this).

Size routing (optional, before the policy): a job with ``src_len <=
max_bytes`` goes to the named group when that group has a healthy capable
resource (small records are cheap on software, expensive over a PCIe hop);
a larger job goes to the other resources under the policy, and to the group
only when no other healthy resource can do it.

Retries prefer resources not yet tried; a job whose only capable resources
were all tried may run on one of them again (a ``workers`` resource has
replaced its dead process by then). The number of attempts is bounded by the
trio layer.

Health is an explicit two-state machine per resource: ``HEALTHY`` ->
``UNHEALTHY`` after ``unhealthy_after_faults`` consecutive faults (errors or
timeouts); ``UNHEALTHY`` -> ``HEALTHY`` only when a probe succeeds
(``readmit``). An unhealthy resource gets no jobs.
"""
from __future__ import annotations

import dataclasses
import enum
from collections.abc import Iterable, Sequence

from vcrypto.ops import Capability, Op

__all__ = [
    "Health", "Outcome", "PolicyKind", "Run", "Wait", "NO_CAPABLE", "NoCapable",
    "ResourceSpec", "FailoverSpec", "SizeRoutingSpec", "ResourceStats",
    "PoolStats", "SchedulerCore", "SchedulerConfigError",
]


class Health(enum.Enum):
    HEALTHY = "healthy"
    UNHEALTHY = "unhealthy"


class Outcome(enum.Enum):
    OK = "ok"                # result returned
    OP_ERROR = "op_error"    # the request was bad (CryptoOpError): not the resource's fault
    FAULT = "fault"          # the resource failed (ResourceFault)
    TIMEOUT = "timeout"      # the resource did not answer in time
    CANCELLED = "cancelled"  # the caller went away: no verdict on the resource


class PolicyKind(enum.Enum):
    CAPABILITY = "capability"
    ROUND_ROBIN = "round_robin"
    FAILOVER = "failover"


@dataclasses.dataclass(frozen=True, slots=True)
class Run:
    resource: str
    spill: bool = False   # sent to the failover secondary


@dataclasses.dataclass(frozen=True, slots=True)
class Wait:
    reason: str           # "saturated" (back-pressure) or "unhealthy"


class NoCapable(enum.Enum):
    NO_CAPABLE = "no_capable"


NO_CAPABLE = NoCapable.NO_CAPABLE

Decision = Run | Wait | NoCapable


@dataclasses.dataclass(frozen=True, slots=True)
class ResourceSpec:
    name: str
    kind: str
    capabilities: frozenset[Capability]
    max_inflight: int


@dataclasses.dataclass(frozen=True, slots=True)
class FailoverSpec:
    primary: str
    secondary: str
    spill_hysteresis_jobs: int = 8
    balance: str = "least_loaded"   # within a group: least_loaded | round_robin

    BALANCES = ("least_loaded", "round_robin")


@dataclasses.dataclass(frozen=True, slots=True)
class SizeRoutingSpec:
    max_bytes: int
    group: str


@dataclasses.dataclass(slots=True)
class ResourceStats:
    """Counters of one resource; the prometheus collector reads a copy."""

    name: str
    kind: str
    max_inflight: int
    healthy: bool = True
    inflight: int = 0
    assigned: int = 0        # attempts started here
    completed: int = 0       # attempts that returned a result
    op_errors: int = 0       # attempts that failed because the request was bad
    errors: int = 0          # attempts that failed with ResourceFault
    timeouts: int = 0        # attempts cut off by the job timeout
    retries: int = 0         # failed attempts here that were retried (here or elsewhere)
    spills: int = 0          # jobs received as the failover secondary
    unhealthy_marks: int = 0
    readmissions: int = 0
    queue_wait_s_total: float = 0.0   # time jobs waited for a slot before running here
    exec_s_total: float = 0.0         # time spent in execute() here


@dataclasses.dataclass(frozen=True, slots=True)
class PoolStats:
    """A snapshot of the whole pool, taken at scrape time."""

    policy: str
    resources: dict[str, ResourceStats]
    inflight_by_op: dict[str, int]
    submitted: int
    succeeded: int
    op_errors: int
    failed: int           # jobs that ran out of attempts
    retries: int
    spills: int
    not_supported: int
    waits: int            # times a job had to wait for a slot (back-pressure)


class _Entry:
    """What the core tracks per resource (mutable, private)."""

    __slots__ = ("spec", "index", "groups", "health", "consecutive_faults", "stats", "run")

    def __init__(self, spec: ResourceSpec, index: int):
        self.spec = spec
        self.index = index
        self.run = Run(spec.name)     # the (immutable) decision, built once
        self.groups: set[str] = set()
        self.health = Health.HEALTHY
        self.consecutive_faults = 0
        self.stats = ResourceStats(spec.name, spec.kind, spec.max_inflight)

    @property
    def free(self) -> bool:
        return self.stats.inflight < self.spec.max_inflight

    @property
    def healthy(self) -> bool:
        return self.health is Health.HEALTHY


class SchedulerConfigError(ValueError):
    """A scheduler built from inconsistent parts (unknown group, empty pool)."""


class SchedulerCore:
    def __init__(self, resources: Sequence[ResourceSpec], *,
                 groups: dict[str, Sequence[str]] | None = None,
                 policy: PolicyKind = PolicyKind.CAPABILITY,
                 failover: FailoverSpec | None = None,
                 size_routing: SizeRoutingSpec | None = None,
                 unhealthy_after_faults: int = 2):
        if not resources:
            raise SchedulerConfigError("the pool has no resources")
        self._entries: dict[str, _Entry] = {}
        for i, spec in enumerate(resources):
            if spec.name in self._entries:
                raise SchedulerConfigError(f"resource name {spec.name!r} is used twice")
            if spec.max_inflight < 1:
                raise SchedulerConfigError(f"resource {spec.name!r}: max_inflight must be >= 1")
            self._entries[spec.name] = _Entry(spec, i)
        self._order = list(self._entries.values())
        self.groups: dict[str, list[str]] = {}
        for gname, members in (groups or {}).items():
            for m in members:
                if m not in self._entries:
                    raise SchedulerConfigError(f"group {gname!r} names unknown resource {m!r}")
                self._entries[m].groups.add(gname)
            self.groups[gname] = list(members)
        if policy is PolicyKind.FAILOVER:
            if failover is None:
                raise SchedulerConfigError("policy failover needs a failover section")
            for role, g in (("primary", failover.primary), ("secondary", failover.secondary)):
                if g not in self.groups:
                    raise SchedulerConfigError(f"failover {role} names unknown group {g!r}")
            if failover.balance not in FailoverSpec.BALANCES:
                raise SchedulerConfigError(f"failover balance {failover.balance!r}: expected one of "
                                  f"{', '.join(FailoverSpec.BALANCES)}")
        if size_routing is not None and size_routing.group not in self.groups:
            raise SchedulerConfigError(f"size_routing names unknown group {size_routing.group!r}")
        if unhealthy_after_faults < 1:
            raise SchedulerConfigError("unhealthy_after_faults must be >= 1")
        self.policy = policy
        self.failover = failover
        self.size_routing = size_routing
        self.unhealthy_after_faults = unhealthy_after_faults
        self._simple = policy is PolicyKind.CAPABILITY and size_routing is None
        self._capable: dict[Capability, list[_Entry]] = {}   # cap -> capable entries
        # failover: capable entries -> (primary, secondary) members, for the
        # first attempts (whose candidates are the cached capable list)
        self._fo_split: dict[int, tuple[list[_Entry], list[_Entry], list[_Entry]]] = {}
        self._fo_pick = (self._next_in_turn
                         if failover is not None and failover.balance == "round_robin"
                         else self._least_loaded)
        self._rr_cursor = 0
        self._spill_remaining = 0
        self._inflight_by_op: dict[Op, int] = {op: 0 for op in Op}
        self._totals = dict(submitted=0, succeeded=0, op_errors=0, failed=0, retries=0,
                            spills=0, not_supported=0, waits=0)

    # ---------------------------------------------------------------- queries

    @property
    def names(self) -> list[str]:
        return [e.spec.name for e in self._order]

    def is_healthy(self, name: str) -> bool:
        return self._entries[name].healthy

    def unhealthy(self) -> list[str]:
        return [e.spec.name for e in self._order if not e.healthy]

    def size_class(self, src_len: int) -> int:
        """Jobs of one capability and size class get the same answer from
        ``pick`` (when no retry excludes a resource)."""
        if self.size_routing is None:
            return 0
        return 1 if src_len <= self.size_routing.max_bytes else 2

    def inflight(self, name: str) -> int:
        return self._entries[name].stats.inflight

    # -------------------------------------------------------------- decision

    def pick(self, cap: Capability, src_len: int = 0,
             tried: Iterable[str] = ()) -> Decision:
        """Decide where a job runs now. Pure apart from the policy cursors
        (round-robin position, spill hysteresis), which advance only on a
        ``Run``."""
        capable = self._capable.get(cap)
        if capable is None:
            capable = self._capable[cap] = [e for e in self._order
                                            if cap in e.spec.capabilities]
        if not capable:
            return NO_CAPABLE
        if self._simple and not tried and len(capable) == 1:
            # The common case, decided without building lists: one capable
            # resource, policy capability, no size routing, a first attempt.
            e = capable[0]
            if e.health is Health.HEALTHY and e.stats.inflight < e.spec.max_inflight:
                return e.run
            return self._why_wait(capable)
        candidates = capable
        if tried:
            tried = set(tried)
            # Prefer resources this job has not failed on; if none is left, a
            # retry may go back to one (bounded by the caller's attempt limit).
            candidates = [e for e in capable if e.spec.name not in tried] or capable

        if self.size_routing is not None:
            sized = self.size_routing.group
            if src_len <= self.size_routing.max_bytes:
                group = [e for e in candidates if sized in e.groups and e.healthy]
                if group:
                    return self._least_loaded(group) or Wait("saturated")
            else:
                # Large jobs stay off the small-job group while anything else
                # healthy can run them (an unhealthy outsider must not make a
                # job wait while the group could serve it).
                outside = [e for e in candidates if sized not in e.groups]
                if any(e.healthy for e in outside):
                    candidates = outside

        if self.policy is PolicyKind.ROUND_ROBIN:
            return self._round_robin(candidates)
        if self.policy is PolicyKind.FAILOVER:
            return self._failover(candidates)
        return self._least_loaded(candidates) or self._why_wait(candidates)

    def _least_loaded(self, entries: list[_Entry]) -> Run | None:
        ready = [e for e in entries if e.healthy and e.free]
        if not ready:
            return None
        best = min(ready, key=lambda e: (e.stats.inflight / e.spec.max_inflight,
                                         e.stats.assigned, e.index))
        return best.run

    @staticmethod
    def _why_wait(entries: list[_Entry]) -> Wait:
        if any(e.healthy for e in entries):
            return Wait("saturated")
        return Wait("unhealthy")

    def _round_robin(self, entries: list[_Entry]) -> Decision:
        return self._next_in_turn(entries) or self._why_wait(entries)

    def _next_in_turn(self, entries: list[_Entry]) -> Run | None:
        """The first healthy, free entry at or after the round-robin cursor
        (in pool order), advancing the cursor past it; None if none is.
        On the data path for every job of a round-robin group: one pass over
        ``entries``, no temporaries."""
        n = len(self._order)
        cursor = self._rr_cursor
        best = None
        best_distance = n
        healthy = Health.HEALTHY
        for e in entries:
            if e.health is healthy and e.stats.inflight < e.spec.max_inflight:
                distance = (e.index - cursor) % n
                if distance < best_distance:
                    best, best_distance = e, distance
        if best is None:
            return None
        self._rr_cursor = (best.index + 1) % n
        return best.run

    def _failover(self, entries: list[_Entry]) -> Decision:
        assert self.failover is not None
        split = self._fo_split.get(id(entries))
        if split is not None and split[2] is entries and not self._spill_remaining:
            # The common case: a first attempt, no spill under way.
            run = self._fo_pick(split[0])
            if run is not None:
                return run
        if split is None or split[2] is not entries:
            primary = [e for e in entries if self.failover.primary in e.groups]
            secondary = [e for e in entries if self.failover.secondary in e.groups
                         and self.failover.primary not in e.groups]
            if any(entries is c for c in self._capable.values()):
                self._fo_split[id(entries)] = (primary, secondary, entries)
        else:
            primary, secondary = split[0], split[1]
        pick = self._fo_pick
        if not primary and not secondary:
            # Neither group can do this op: any capable resource of the pool.
            return self._least_loaded(entries) or self._why_wait(entries)
        if self._spill_remaining > 0:
            run = pick(secondary)
            if run is not None:
                self._spill_remaining -= 1
                return Run(run.resource, spill=True)
            self._spill_remaining = 0   # the secondary is full: hysteresis ends
        run = pick(primary)
        if run is not None:
            return run
        run = pick(secondary)
        if run is not None:
            # This job spills; the next ones follow it without re-checking
            # the primary (hysteresis).
            self._spill_remaining = self.failover.spill_hysteresis_jobs
            return Run(run.resource, spill=True)
        return self._why_wait(primary + secondary)

    # --------------------------------------------------------- state updates

    def submitted(self) -> None:
        self._totals["submitted"] += 1

    def not_supported(self) -> None:
        self._totals["not_supported"] += 1

    def waited(self) -> None:
        self._totals["waits"] += 1

    def started(self, run: Run, op: Op, *, retry: bool, queue_wait_s: float = 0.0) -> None:
        e = self._entries[run.resource]
        e.stats.inflight += 1
        e.stats.assigned += 1
        e.stats.queue_wait_s_total += queue_wait_s
        self._inflight_by_op[op] += 1
        if run.spill:
            e.stats.spills += 1
            self._totals["spills"] += 1
        if retry:
            self._totals["retries"] += 1

    def finished(self, name: str, op: Op, outcome: Outcome, *, exec_s: float = 0.0,
                 will_retry: bool = False) -> bool:
        """Record an attempt's outcome. Returns True when the resource just
        became unhealthy."""
        e = self._entries[name]
        e.stats.inflight -= 1
        e.stats.exec_s_total += exec_s
        self._inflight_by_op[op] -= 1
        if outcome is Outcome.OK:
            e.stats.completed += 1
            e.consecutive_faults = 0
            self._totals["succeeded"] += 1
            return False
        if outcome is Outcome.OP_ERROR:
            # The resource did its job: the request is bad.
            e.stats.op_errors += 1
            e.consecutive_faults = 0
            self._totals["op_errors"] += 1
            return False
        if outcome is Outcome.CANCELLED:
            return False
        if outcome is Outcome.TIMEOUT:
            e.stats.timeouts += 1
        else:
            e.stats.errors += 1
        if will_retry:
            e.stats.retries += 1
        e.consecutive_faults += 1
        if e.healthy and e.consecutive_faults >= self.unhealthy_after_faults:
            self.mark_unhealthy(name)
            return True
        return False

    def job_failed(self) -> None:
        """A job ran out of attempts."""
        self._totals["failed"] += 1

    def mark_unhealthy(self, name: str) -> None:
        e = self._entries[name]
        if e.healthy:
            e.health = Health.UNHEALTHY
            e.stats.healthy = False
            e.stats.unhealthy_marks += 1

    def readmit(self, name: str) -> None:
        """A probe succeeded: the resource takes jobs again."""
        e = self._entries[name]
        if not e.healthy:
            e.health = Health.HEALTHY
            e.stats.healthy = True
            e.consecutive_faults = 0
            e.stats.readmissions += 1

    # ----------------------------------------------------------------- stats

    def stats(self) -> PoolStats:
        return PoolStats(
            policy=self.policy.value,
            resources={e.spec.name: dataclasses.replace(e.stats) for e in self._order},
            inflight_by_op={op.value: n for op, n in self._inflight_by_op.items()},
            **self._totals,
        )
