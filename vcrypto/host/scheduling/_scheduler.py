"""The scheduler: runs each job on a resource of the pool, under trio.

Theory of operation
-------------------
``Scheduler.submit_now(job)`` is what the host's data path calls first for
every request, synchronously, in its drain pass: when the core grants a slot
at once on a resource that runs the job inline (``openssl``, small jobs), the
job runs right there and the result comes back with no task, no lock, no
checkpoint — the data path's cheap case (a trio task + cancel scope + wake
per job cost several times the AES-GCM seal of a TLS record). Otherwise it
returns a ``Pending`` and the data path starts a task that awaits
``submit(job, pending)``, the general path below; one decision per attempt
either way, and the same counters, health rules and retries.

``Scheduler.submit(job)`` is what the general path awaits. It asks the sans-IO ``SchedulerCore`` (``_core``) where the
job should run, and:

- on ``Run``: calls ``resource.execute(job)`` inside ``trio.move_on_after
  (timeout_s)``; a hang becomes a timeout, i.e. a resource fault;
- on ``Wait``: joins the line of waiting jobs of its kind. When a slot frees
  or a resource is re-admitted, ``_notify`` grants slots to waiting jobs in
  arrival order and wakes only those (no thundering herd). Back-pressure is
  an await, never a spin. A wait because every capable resource is
  unhealthy is bounded by ``timeout_s``; a wait for a free slot is not
  (slots free when jobs finish or time out);
- on ``NO_CAPABLE``: raises ``NoCapableResource``, a
  ``CryptoOpError(NOT_SUPPORTED)``.

A ``ResourceFault`` or timeout is retried on another capable resource, at
most ``max_attempts`` attempts in all; then the job fails with
``JobFailed`` (a ``ResourceFault``). A ``CryptoOpError`` is the request's own
fault and is raised at once, never retried.

Resources that fault repeatedly are marked unhealthy by the core; the probe
task (every ``probe_interval_s``) calls ``resource.probe()`` on each
unhealthy one and re-admits it when the probe succeeds.

``Scheduler`` is an async context manager: entering starts every resource
and the probe task; leaving cancels the probe and closes the resources
(shielded). ``stats()`` returns a ``PoolStats`` snapshot for the metrics
collector to read at scrape time.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Sequence

import trio

from ._core import (
    NO_CAPABLE, FailoverSpec, Outcome, PolicyKind, PoolStats, ResourceSpec,
    Run, SchedulerCore, SizeRoutingSpec, Wait,
)
from vcrypto._log import event
from vcrypto.host.resources._base import CryptoJob, CryptoOpError, Resource, ResourceFault

__all__ = ["Scheduler", "RetryPolicy", "NoCapableResource", "JobFailed", "Pending"]

log = logging.getLogger("vcrypto.host.scheduling._scheduler")


class _Waiter:
    """A job waiting for a slot; ``run`` is set when ``_notify`` grants one."""

    __slots__ = ("job", "tried", "t0", "event", "run")

    def __init__(self, job: CryptoJob, tried: list[str], t0: float):
        self.job = job
        self.tried = tried
        self.t0 = t0
        self.event = trio.Event()
        self.run: Run | None = None


class Pending:
    """A job ``submit_now`` could not finish: hand it to ``submit``.

    ``run``: the slot already granted (``core.started`` counted), or None to
    wait in line; ``tried``/``attempts``/``last_fault``: the attempts made."""

    __slots__ = ("run", "tried", "attempts", "last_fault")

    def __init__(self, run: Run | None, tried: list[str], attempts: int, last_fault: str):
        self.run = run
        self.tried = tried
        self.attempts = attempts
        self.last_fault = last_fault


class NoCapableResource(CryptoOpError):
    """No resource in the pool can run this (op, algorithm)."""

    def __init__(self, detail: str):
        super().__init__(CryptoOpError.Kind.NOT_SUPPORTED, detail)


class JobFailed(ResourceFault):
    """Every attempt at a job failed on a resource (the request may be fine)."""


@dataclasses.dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_attempts: int = 3
    timeout_s: float = 5.0          # per attempt
    probe_interval_s: float = 1.0
    probe_timeout_s: float = 2.0


class Scheduler:
    def __init__(self, resources: Sequence[Resource], *,
                 groups: dict[str, Sequence[str]] | None = None,
                 policy: PolicyKind = PolicyKind.CAPABILITY,
                 failover: FailoverSpec | None = None,
                 size_routing: SizeRoutingSpec | None = None,
                 retry: RetryPolicy = RetryPolicy(),
                 unhealthy_after_faults: int = 2):
        if retry.max_attempts < 1:
            raise ValueError("retry.max_attempts must be >= 1")
        self.resources: dict[str, Resource] = {r.name: r for r in resources}
        self.core = SchedulerCore(
            [ResourceSpec(r.name, r.kind, r.capabilities, r.max_inflight) for r in resources],
            groups=groups, policy=policy, failover=failover, size_routing=size_routing,
            unhealthy_after_faults=unhealthy_after_faults)
        self.retry = retry
        # Jobs waiting for a slot: one line (arrival-ordered dict) per kind.
        self._lines: dict[tuple, dict[_Waiter, None]] = {}
        self._nursery_cm = None
        self._nursery: trio.Nursery | None = None
        self._started: list[Resource] = []
        self._probing: set[str] = set()   # resources with a probe under way

    # ------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> Scheduler:
        try:
            for r in self.resources.values():
                await r.start()
                self._started.append(r)
        except BaseException:
            await self._close_resources()
            raise
        self._nursery_cm = trio.open_nursery()
        self._nursery = await self._nursery_cm.__aenter__()
        self._nursery.start_soon(self._probe_loop)
        return self

    async def __aexit__(self, *exc_info) -> bool:
        assert self._nursery is not None and self._nursery_cm is not None
        self._nursery.cancel_scope.cancel()
        try:
            # Only the probe task runs in this nursery and it ends by our
            # cancel; the body's own exception (exc_info) is not handed to
            # the nursery, so it propagates as itself, not wrapped in an
            # ExceptionGroup.
            await self._nursery_cm.__aexit__(None, None, None)
        finally:
            self._nursery = None
            await self._close_resources()
        return False

    async def _close_resources(self) -> None:
        with trio.CancelScope(shield=True):
            while self._started:
                await self._started.pop().aclose()

    # ------------------------------------------------------------ data path

    def submit_now(self, job: CryptoJob) -> bytes | Pending:
        """Start ``job`` without awaiting: the data path's fast path.

        Asks the core once. If the job gets a slot at once on a resource that
        ``runs_inline`` it, runs it right here, synchronously, and returns the
        result bytes. Otherwise returns a ``Pending`` to hand to ``submit``
        (which carries the slot already granted, or the attempt that faulted,
        so the decision is never taken twice: the round-robin cursor and the
        failover hysteresis advance once per attempt, as in ``submit``).

        Raises what ``submit`` raises: ``CryptoOpError`` (the request's own
        fault, never retried), ``NoCapableResource``, or ``JobFailed`` when
        the inline attempt faulted and no attempt is left. Counters, health
        and retries follow exactly the rules of ``submit``; there is no
        timeout on an inline attempt (nothing can interrupt synchronous code:
        only resources whose jobs take microseconds say ``runs_inline``)."""
        core = self.core
        core.submitted()
        decision = core.pick(job.capability, len(job.src), ())
        if decision.__class__ is not Run:
            if decision is NO_CAPABLE:
                core.not_supported()
                raise NoCapableResource(f"no resource in the pool can do "
                                        f"{job.op.value}/{job.alg.value}")
            return Pending(None, [], 0, "")          # wait in line in submit()
        core.started(decision, job.op, retry=False)
        name = decision.resource
        resource = self.resources[name]
        if not resource.runs_inline(job):
            return Pending(decision, [], 0, "")
        will_retry = self.retry.max_attempts > 1
        t0 = time.perf_counter()
        try:
            result = resource.execute_inline(job)
        except CryptoOpError:
            core.finished(name, job.op, Outcome.OP_ERROR, exec_s=time.perf_counter() - t0)
            self._notify()
            raise
        except ResourceFault as exc:
            fault = f"{name}: {exc}"
        except Exception as exc:
            event(log, "error", "resource_crashed", exc_info=True, resource=name)
            fault = f"{name}: unexpected {exc!r}"
        else:
            core.finished(name, job.op, Outcome.OK, exec_s=time.perf_counter() - t0)
            if self._lines:
                self._notify()
            return result
        if core.finished(name, job.op, Outcome.FAULT, exec_s=time.perf_counter() - t0,
                         will_retry=will_retry):
            event(log, "warning", "resource_unhealthy", resource=name, outcome=Outcome.FAULT.value, fault=fault)
        self._notify()
        if not will_retry:
            core.job_failed()
            raise JobFailed(f"{job.op.value}/{job.alg.value} failed on 1 attempt(s); "
                            f"last: {fault}")
        return Pending(None, [name], 1, fault)

    async def submit(self, job: CryptoJob, pending: Pending | None = None) -> bytes:
        """Run ``job`` on a capable resource; return its result bytes.

        ``pending`` (from ``submit_now``) continues a job already submitted:
        with the slot it was granted, or after its faulted attempts.

        Raises ``CryptoOpError`` (bad request, or ``NoCapableResource``) or
        ``JobFailed`` after ``max_attempts`` resource faults."""
        core = self.core
        if pending is None:
            core.submitted()
            tried: list[str] = []
            last_fault: str = ""
            first = 0
            granted: Run | None = None
        else:
            tried, last_fault, first = pending.tried, pending.last_fault, pending.attempts
            granted = pending.run
        for attempt in range(first, self.retry.max_attempts):
            if granted is not None:
                run, granted = granted, None
            else:
                run = await self._acquire(job, tried)
            resource = self.resources[run.resource]
            will_retry = attempt + 1 < self.retry.max_attempts
            outcome = Outcome.CANCELLED
            t0 = trio.current_time()
            try:
                with trio.move_on_after(self.retry.timeout_s) as scope:
                    result = await resource.execute(job)
                if scope.cancelled_caught:
                    outcome = Outcome.TIMEOUT
                    last_fault = f"{run.resource}: no answer in {self.retry.timeout_s} s"
                else:
                    outcome = Outcome.OK
                    return result
            except CryptoOpError:
                outcome = Outcome.OP_ERROR
                raise
            except ResourceFault as exc:
                outcome = Outcome.FAULT
                last_fault = f"{run.resource}: {exc}"
            except Exception as exc:
                # A bug in a resource is that resource's fault: isolate it
                # (retry elsewhere, mark it unhealthy), never fail the host.
                event(log, "error", "resource_crashed", exc_info=True, resource=run.resource)
                outcome = Outcome.FAULT
                last_fault = f"{run.resource}: unexpected {exc!r}"
            finally:
                if core.finished(run.resource, job.op, outcome,
                                 exec_s=trio.current_time() - t0, will_retry=will_retry):
                    event(log, "warning", "resource_unhealthy", resource=run.resource, outcome=outcome.value,
                          fault=last_fault)
                self._notify()
            tried.append(run.resource)
        core.job_failed()
        raise JobFailed(f"{job.op.value}/{job.alg.value} failed on {len(tried)} attempt(s); "
                        f"last: {last_fault}")

    async def _acquire(self, job: CryptoJob, tried: list[str]) -> Run:
        """A resource slot for ``job``: at once, or after waiting in line."""
        core = self.core
        t0 = trio.current_time()
        unhealthy_deadline: float | None = None
        while True:
            decision = core.pick(job.capability, len(job.src), tried)
            now = trio.current_time()
            if isinstance(decision, Run):
                core.started(decision, job.op, retry=bool(tried), queue_wait_s=now - t0)
                return decision
            if decision is NO_CAPABLE:
                core.not_supported()
                raise NoCapableResource(f"no resource in the pool can do "
                                        f"{job.op.value}/{job.alg.value}")
            assert isinstance(decision, Wait)
            core.waited()
            wait_until = now + self.retry.timeout_s
            if decision.reason == "unhealthy":
                # Bounded: only a probe can end this wait.
                if unhealthy_deadline is None:
                    unhealthy_deadline = now + self.retry.timeout_s
                if now >= unhealthy_deadline:
                    core.job_failed()
                    raise JobFailed(f"{job.op.value}/{job.alg.value}: every capable resource "
                                    f"is unhealthy (waited {self.retry.timeout_s} s)")
                wait_until = unhealthy_deadline
            else:
                unhealthy_deadline = None
            run = await self._wait_in_line(_Waiter(job, tried, t0), wait_until)
            if run is not None:
                return run
            # Not granted by wait_until: look again (health may have changed).

    async def _wait_in_line(self, waiter: _Waiter, deadline: float) -> Run | None:
        """Queue behind the other waiting jobs of the same kind until
        ``_notify`` grants this one a slot, or ``deadline`` passes."""
        job = waiter.job
        key = (job.capability, self.core.size_class(len(job.src)), bool(waiter.tried))
        line = self._lines.setdefault(key, {})
        line[waiter] = None
        returned = False
        try:
            with trio.move_on_at(deadline):
                await waiter.event.wait()
            returned = True
            return waiter.run
        finally:
            line.pop(waiter, None)
            if not line and self._lines.get(key) is line:
                del self._lines[key]
            if waiter.run is not None and not returned:
                # Cancelled after being granted a slot: give it back.
                self.core.finished(waiter.run.resource, job.op, Outcome.CANCELLED)
                self._notify()

    def _notify(self) -> None:
        """A slot freed or a resource came back: grant slots to waiting jobs.

        Waiting jobs stand in one line per kind (capability, size class,
        retry or not): jobs of one kind get the same answer from the core, so
        each line is served from its head, in arrival order, until the core
        says wait. Only granted jobs are woken (no thundering herd), and the
        cost is one ``pick`` per line plus one per grant, however long the
        lines are."""
        if not self._lines:
            return
        core = self.core
        now = trio.current_time()
        for line in list(self._lines.values()):
            while line:
                waiter = next(iter(line))
                job = waiter.job
                decision = core.pick(job.capability, len(job.src), waiter.tried)
                if not isinstance(decision, Run):
                    break
                core.started(decision, job.op, retry=bool(waiter.tried),
                             queue_wait_s=now - waiter.t0)
                waiter.run = decision
                waiter.event.set()
                del line[waiter]       # granted: out of the line

    # ---------------------------------------------------------------- probes

    async def _probe_loop(self) -> None:
        """Every ``probe_interval_s``, start a probe of each unhealthy
        resource not already being probed. Probes run on their own, so a
        probe that hangs (until ``probe_timeout_s``) delays no other."""
        assert self._nursery is not None
        while True:
            await trio.sleep(self.retry.probe_interval_s)
            for name in self.core.unhealthy():
                if name not in self._probing:
                    self._probing.add(name)
                    self._nursery.start_soon(self._probe_one, name)

    async def _probe_one(self, name: str) -> bool:
        ok = False
        try:
            with trio.move_on_after(self.retry.probe_timeout_s):
                try:
                    ok = await self.resources[name].probe()
                except (ResourceFault, CryptoOpError):
                    ok = False
                except Exception:
                    # A bug in one resource's probe must not stop the probing
                    # of the others (or take the pool down): it stays out.
                    event(log, "error", "resource_probe_crashed", exc_info=True, resource=name)
                    ok = False
        finally:
            self._probing.discard(name)
        if ok and not self.core.is_healthy(name):
            self.core.readmit(name)
            event(log, "info", "resource_readmitted", resource=name, by="probe")
            self._notify()
        return ok

    async def probe_now(self) -> list[str]:
        """Probe every unhealthy resource once, concurrently, and wait for
        the probes; return the names re-admitted."""
        readmitted: list[str] = []

        async def one(name: str) -> None:
            if await self._probe_one(name):
                readmitted.append(name)

        async with trio.open_nursery() as nursery:
            for name in self.core.unhealthy():
                if name not in self._probing:
                    self._probing.add(name)
                    nursery.start_soon(one, name)
        return readmitted

    # ----------------------------------------------------------------- stats

    def stats(self) -> PoolStats:
        return self.core.stats()
