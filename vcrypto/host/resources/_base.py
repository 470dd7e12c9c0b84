"""The seam between the host's data path and the crypto resources.

The data path (``vcrypto.host``) validates a request read from a data
virtqueue, resolves its session, and hands the scheduler a ``CryptoJob``:
everything a resource needs, as plain bytes, so a job can be pickled to a
worker process or held by an accelerator model. The scheduler picks a capable
``Resource`` and awaits ``Resource.execute(job)``; the bytes it returns are
written into the request's dst buffer in place by the data path.

Errors a resource may raise:
- ``CryptoOpError``: the *request* is bad (tag mismatch on open, a peer public
  key that is not on the curve). Deterministic: retrying elsewhere would fail
  the same way, so it becomes an error status for that request.
- ``ResourceFault``: the *resource* failed (a crashed worker, an injected
  error, a hang cut off by the scheduler's timeout). The scheduler retries the
  job on another capable resource (bounded) and marks this one unhealthy.
"""
from __future__ import annotations

import abc
import dataclasses
import enum

from vcrypto.ops import ALL_CAPABILITIES, Alg, Capability, Op


class CryptoOpError(Exception):
    """The request itself is invalid; retrying on another resource cannot help."""

    class Kind(enum.Enum):
        BAD_MESSAGE = "bad_message"      # AEAD tag mismatch
        INVALID_INPUT = "invalid_input"  # bad peer key, bad lengths
        NOT_SUPPORTED = "not_supported"

    def __init__(self, kind: CryptoOpError.Kind, detail: str):
        super().__init__(f"{kind.value}: {detail}")
        self.kind = kind
        self.detail = detail


class ResourceFault(Exception):
    """The resource failed to run the job; another resource may succeed."""


@dataclasses.dataclass(slots=True)   # not frozen: one per request, frozen init is ~8x slower
class CryptoJob:
    """One request, resolved and self-contained.

    ``key`` is the raw AEAD key, or the DER (PKCS#8) private key for SIGN;
    empty for ECDH. ``key_id`` identifies the key material (a digest of it) so
    resources that keep loaded keys (worker processes) can cache them.
    ``seq`` is the request's submission sequence number within its data queue
    (the reorder layer uses it; resources ignore it). ``src`` of an AEAD job
    run inline (``execute_inline``) may be a ``memoryview`` into the driver's
    memory (no copy); every other job gets ``bytes``. ``secret_only``: an
    ECDH request whose dst holds the shared secret alone (the derive-only
    keyed form, ``vcrypto.ops``): every resource kind returns just the secret.
    """

    op: Op
    alg: Alg
    key: bytes
    key_id: bytes
    src: bytes | memoryview
    iv: bytes = b""
    aad: bytes = b""
    seq: int = 0
    secret_only: bool = False

    @property
    def capability(self) -> Capability:
        return (self.op, self.alg)


class Resource(abc.ABC):
    """A crypto resource in the pool: in-process, worker processes, or a model
    of an accelerator. Concurrency is bounded by ``max_inflight``; the
    scheduler never has more than that many ``execute`` calls outstanding."""

    kind: str = "abstract"
    #: Every capability this kind can have; a config may narrow it, never widen it.
    supported: frozenset[Capability] = ALL_CAPABILITIES

    def __init__(self, name: str, capabilities: frozenset[Capability], max_inflight: int):
        self.name = name
        self.capabilities = capabilities
        self.max_inflight = max_inflight

    def can(self, capability: Capability) -> bool:
        return capability in self.capabilities

    async def start(self) -> None:
        """Acquire what the resource needs (processes, threads). Idempotent."""

    async def aclose(self) -> None:
        """Release everything ``start`` acquired."""

    @abc.abstractmethod
    async def execute(self, job: CryptoJob) -> bytes:
        """Run one job; raise ``CryptoOpError`` or ``ResourceFault``."""

    async def probe(self) -> bool:
        """Health probe used to re-admit an unhealthy resource."""
        return True

    # Synchronous fast path. A resource that computes in the host's own
    # thread (``openssl``) can run a small job right where the data path
    # drains the ring: no task, no checkpoint, no cancel scope. That is most
    # of the host's CPU per request (a trio task + scheduler round trip costs
    # several times an AES-GCM seal of a TLS record). The scheduler only asks
    # for it when the job got a slot of this resource at once.

    def runs_inline(self, job: CryptoJob) -> bool:
        """True if ``execute_inline(job)`` is cheap enough to run on the event
        loop's thread without yielding (microseconds, not milliseconds)."""
        return False

    def execute_inline(self, job: CryptoJob) -> bytes:
        """Run ``job`` synchronously (only called when ``runs_inline(job)``);
        raise ``CryptoOpError`` or ``ResourceFault`` like ``execute``."""
        raise NotImplementedError(f"{type(self).__name__} has no inline path")
