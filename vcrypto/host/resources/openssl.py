"""``openssl``: the in-process resource (`cryptography`, i.e. OpenSSL).

Small jobs run inline on the host's trio thread: an AES-GCM seal of a TLS
record or an ECDSA signature costs 1-30 µs, less than a thread hop
(~20-50 µs here, see notes/ipc-costs.md). Jobs that would stall the event
loop for long run on a trio worker thread: RSA signatures (0.7 ms and more;
`cryptography` releases the GIL while OpenSSL computes, so threads give real
parallelism) and AEAD payloads above ``thread_threshold_bytes``.
"""
from __future__ import annotations

import trio

from vcrypto.host.resources._base import CryptoJob, Resource
from vcrypto.host.resources._crypto import perform
from vcrypto.ops import ALL_CAPABILITIES, Alg, Capability, Op

__all__ = ["OpensslResource", "DEFAULT_MAX_INFLIGHT"]

DEFAULT_MAX_INFLIGHT = 64

_THREADED_SIGN_ALGS = frozenset({
    Alg.RSA_PSS_RSAE_SHA256, Alg.RSA_PSS_RSAE_SHA384, Alg.RSA_PSS_RSAE_SHA512,
    Alg.RSA_PKCS1_SHA256, Alg.RSA_PKCS1_SHA384, Alg.RSA_PKCS1_SHA512,
})


class OpensslResource(Resource):
    kind = "openssl"

    def __init__(self, name: str = "openssl",
                 capabilities: frozenset[Capability] = ALL_CAPABILITIES,
                 max_inflight: int = DEFAULT_MAX_INFLIGHT, *,
                 thread_threshold_bytes: int = 256 * 1024,
                 threads: int | None = None):
        super().__init__(name, capabilities, max_inflight)
        self.thread_threshold_bytes = thread_threshold_bytes
        # Limits threads used by this resource (not trio's global pool).
        # One thread per slot by default: with fewer (say one per core) the
        # RSA signatures of a batch complete one by one and each completion
        # wakes the sleeping driver (measured: 0.28-0.56 notifications per
        # RSA request with 2 threads, 0.07 with one per slot).
        self._limiter = trio.CapacityLimiter(threads or max(1, max_inflight))
        self.executed = 0
        self.threaded = 0

    def _wants_thread(self, job: CryptoJob) -> bool:
        if job.op is Op.SIGN:
            return job.alg in _THREADED_SIGN_ALGS
        return len(job.src) >= self.thread_threshold_bytes

    async def execute(self, job: CryptoJob) -> bytes:
        self.executed += 1
        if self._wants_thread(job):
            self.threaded += 1
            return await trio.to_thread.run_sync(perform, job, limiter=self._limiter)
        # Inline: a checkpoint first so a burst of small jobs still lets other
        # tasks (the poll loop, other devices) run between them.
        await trio.lowlevel.checkpoint()
        return perform(job)

    def runs_inline(self, job: CryptoJob) -> bool:
        return not self._wants_thread(job)

    def execute_inline(self, job: CryptoJob) -> bytes:
        self.executed += 1
        return perform(job)
