"""One data virtqueue served by the host: the adaptive poll loop (DESIGN §6, §8a).

Theory of operation
-------------------
The loop owns the device side of one split virtqueue. Each pass it

1. drains the avail ring: every head is validated (``datapath``), admitted
   to the queue's reorder buffer (its submission sequence number) and
   handed to ``scheduler.submit_now``: a small job on an in-process resource
   runs right there and completes in the pass (no task: the cheap case,
   most of a TLS proxy's records); any other job becomes a task in the
   device nursery awaiting ``scheduler.submit``; an invalid request is
   completed at once with its error status. A pass stops popping after
   ``INLINE_BUDGET_S`` of inline work, so one busy queue delays the other
   devices by at most that much;
2. publishes every completion the reorder buffer has released since the last
   pass — once per drained batch, one ``used.idx`` store — and signals the
   call eventfd only if the driver asked for it (``need_event`` on
   ``used_event`` with EVENT_IDX, else the avail NO_INTERRUPT flag).

When a pass finds nothing, the loop decides between polling and parking:

* ``doorbell`` mode parks at once;
* ``adaptive`` mode keeps polling (a trio checkpoint per pass, so the
  completion tasks and other devices run) for up to ``spin_us`` after the
  last work, but only while the load is high: the last drained batch had at
  least ``batch_threshold`` requests. That is the measured answer to "how is
  high load detected": a full batch means the driver is producing faster than
  one wake per request, so the next request is likely to arrive within a
  spin; a trickle of single requests never spins, so idle CPU stays ≈ 0
  (notes/ipc-costs.md: spinning on 2 cores costs the proxy a third of a core).

Calls: the used ring is published as soon as completions are released (a
polling driver sees them at once); the call eventfd is signalled only when
the driver asked (it is asleep). With ``poll.coalesce_us`` > 0 that call is
held while other requests of the queue are still running, up to the bound,
so a sleeping driver wakes once per batch instead of once per early
finisher (interrupt coalescing; measured: 0.23 -> 0.09 notifications per
request with a 4-slot pool, no effect when the pool runs the whole batch at
once). Default 0: handshake ops should not wait behind a slow neighbour.

Parking = enable kicks (clear used.flags NO_NOTIFY, write ``avail_event``),
fence, re-check the avail ring (a request published between the last drain
and the arm would otherwise never be kicked), then sleep until a kick or a
completion wakes the loop. The loop waits on the kick eventfd itself (no
watcher task), and a pass that completed everything it popped inline parks
at once (the arm's re-check stands in for an empty pass): a wake-up for a
lone request costs one trio scheduling round, not three. Kicks are disabled
again while the loop runs, so a busy driver never pays for a doorbell.

Counters (asserted by tests, exported as metrics): kicks received, calls
sent, polls (passes that checked the ring), sleeps (parks), requests, batches.
"""
from __future__ import annotations

import dataclasses
import enum
import logging
import math
import os
import time

import trio

from vcrypto.host.config import BAD_INPUT_STATUSES
from vcrypto.host.datapath import ChainError, Request, parse_request
from vcrypto.host.memory import GuestMemory
from vcrypto.host.reorder import ReorderBuffer
from vcrypto.host.resources._base import CryptoOpError, ResourceFault
from vcrypto.host.sessions import SessionTable
from vcrypto.ops import CIPHER_BLOCK_BYTES, Op
from vcrypto.shm.ring import full_fence
from vcrypto.shm.virtqueue import SplitVirtqueue
from vcrypto.wire import virtio_crypto as vc

log = logging.getLogger("vcrypto.host.queue")

#: Statuses as virtio-crypto means them, so a driver can tell the request's
#: own fault from the device's: BADMSG for an AEAD tag mismatch, NOTSUPP for
#: an op the device cannot do, ERR for a device failure (every resource
#: attempt faulted) or a request the device could not parse. Input the crypto
#: rejects (INVALID_INPUT: an ECDH peer key off the curve, a session key of
#: the wrong type) is deterministic, another device would answer the same:
#: config ``bad_input_status``: key_rejected by default (for our vendor ECDH
#: op it means "the peer key was rejected"; the engine maps it to INVALID and
#: does not redo it), or err (the engine then redoes it in-process) or badmsg.
_OP_ERROR_STATUS = {
    CryptoOpError.Kind.BAD_MESSAGE: vc.VIRTIO_CRYPTO_BADMSG,
    CryptoOpError.Kind.INVALID_INPUT: vc.VIRTIO_CRYPTO_ERR,
    CryptoOpError.Kind.NOT_SUPPORTED: vc.VIRTIO_CRYPTO_NOTSUPP,
}


#: Longest a drain pass computes inline jobs before it publishes and yields
#: (other devices and queues wait that long at most): 64 ECDSA signatures.
INLINE_BUDGET_S = 0.002
#: A call is held while a drain pass cut short by the budget leaves the rest
#: of the batch in the ring (it is computed in the next passes, at once): the
#: sleeping driver wakes once per batch, as if it had been drained in one
#: pass. Bounded, for a driver that keeps the ring full and sleeps anyway.
CUT_SHORT_HOLD_S = 0.010


_STATUS_LABEL = vc.STATUS_NAMES

#: Cipher requests longer than this are split by the host into pieces of at
#: most this size (the notes' large-request rule: a piece is what one
#: accelerator job takes; CBC state is carried from piece to piece).
#: Chained cipher+MAC requests run whole (the MAC covers the whole text).
PIECE_BYTES = 16 * 1024
_SPLIT_OPS = (Op.CIPHER_ENCRYPT, Op.CIPHER_DECRYPT)


class PollState(enum.Enum):
    """Where the queue's loop is (the admin status reports it): working
    (a pass found requests or completions), spinning (adaptive polling after
    work, no doorbell armed) or parked (kicks enabled, asleep until a kick,
    a completion or a held call's deadline)."""

    WORKING = "working"
    SPINNING = "spinning"
    PARKED = "parked"


class QueueBroken(Exception):
    """The driver corrupted the ring itself (e.g. avail.idx ran ahead by more
    than the queue size): the device is reset by closing its connection."""


class DeviceStats:
    """Counters of one device (summed into the host's metrics)."""

    FIELDS = ("kicks", "calls", "polls", "sleeps", "requests", "batches", "chain_errors",
              "resource_faults", "reorder_held", "split_pieces")

    #: upper bounds of the drained-batch-size histogram buckets
    BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 1024, 32768)

    def __init__(self) -> None:
        for f in self.FIELDS:
            setattr(self, f, 0)
        self.batch_counts = [0] * len(self.BATCH_BUCKETS)   # non-cumulative
        self.batch_sum = 0
        #: (op, alg, status name) -> count
        self.by_op: dict[tuple[str, str, str], int] = {}

    def count(self, op: str, alg: str, status: int) -> None:
        key = (op, alg, _STATUS_LABEL.get(status) or str(status))
        by_op = self.by_op
        by_op[key] = by_op.get(key, 0) + 1

    def as_dict(self) -> dict:
        d = {f: getattr(self, f) for f in self.FIELDS}
        d["by_op"] = {"/".join(k): v for k, v in self.by_op.items()}
        return d

    def count_batch(self, size: int) -> None:
        self.batches += 1
        self.batch_sum += size
        for i, bound in enumerate(self.BATCH_BUCKETS):
            if size <= bound:
                self.batch_counts[i] += 1
                return

    def add(self, other: DeviceStats) -> None:
        for f in self.FIELDS:
            setattr(self, f, getattr(self, f) + getattr(other, f))
        self.batch_counts = [a + b for a, b in zip(self.batch_counts, other.batch_counts)]
        self.batch_sum += other.batch_sum
        for k, v in other.by_op.items():
            self.by_op[k] = self.by_op.get(k, 0) + v


class DataQueue:
    def __init__(self, index: int, vq: SplitVirtqueue, *, kick_fd: int | None,
                 call_fd: int | None, mem: GuestMemory, sessions: SessionTable, scheduler,
                 stats: DeviceStats, fifo: bool, poll, max_request_bytes: int,
                 bad_input_status: str = "key_rejected", stateless_aead: bool = False):
        self.index = index
        self.vq = vq
        self.kick_fd = kick_fd
        self.call_fd = call_fd
        self.mem = mem
        self.sessions = sessions
        self.scheduler = scheduler
        self.stats = stats
        self.reorder: ReorderBuffer[tuple[int, int]] = ReorderBuffer(fifo)
        self.poll = poll
        self.max_request_bytes = max_request_bytes
        # negotiated VIRTIO_CRYPTO_F_AEAD_STATELESS_MODE: header.flag tells the modes apart
        self.stateless_aead = stateless_aead
        self._op_error_status = dict(_OP_ERROR_STATUS)
        self._op_error_status[CryptoOpError.Kind.INVALID_INPUT] = \
            BAD_INPUT_STATUSES[bad_input_status]
        self._released: list[tuple[int, int]] = []
        self._call_from: int | None = None       # used.idx before the first unsignalled publish
        self._call_deadline = math.inf
        self._call_since = 0.0                   # when _call_from was set
        self._coalesce_s = poll.coalesce_us / 1e6
        self._nofd_s = poll.nofd_interval_us / 1e6
        self._park_scope: trio.CancelScope | None = None   # set while parked
        self._nursery: trio.Nursery | None = None
        self.stopped = False
        self.draining = False
        self._cut_short = False   # the last drain pass left published requests in the ring
        self.poll_state = PollState.WORKING

    # -- the loop ----------------------------------------------------------

    async def run(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
        broken: QueueBroken | None = None
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            try:
                await self._loop()
            except QueueBroken as exc:
                broken = exc      # re-raised bare, outside the nursery's exception group
            nursery.cancel_scope.cancel()
        if broken is not None:
            raise broken

    async def _loop(self) -> None:
        vq = self.vq
        vq.device_disable_kicks()
        spin_s = self.poll.spin_us / 1e6
        adaptive = self.poll.mode == "adaptive"
        last_batch = 0
        last_work = time.monotonic()
        while not self.stopped:
            self.stats.polls += 1
            drained = 0 if self.draining else self._drain()
            published = self._publish()
            if self.draining and not self.reorder.in_flight and not self._released:
                self._maybe_call()
                return            # every popped request completed and published
            spinning = adaptive and last_batch >= self.poll.batch_threshold
            if drained or published:
                if drained:
                    last_batch = drained
                    spinning = adaptive and drained >= self.poll.batch_threshold
                last_work = time.monotonic()
                self.poll_state = PollState.WORKING
                if (spinning or self.draining or self._cut_short or self.reorder.in_flight
                        or self.kick_fd is None):
                    await trio.lowlevel.checkpoint()
                    continue
                # Everything popped is completed and published (the inline
                # fast path): park at once. The arm below re-checks the ring
                # after enabling kicks, so a request published meanwhile is
                # still taken; the empty pass a checkpoint would cost (a trio
                # scheduling round, another epoll) is saved on every wake.
            elif spinning and time.monotonic() - last_work < spin_s:
                self.poll_state = PollState.SPINNING
                await trio.lowlevel.checkpoint()
                continue
            # Park on the doorbell (or a completion, or a held call's deadline).
            vq.device_enable_kicks()
            full_fence()          # store avail_event/flags before re-reading avail.idx
            if (not self.draining and self._drain_budget() > 0) or self._released:
                vq.device_disable_kicks()
                await trio.lowlevel.checkpoint()   # other devices run between batches
                continue
            self.stats.sleeps += 1
            last_batch = 0
            deadline = self._call_deadline
            if self.kick_fd is None:
                # SET_VRING_KICK with the no-fd flag: "the back-end must poll
                # the ring" (vhost-user spec); at a bounded rate, not spinning.
                deadline = min(deadline, time.monotonic() + self._nofd_s)
            self.poll_state = PollState.PARKED
            await self._park(deadline)
            self.poll_state = PollState.WORKING
            vq.device_disable_kicks()
            self._maybe_call()

    async def _park(self, deadline: float) -> None:
        """Sleep until a kick, a completion (``_wake``), or ``deadline``.

        The loop waits on the kick eventfd itself (no watcher task): a kick
        wakes this task directly, one trio scheduling round per wake instead
        of two (watcher, then the loop it sets an Event for). A completion
        from a task or ``stop`` cancels the park's scope."""
        fd = self.kick_fd
        with trio.CancelScope(deadline=deadline) as scope:
            self._park_scope = scope
            try:
                if fd is None:
                    await trio.sleep_forever()
                else:
                    await trio.lowlevel.wait_readable(fd)
            except trio.ClosedResourceError:
                self.stopped = True   # the kick fd was closed under us: the ring is going away
                return
            finally:
                self._park_scope = None
        if fd is not None:
            try:
                os.eventfd_read(fd)
                self.stats.kicks += 1
            except BlockingIOError:
                pass                  # woken by a completion or the deadline

    def _wake(self) -> None:
        scope = self._park_scope
        if scope is not None:
            scope.cancel()

    def stop(self) -> None:
        """Stop at once (connection gone): in-flight results are dropped."""
        self.stopped = True
        self._wake()

    def begin_drain(self) -> None:
        """Stop popping new requests; the loop returns once every request it
        already popped has completed and been published (GET_VRING_BASE)."""
        self.draining = True
        self._cut_short = False
        self._wake()

    # -- avail side ----------------------------------------------------------

    def _drain_budget(self) -> int:
        """Heads to pop now: published ones, but never more in flight than the
        queue size. A well-behaved driver cannot exceed that (each in-flight
        chain holds its head); a hostile one that republishes heads without
        consuming the used ring would otherwise grow the host's work without
        bound."""
        pending = self.vq.device_pending_avail()
        if pending > self.vq.num:
            raise QueueBroken(f"queue {self.index}: avail.idx is {pending} ahead "
                              f"(size {self.vq.num})")
        return min(pending, self.vq.num - self.reorder.in_flight)

    def _drain(self) -> int:
        vq = self.vq
        self._cut_short = False
        pending = self._drain_budget()
        if pending <= 0:
            return 0
        stats = self.stats
        submit_now = self.scheduler.submit_now
        deadline = time.perf_counter() + INLINE_BUDGET_S
        drained = 0
        while drained < pending:
            head = vq.device_pop_avail()
            seq = self.reorder.admit()
            drained += 1
            try:
                req = parse_request(vq, head, self.mem, self.sessions, seq,
                                    self.max_request_bytes, self.stateless_aead)
            except ChainError as exc:
                log.info("queue %d: broken chain at head %d: %s", self.index, head, exc)
                stats.chain_errors += 1
                stats.count("invalid", "invalid", vc.VIRTIO_CRYPTO_ERR)
                self._complete(seq, head, 0)
                continue
            if req.error_status is not None:
                log.info("queue %d: request at head %d refused (%s): %s", self.index, head,
                         vc.STATUS_NAMES.get(req.error_status), req.error_detail)
                stats.count("invalid", "invalid", req.error_status)
                self._complete(seq, head, req.finish(req.error_status))
                continue
            # Fast path: the scheduler runs a small in-process job right here
            # (no task, no checkpoint); anything else becomes a task.
            job = req.job
            if job.op in _SPLIT_OPS and len(job.src) > PIECE_BYTES:
                view, job.src = job.src, bytes(job.src)
                if view.__class__ is memoryview:
                    view.release()
                self._nursery.start_soon(self._execute, req, seq, head, None, True)
                continue
            try:
                result = submit_now(job)
            except Exception as exc:
                self._finish(req, seq, head, self._error_status(job, exc), b"")
            else:
                if result.__class__ is bytes:
                    self._finish(req, seq, head, vc.VIRTIO_CRYPTO_OK, result)
                else:
                    if job.src.__class__ is memoryview:
                        # It waits (a task, maybe another process): own bytes,
                        # not a view into driver memory that may be unmapped.
                        view, job.src = job.src, bytes(job.src)
                        view.release()
                    self._nursery.start_soon(self._execute, req, seq, head, result)
            if time.perf_counter() >= deadline:
                # Long enough on the event loop's thread: publish and let other
                # devices run; the rest of the ring is drained next pass.
                self._cut_short = drained < pending
                break
        stats.requests += drained
        stats.count_batch(drained)
        return drained

    def _error_status(self, job, exc: Exception) -> int:
        """The virtio-crypto status for a job that raised ``exc``: BADMSG /
        NOTSUPP for the request's own fault, ERR for a device failure."""
        if isinstance(exc, CryptoOpError):
            return self._op_error_status.get(exc.kind, vc.VIRTIO_CRYPTO_ERR)
        if isinstance(exc, ResourceFault):
            log.warning("queue %d: %s/%s failed on every resource: %s", self.index,
                        job.op.value, job.alg.value, exc)
            self.stats.resource_faults += 1
        else:   # a resource bug must not take the device down
            log.error("queue %d: unexpected error running %s/%s", self.index,
                      job.op.value, job.alg.value, exc_info=exc)
        return vc.VIRTIO_CRYPTO_ERR

    async def _execute(self, req: Request, seq: int, head: int, pending,
                       pieces: bool = False) -> None:
        job = req.job
        try:
            if pieces:
                result = await self._run_pieces(job)
            else:
                result = await self.scheduler.submit(job, pending)
            status = vc.VIRTIO_CRYPTO_OK
        except Exception as exc:
            status, result = self._error_status(job, exc), b""
        except BaseException:     # cancelled: the device is going away
            self.sessions.release(req.session)
            raise
        if self.stopped:
            self.sessions.release(req.session)
            return
        self._finish(req, seq, head, status, result)

    async def _run_pieces(self, job) -> bytes:
        """A cipher request over ``PIECE_BYTES``: pieces of at most that size,
        each its own job with the session's metadata, run in order (the next
        piece's iv is the previous ciphertext block: CBC chaining carried
        across pieces), results joined in order; the first failure fails the
        request."""
        src, iv, out = job.src, job.iv, []
        encrypt = job.op is Op.CIPHER_ENCRYPT
        for off in range(0, len(src), PIECE_BYTES):
            piece = src[off:off + PIECE_BYTES]
            part = await self.scheduler.submit(dataclasses.replace(job, src=piece, iv=iv))
            self.stats.split_pieces += 1
            iv = (part if encrypt else piece)[-CIPHER_BLOCK_BYTES:]
            out.append(part)
        return b"".join(out)

    def _finish(self, req: Request, seq: int, head: int, status: int, result: bytes) -> None:
        """Write the result and status in place, release the session, and
        hand the completion to the reorder buffer."""
        session = req.session
        self.sessions.release(session)
        written = req.finish(status, result)
        op, alg = session.labels
        self.stats.count(op, alg, status)
        self._complete(seq, head, written)

    def _complete(self, seq: int, head: int, written: int) -> None:
        held_before = self.reorder.held_total
        released = self.reorder.complete(seq, (head, written))
        # completions that finished early and waited for an earlier one (FIFO cost)
        self.stats.reorder_held += self.reorder.held_total - held_before
        if released:
            self._released.extend(released)
            self._wake()

    # -- used side -----------------------------------------------------------

    def _publish(self) -> int:
        if not self._released:
            self._maybe_call()
            return 0
        vq = self.vq
        released, self._released = self._released, []
        for head, written in released:
            vq.device_add_used(head, written)
        old, _new = vq.device_publish_used()
        full_fence()              # store used.idx before reading used_event/flags
        if self._call_from is None:
            self._call_from = old
            self._call_since = time.monotonic()
            self._call_deadline = self._call_since + self._coalesce_s
        self._maybe_call()
        return len(released)

    def _maybe_call(self) -> None:
        """Signal the call eventfd for completions published since
        ``_call_from`` if the driver asked for it (used_event / flags).

        A drain pass cut short by ``INLINE_BUDGET_S`` holds the call until the
        rest of its batch is done (at most ``CUT_SHORT_HOLD_S``).

        Interrupt coalescing (``poll.coalesce_us``): while other requests of
        the queue are still running, the call is held until they finish or the
        deadline passes, so a sleeping driver wakes once per batch rather than
        once per early finisher. Published entries are visible at once; a
        polling driver never waits for the call."""
        start = self._call_from
        if start is None:
            return
        vq = self.vq
        if self.call_fd is None or not vq.device_should_call(start, vq.next_used):
            # Not wanted now. A driver arming later re-checks used.idx itself.
            self._call_from = None
            self._call_deadline = math.inf
            return
        now = time.monotonic()
        if self._cut_short and now < self._call_since + CUT_SHORT_HOLD_S:
            return      # the drained batch is still being computed, pass by pass
        if self.reorder.in_flight and now < self._call_deadline:
            return
        os.eventfd_write(self.call_fd, 1)
        self.stats.calls += 1
        self._call_from = None
        self._call_deadline = math.inf
