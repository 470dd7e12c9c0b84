"""``simulated``: a model of a crypto accelerator, with fault injection.

Theory of operation
-------------------
A real accelerator (QAT, a SmartNIC engine) has a fixed number of hardware
slots working in parallel, a per-operation service time, a subset of the
algorithms, and it fails in a few distinct ways. This resource models exactly
that, on trio time, so the scheduler's policies and fault handling can be
tested deterministically (``trio.testing.MockClock``) and demonstrated in the
running host:

- ``parallelism`` slots (a ``trio.Semaphore``); a job holds one for its
  service time ``latency_us[op]`` (default ``default_latency_us``);
  ``max_inflight`` may exceed it (the device queue);
- the result is real: ``perform(job)`` (`cryptography`) after the modelled
  service time, so callers can check it;
- faults, drawn per job from ``random.Random(seed)`` in arrival order:
  ``error_rate`` (the job fails with ``ResourceFault`` after its service
  time), ``hang_rate`` (the job never returns; the scheduler's timeout cuts
  it off), ``crash_after_jobs`` (the N-th job since start or recovery crashes
  the device: every job in flight fails, and the device stays ``DOWN``);
- a ``DOWN`` device fails every job at once. ``probe()`` brings it back once
  ``recover_after_s`` has passed since the crash (never, if unset). While
  ``UP``, ``probe()`` runs a known-answer AES-GCM job through the same fault
  model, so a device that errors or hangs also fails its probe.

Tests drive faults at run time with ``set_faults`` and ``crash()``.
"""
from __future__ import annotations

import dataclasses
import enum
import random
from collections.abc import Mapping

import trio

from vcrypto.host.resources._base import CryptoJob, Resource, ResourceFault
from vcrypto.host.resources._crypto import perform
from vcrypto.ops import ALL_CAPABILITIES, Alg, Capability, Op

__all__ = ["SimulatedResource", "FaultModel"]

DEFAULT_LATENCY_US = 100.0


@dataclasses.dataclass(frozen=True, slots=True)
class FaultModel:
    error_rate: float = 0.0
    hang_rate: float = 0.0
    crash_after_jobs: int | None = None
    recover_after_s: float | None = None

    def __post_init__(self):
        for field in ("error_rate", "hang_rate"):
            v = getattr(self, field)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"{field} must be in [0, 1], got {v}")
        if self.error_rate + self.hang_rate > 1.0:
            raise ValueError("error_rate + hang_rate must be <= 1")
        if self.crash_after_jobs is not None and self.crash_after_jobs < 1:
            raise ValueError(f"crash_after_jobs must be >= 1, got {self.crash_after_jobs}")
        if self.recover_after_s is not None and self.recover_after_s < 0:
            raise ValueError(f"recover_after_s must be >= 0, got {self.recover_after_s}")


class DeviceState(enum.Enum):
    UP = "up"
    DOWN = "down"


class _Fate(enum.Enum):
    OK = "ok"
    ERROR = "error"
    HANG = "hang"


# Known-answer probe job (RFC-free: computed with cryptography at import by
# perform itself would prove nothing, so the expected value is fixed here).
_PROBE_JOB = CryptoJob(op=Op.AEAD_SEAL, alg=Alg.AES_128_GCM, key=bytes(16),
                       key_id=b"probe", src=bytes(16), iv=bytes(12))
# AES-128-GCM, zero key, zero IV, 16 zero bytes (the GCM spec's test case 2).
_PROBE_EXPECTED = bytes.fromhex("0388dace60b6a392f328c2b971b2fe78"
                                "ab6e47d42cec13bdf53a67b21257bddf")


class SimulatedResource(Resource):
    kind = "simulated"

    def __init__(self, name: str = "simulated",
                 capabilities: frozenset[Capability] = ALL_CAPABILITIES,
                 max_inflight: int = 8, *,
                 latency_us: Mapping[Op, float] | None = None,
                 default_latency_us: float = DEFAULT_LATENCY_US,
                 parallelism: int = 4,
                 seed: int = 0,
                 faults: FaultModel = FaultModel()):
        super().__init__(name, capabilities, max_inflight)
        if parallelism < 1:
            raise ValueError(f"parallelism must be >= 1, got {parallelism}")
        self.latency_us = dict(latency_us or {})
        self.default_latency_us = default_latency_us
        self.parallelism = parallelism
        self.faults = faults
        self._rng = random.Random(seed)
        self._slots = trio.Semaphore(parallelism)
        self.state = DeviceState.UP
        self._crashed_at: float | None = None
        self._jobs_since_up = 0
        self._inflight: set[trio.CancelScope] = set()
        self._crash_generation = 0
        # Counters a test can read (the scheduler keeps its own).
        self.executed = 0
        self.injected_errors = 0
        self.injected_hangs = 0
        self.crashes = 0
        self.max_seen_inflight = 0
        self.seen_ops: list[tuple[Op, Alg]] = []

    # --------------------------------------------------------------- control

    def set_faults(self, faults: FaultModel) -> None:
        self.faults = faults

    def crash(self) -> None:
        """The device dies now: every job in flight fails; it stays DOWN
        until ``probe`` sees ``recover_after_s`` pass (or ``recover``)."""
        if self.state is DeviceState.DOWN:
            return
        self.state = DeviceState.DOWN
        self.crashes += 1
        self._crash_generation += 1
        self._crashed_at = trio.current_time()
        for scope in list(self._inflight):
            scope.cancel()

    def recover(self) -> None:
        self.state = DeviceState.UP
        self._crashed_at = None
        self._jobs_since_up = 0

    # ------------------------------------------------------------- execution

    def _draw(self) -> _Fate:
        r = self._rng.random()
        if r < self.faults.error_rate:
            return _Fate.ERROR
        if r < self.faults.error_rate + self.faults.hang_rate:
            return _Fate.HANG
        return _Fate.OK

    async def execute(self, job: CryptoJob) -> bytes:
        self.seen_ops.append(job.capability)
        if not self.can(job.capability):
            # The scheduler never does this; a direct caller gets the truth.
            raise ResourceFault(f"{self.name}: {job.op.value}/{job.alg.value} not supported here")
        if self.state is DeviceState.DOWN:
            raise ResourceFault(f"{self.name}: device is down")
        self._jobs_since_up += 1
        if (self.faults.crash_after_jobs is not None
                and self._jobs_since_up >= self.faults.crash_after_jobs):
            self.crash()
            raise ResourceFault(f"{self.name}: device crashed")
        return await self._run(job, self._draw())

    async def _run(self, job: CryptoJob, fate: _Fate) -> bytes:
        generation = self._crash_generation
        with trio.CancelScope() as scope:
            self._inflight.add(scope)
            self.max_seen_inflight = max(self.max_seen_inflight, len(self._inflight))
            try:
                async with self._slots:
                    if fate is _Fate.HANG:
                        self.injected_hangs += 1
                        await trio.sleep_forever()
                    latency_us = self.latency_us.get(job.op, self.default_latency_us)
                    await trio.sleep(latency_us / 1e6)
                    if fate is _Fate.ERROR:
                        self.injected_errors += 1
                        raise ResourceFault(f"{self.name}: injected error")
                    self.executed += 1
                    return perform(job)
            finally:
                self._inflight.discard(scope)
        # Reached only when crash() cancelled this scope.
        assert self._crash_generation != generation
        raise ResourceFault(f"{self.name}: device crashed with the job in flight")

    async def probe(self) -> bool:
        if self.state is DeviceState.DOWN:
            recover = self.faults.recover_after_s
            if recover is None or self._crashed_at is None:
                return False
            if trio.current_time() - self._crashed_at < recover:
                return False
            self.recover()
        try:
            result = await self._run(_PROBE_JOB, self._draw())
        except ResourceFault:
            return False
        return result == _PROBE_EXPECTED
