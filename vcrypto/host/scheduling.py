"""The seam between the device data path and the resource pool.

The data path needs one thing: ``scheduler.submit_now(job)`` (the result
bytes at once, or a token to pass on) then ``await scheduler.submit(job,
token) -> bytes``,
raising ``CryptoOpError`` for a bad request and ``ResourceFault`` when every
retry failed; plus ``stats()`` for metrics at scrape time. The pool
(``vcrypto.host.pool.build_scheduler``) provides that with groups, policies,
retries and health. When the pool module is not available (a trimmed
install, or early in the project's life), ``DirectScheduler`` runs every job
on one in-process ``OpensslResource``.
"""
from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any, Protocol

from vcrypto.host.resources._base import CryptoJob
from vcrypto.host.resources.openssl import OpensslResource
from vcrypto.ops import ALL_CAPABILITIES

log = logging.getLogger("vcrypto.host")


class SchedulerLike(Protocol):
    def submit_now(self, job: CryptoJob) -> bytes | Any: ...

    async def submit(self, job: CryptoJob, pending: Any = None) -> bytes: ...

    def stats(self) -> Any: ...


class DirectScheduler:
    """Every job on one in-process resource; no retries (nothing to retry on)."""

    def __init__(self) -> None:
        self.resource = OpensslResource("openssl")

    async def __aenter__(self) -> DirectScheduler:
        await self.resource.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.resource.aclose()

    def submit_now(self, job: CryptoJob) -> bytes | None:
        """The result at once if the job runs inline; else None (await ``submit``)."""
        if self.resource.runs_inline(job):
            return self.resource.execute_inline(job)
        return None

    async def submit(self, job: CryptoJob, pending: Any = None) -> bytes:
        return await self.resource.execute(job)

    def stats(self) -> None:
        return None


def capabilities_of(scheduler) -> frozenset:
    """Union of the (op, alg) capabilities of the scheduler's resources."""
    resources = getattr(scheduler, "resources", None)
    if isinstance(resources, dict):
        caps: set = set()
        for r in resources.values():
            caps |= r.capabilities
        return frozenset(caps)
    single = getattr(scheduler, "resource", None)
    return frozenset(single.capabilities) if single is not None else ALL_CAPABILITIES


def _pool_builder():
    try:
        from vcrypto.host.pool import build_scheduler
    except ImportError:
        return None
    return build_scheduler


@contextlib.asynccontextmanager
async def open_scheduler(pool_config: dict) -> AsyncIterator[SchedulerLike]:
    build = _pool_builder()
    if build is None:
        if pool_config:
            log.warning("pool: section given but vcrypto.host.pool is unavailable; "
                        "using the in-process openssl resource")
        sched: Any = DirectScheduler()
    else:
        sched = build(pool_config or None)   # None: the pool's default (one openssl)
    async with sched:
        yield sched
