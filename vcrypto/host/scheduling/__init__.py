"""Scheduling: which resource of the pool runs each request, and running it.

Three modules, one per layer:

- ``_pool``: the host config's ``pool:`` section -> a typed ``PoolConfig``
  (every error names its config path) -> a ``Scheduler`` over built
  resources (``build_scheduler``; ``None``: the default pool);
- ``_core``: ``SchedulerCore``, the sans-IO decisions (capability routing,
  round-robin, primary/secondary fail-over, size routing, health) — plain
  code, no trio, no clock;
- ``_scheduler``: ``Scheduler``, the trio layer that executes those decisions
  (runs jobs, timeouts, retries on another capable resource, probes).

The device data path needs only ``submit_now(job)`` (the result at once, or
a token) then ``await submit(job, token)``, plus ``stats()``; this package's
face is ``open_scheduler`` and ``capabilities_of``.
"""
from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from ._core import PolicyKind
from ._pool import PoolConfigError, build_scheduler, parse_pool_config
from ._scheduler import Scheduler

__all__ = ["PolicyKind", "PoolConfigError", "Scheduler", "build_scheduler", "capabilities_of",
           "open_scheduler", "parse_pool_config"]


def capabilities_of(scheduler: Scheduler) -> frozenset:
    """Union of the (op, alg) capabilities of the scheduler's resources."""
    caps: set = set()
    for r in scheduler.resources.values():
        caps |= r.capabilities
    return frozenset(caps)


@contextlib.asynccontextmanager
async def open_scheduler(pool_config: dict | None) -> AsyncIterator[Scheduler]:
    """The pool's scheduler, started (``None`` or empty: the default pool)."""
    sched = build_scheduler(pool_config or None)
    async with sched:
        yield sched
