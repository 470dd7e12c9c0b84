"""The engine-backend's poll loop: one per device, serving every frontend.

Theory of operation
-------------------
Frontends (proxy workers) attach over a unix socket. For each, the backend
creates a *frontend region* (``vcrypto.engine.contract``: header, trans ring, request slots,
opdone records, data chunks) in a memfd, registers it with the device (the
host maps it: requests are served in place, zero copy), and sends the fd
with the backend's *shared region* (sleep flag, device state, session
cache) and its doorbell eventfd. The frontend sends its own eventfd.

One single-threaded poll loop does all the work:

1. drain every attached trans ring, round-robin, at most ``ring_quota``
   entries per ring per pass (fairness: a busy worker cannot starve the
   others); decode and validate each slot; resolve its session (lazily
   (re)created at the device; a stateless AEAD slot, ``key_len`` > 0, has
   none, and no refcount: its key goes to the host with the request);
   refcount +1 per request on a session;
2. batch into the device on "full or deadline": ``batch_max`` requests, or
   the deadline after the first one. The deadline adapts to the arrival
   rate: a partial batch is held only while an EWMA of the gap between
   arrivals says the next request comes before the batch's deadline
   (``batch_deadline_us`` after its first request); a trickle goes out at
   once. While a batch is held the loop sleeps to its deadline without
   setting ``backend_sleeping`` (no doorbell per arrival). 0 (the default)
   flushes at the end of every drain pass;
3. drain completions, write slot status, bump opdone counters, refcount -1
   (session requests);
   a frontend whose opdone completed gets one eventfd write per pass, and
   only if its ``frontend_waiting`` flag says its waiter is blocked;
4. when a pass finds nothing while requests are in flight at the device,
   sleep on the device's completion call for at most ``inflight_hold_us``
   *without* setting ``backend_sleeping``: frontends submitting meanwhile
   ring no doorbell, and what they pushed is taken at that wake, together
   (at saturation the device is never idle, so arrivals meet in batches
   and doorbells vanish; idle or a lone request: nothing is in flight and
   the doorbell path below wakes the loop at once);
5. when a pass finds nothing: poll again only while requests are in flight
   above ``poll_inflight_threshold`` and within ``poll_budget_us`` of the last
   work (0 on machines with <= 2 cores: notes/ipc-costs.md measured
   busy-polling as catastrophic there); otherwise set ``backend_sleeping``,
   arm the device's completion notification, fence, re-check the rings, and
   block in epoll on doorbell + device call fd + control sockets. Never a
   dead loop at idle.

The store->load handshakes (frontend: push, fence, read ``backend_sleeping``;
backend: set ``backend_sleeping``, fence, re-check rings) use
``vcrypto.shm.ring.full_fence`` so no wake-up is lost.

Stateless AEAD: a slot with a ``key_len`` carries a connection's traffic
key (the frontend's own region); it names no session, takes no reference and
goes to the device as a virtio-crypto stateless request, when the device
negotiated it (``stateless_aead`` in the shared region tells frontends;
``--aead-sessions`` turns it off). So a connection costs no control message
and no session create/close round trip on this loop.

Sessions: the backend owns the session table. ``open`` creates (or finds) a
session by canonical metadata, inserts it in the shared cache, refcount +1
for the frontend; ``acquire`` (+1) follows a frontend's cache hit;
``release`` -1 (after taking what that frontend's ring already holds, so a
release never overtakes requests pushed before it); each request holds +1
while in flight. At zero the cache
entry is removed and the device session closed. A frontend that disconnects
drops all its references; its region is freed once its in-flight requests
are done.

CryptoDevice loss: every in-flight request completes with DEVICE_LOST (the
frontend redoes it in-process), ``device_up`` is cleared (frontends compute
in-process meanwhile), and the loop retries the attach every
``host_retry_s`` (or twice as long as a failed attempt blocked it); on
success, regions are re-registered, ``device_up`` set, and sessions
re-created at the device on first use. A lost device may not be dead (a
hung host resumes and writes outputs in place), so the frontends that had
requests there are dropped at the top of the next pass: they reattach with
fresh regions, and the old ones are never reused.

Host stall: a host that hangs without dying closes no socket. The oldest
request in flight (``_tokens`` is in take order) outstanding for
``stall_timeout_s`` with no completion meanwhile, or a control request
unanswered within the control bound (``CryptoDeviceStalled``), fails the device
as above and counts ``host_stalls``; a host failed as hung is probed with
attaches bounded by ``stall_timeout_s`` (the loop waits for them). The
host's reorder layer may hold completions behind a slow earlier request
(at most its queue's worth of service time): the deadline must cover it.

Session loss: a device that answers a request "unknown session" (host
INVSESS) lost the session, which is not the request's fault: the backend
recreates the device session (once for all the requests that went with the
lost id) and redoes each request once; lost again, the request goes back as
DEVICE_ERROR and the frontend redoes it in-process.

This module is the data plane (the loop, rings, batches, device, session
loss, session create/destroy). The control plane -- accepting frontends,
attach, the control messages and per-frontend refcounts, dropping a
frontend -- is the backend's ``ControlPlane`` (``_control_plane``).
"""
from __future__ import annotations

import collections
import dataclasses
import os
import selectors
import socket
import logging
import time
from collections.abc import Callable

from vcrypto._log import event
from vcrypto._unixsock import SocketAccess, bind_unix_listener
from vcrypto.shm.region import Region
from vcrypto.shm.ring import full_fence

from vcrypto.ops import AEAD_KEY_BYTES

from ..contract import (BackendRegion, BadSlotError, CacheGeometry, Geometry, LayoutError,
                        SessionMeta, SlotStatus)
from ..contract._session_cache import AEAD_OPS
from ._control_plane import ControlPlane, FrontendConn
from ._device import (CryptoDevice, CryptoDeviceError, CryptoDeviceStalled, DeviceRequest,
                      SessionRejected)
from ._metrics import BackendStats
from ._sessions import BackendSessionTable, Session
from ._status import backend_status

log = logging.getLogger("vcrypto.engine.backend")


@dataclasses.dataclass
class BackendConfig:
    socket_path: str
    host_socket: str | None = None
    socket_access: SocketAccess = SocketAccess()   # mode/group of socket_path (who may attach)
    geometry: Geometry = Geometry()
    cache: CacheGeometry = CacheGeometry()
    batch_max: int = 32
    batch_deadline_us: float = 0.0   # max hold of a partial batch (adaptive below it)
    # While requests are in flight at the device, sleep this long at most
    # without advertising ``backend_sleeping``: arrivals meanwhile ring no
    # doorbell and are taken at the next completion wake (or this bound),
    # together. 0: always advertise (a doorbell per arrival while asleep).
    inflight_hold_us: float = 500.0
    poll_budget_us: float = 0.0 if (os.cpu_count() or 1) <= 2 else 50.0
    poll_inflight_threshold: int = 8
    ring_quota: int = 32
    host_retry_s: float = 0.25
    # The oldest request at the host outstanding this long with no
    # completion meanwhile: the host is hung (SIGSTOP, a deadlock) and is
    # failed like a dead one. ~4x the worst outstanding time of any request
    # under a 2 x 256-slot RSA-2048 burst on the loaded 2-core box (0.77 s;
    # 1.5 s with 4 x 256; bench/engine_latency_tail.py), and well under the
    # TLS handshake timeout (10 s) even doubled for the frontends.
    stall_timeout_s: float = 3.0
    backstop_s: float = 0.05
    control_send_timeout_s: float = 1.0
    # Traffic keys travel in their slots as stateless AEAD requests when the
    # device takes them; False: as host sessions (the path for hosts without it).
    stateless_aead: bool = True


class Backend:
    def __init__(self, cfg: BackendConfig, device_factory: Callable[[], CryptoDevice]):
        self.cfg = cfg
        self.stats = BackendStats()
        self._factory = device_factory
        self.device: CryptoDevice | None = None
        self._epoch = 0
        self._next_retry = 0.0
        self._sel = selectors.DefaultSelector()
        # frontends can map it read-only only (no worker rewrites the cache)
        self._shm = Region.create("engine-shared", cfg.cache.region_bytes, peers_read_only=True)
        self.shared = BackendRegion(self._shm.buf, cfg.cache, create=True)
        self._doorbell = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        # a stale socket left by a killed backend is replaced; a live one is an error
        listener = bind_unix_listener(cfg.socket_path, access=cfg.socket_access)
        listener.setblocking(False)
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._sel.register(listener, selectors.EVENT_READ, ("listen", None))
        self._sel.register(self._doorbell, selectors.EVENT_READ, ("doorbell", None))
        self._sel.register(self._wake_r, selectors.EVENT_READ, ("wake", None))
        self.control = ControlPlane(self, self._sel, listener)
        self._rr = 0
        self.sessions = BackendSessionTable(self.shared.cache, self.stats)
        self._batch: list[DeviceRequest] = []
        self._batch_deadline = 0.0
        # token -> (frontend, request, session, taken_ns, device sid it went with)
        self._tokens: dict[int, tuple] = {}
        self._redone: set[int] = set()   # tokens already redone once after a session loss
        self._next_token = 1
        self._to_wake: set[FrontendConn] = set()
        self._exposed: set[FrontendConn] = set()   # to drop: a lost device may still write them
        self._stall_check_ns = 0        # last _check_stall, and where ages restart (see there)
        self._stall_from_ns = 0
        self._progress_ns = 0           # last completion from the device
        self.host_hung = False          # the device was last lost as hung (CryptoDeviceStalled)
        self._last_work = 0.0
        self._last_drained = 0
        self._device_full = False
        self._last_arrival = 0.0
        self._gap_s: float | None = None
        self._unavailable_logged = False
        # stop() before run() (a SIGTERM right after READY=1) must still stop it
        self._stop_requested = False
        self._stateless = False     # this device attach takes stateless AEAD requests
        self.started_s = time.monotonic()
        # Status requests from the admin thread (``_admin``): a callback each,
        # answered on this thread at the top of the next pass (deque: append
        # and popleft are safe across threads).
        self._status_asks: collections.deque[Callable[[dict | None, BaseException | None], None]] = \
            collections.deque()

    # -- lifecycle ---------------------------------------------------------------

    def stop(self) -> None:
        self._stop_requested = True
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass

    def close(self) -> None:
        self.control.close()
        if self.device is not None:
            self.device.close()
        self._sel.close()
        self._wake_r.close()
        self._wake_w.close()
        os.close(self._doorbell)
        self.shared.release()
        self._shm.close()
        try:
            os.unlink(self.cfg.socket_path)
        except OSError:
            pass

    def run(self) -> None:
        self._connect_device()
        while not self._stop_requested:
            if self._status_asks:
                self._answer_status()
            if self._exposed:
                self._retire_exposed()
            if self.device is None and time.monotonic() >= self._next_retry:
                self._connect_device()
            elif self._tokens and self.device is not None:
                self._check_stall()
            if self._work_pass():
                self._last_work = time.monotonic()
                self._handle(self._sel.select(0))
                continue
            now = time.monotonic()
            timeout = None
            if self._batch and self._device_full:
                timeout = None  # back-pressure: sleep until the device completes some
            elif self._batch:
                # Holding a partial batch: sleep to its deadline without
                # advertising it, so frontends do not ring for every arrival;
                # the deadline's pass takes whatever arrived meanwhile.
                timeout = self._batch_deadline - now
                if timeout <= 0:
                    continue  # the next pass flushes it
                self._sleep(timeout, advertise=False)
                continue
            elif self._should_poll(now):
                self.stats.poll_passes += 1
                self._handle(self._sel.select(0))
                continue
            elif self._tokens and self.device is not None and self.cfg.inflight_hold_us > 0:
                # Completions are coming and will wake us (the device's call):
                # new arrivals wait for that wake, bounded, without a doorbell
                # each -- at saturation they meet in one batch. With nothing in
                # flight (idle, a lone request) we advertise and a doorbell
                # wakes us at once: an idle proxy never waits for this.
                self.stats.inflight_holds += 1
                self._sleep(self.cfg.inflight_hold_us / 1e6, advertise=False)
                continue
            self._sleep(timeout)

    def _should_poll(self, now: float) -> bool:
        """High load = many requests in flight at the device (completions are
        coming) or the last drain pass took many requests (arrivals are
        dense): then the next work is likely within the budget and a sleep
        plus doorbell would cost more than it saves (§8a, QAT's heuristic)."""
        budget = self.cfg.poll_budget_us / 1e6
        if budget <= 0 or now - self._last_work >= budget:
            return False
        threshold = self.cfg.poll_inflight_threshold
        return len(self._tokens) >= threshold or self._last_drained >= threshold

    def _sleep(self, timeout: float | None, *, advertise: bool = True) -> None:
        """Block in epoll. ``advertise``: set ``backend_sleeping`` so frontends
        ring the doorbell for new work (not while holding a batch to its
        deadline: then arrivals wait for the deadline's pass)."""
        sh = self.shared
        if advertise:
            sh.backend_sleeping = 1
        armed = self.device.arm_notify() if self.device is not None else True
        full_fence()  # flag/notification stores before the ring and used-ring loads
        if (not armed or (self.device is not None and self.device.has_completions())
                or (advertise and any(fe.region is not None and not fe.region.ring.empty()
                                      for fe in self.control.order))):
            sh.backend_sleeping = 0
            if self.device is not None:
                self.device.disarm_notify()
            return
        if self._tokens:
            timeout = self.cfg.backstop_s if timeout is None else min(timeout, self.cfg.backstop_s)
        if self.device is None and self.cfg.host_socket is not None:
            wait = max(0.0, self._next_retry - time.monotonic())
            timeout = wait if timeout is None else min(timeout, wait)
        events = self._sel.select(timeout)
        sh.backend_sleeping = 0
        if self.device is not None:
            self.device.disarm_notify()
        self.stats.sleeps += 1
        self._handle(events)

    # -- device ----------------------------------------------------------------

    def _connect_device(self) -> None:
        t0 = time.monotonic()
        try:
            dev = self._factory()
            for fe in self.control.order:
                if fe.shm is not None:
                    dev.register_region(fe.fid, fe.shm)
        except CryptoDeviceError as exc:
            # Backoff: an attempt that blocked the loop (a hung host accepts
            # the connection and never answers) is retried only after twice
            # as long, so the loop keeps serving frontends most of the time.
            now = time.monotonic()
            self._next_retry = now + max(self.cfg.host_retry_s, 2 * (now - t0))
            if not self._unavailable_logged:  # once per outage, not per retry
                self._unavailable_logged = True
                event(log, "warning", "device_unavailable", retry_every_s=self.cfg.host_retry_s, error=str(exc))
            return
        self._unavailable_logged = False
        self.host_hung = False
        event(log, "info", "device_attached")
        self.device = dev
        self._epoch += 1
        self.stats.device_attaches += 1
        if dev.call_fd is not None:
            self._sel.register(dev.call_fd, selectors.EVENT_READ, ("call", None))
        if dev.watch_fd is not None:
            self._sel.register(dev.watch_fd, selectors.EVENT_READ, ("devwatch", None))
        self._stateless = self.cfg.stateless_aead and dev.stateless_aead
        self.shared.set_device(True, stateless_aead=self._stateless)

    def _device_failed(self, exc: BaseException) -> None:
        event(log, "error", "device_lost", error=str(exc))
        self.stats.device_down_events += 1
        self.host_hung = isinstance(exc, CryptoDeviceStalled)
        if self.host_hung:
            self.stats.host_stalls += 1
        self._exposed.update(fe for fe in self.control.order if fe.inflight)
        self.shared.set_device(False)
        dev, self.device = self.device, None
        if dev is not None:
            # The device's own counters go with it: keep its share so the
            # exported host_kicks/host_calls totals never go backwards.
            self.stats.closed_host_kicks += getattr(dev, "kicks", 0)
            self.stats.closed_host_calls += getattr(dev, "calls", 0)
            for fd in (dev.call_fd, dev.watch_fd):
                if fd is not None:
                    try:
                        self._sel.unregister(fd)
                    except (KeyError, ValueError):
                        pass
            try:
                dev.close()
            except Exception as close_exc:  # noqa: BLE001 - best effort on a dead device
                event(log, "warning", "device_close_failed", error=repr(close_exc))
        self.sessions.forget_device()
        # Every request taken from a ring is in _tokens (batched or at the
        # device): all of them go back to their frontends for in-process redo.
        failed = [(tok, SlotStatus.DEVICE_LOST, 0) for tok in self._tokens]
        self._batch.clear()
        self._device_full = False
        self.stats.device_errors += len(failed)
        self._complete(failed)
        self._next_retry = time.monotonic() + self.cfg.host_retry_s

    def _check_stall(self) -> None:
        """Fail a hung host (SIGSTOP, deadlock): its oldest request
        (``_tokens`` is in take order) outstanding past ``stall_timeout_s``
        with no completion meanwhile. The age counts from the later of the
        request's take and the last completion, so a deep backlog in front
        of a host that keeps completing (many frontends' slots queued behind
        its queue) is never taken for a hang; a hung host completes nothing.
        (A control request is bounded on its own: ``CryptoDeviceStalled``.)
        Only time this loop ran counts: after a gap in its own checks (this
        process was stopped or starved) ages restart, so a resumed backend
        does not blame a host that kept working."""
        now = time.monotonic_ns()
        if now - self._stall_check_ns > max(0.25, self.cfg.stall_timeout_s / 4) * 1e9:
            self._stall_from_ns = now
        self._stall_check_ns = now
        taken_ns = next(iter(self._tokens.values()))[3]
        age = (now - max(taken_ns, self._progress_ns, self._stall_from_ns)) / 1e9
        # completions waiting to be reaped: the host is working (this pass reaps them)
        if age > self.cfg.stall_timeout_s and not self.device.has_completions():
            self._device_failed(CryptoDeviceStalled(
                f"vcrypto-host stalled: oldest request outstanding {(now - taken_ns) / 1e9:.2f}s, "
                f"none completed for {age:.2f}s (stall_timeout_s {self.cfg.stall_timeout_s}s), "
                f"{len(self._tokens)} in flight"))

    def _retire_exposed(self) -> None:
        """Drop the frontends that had requests at a lost device. A device
        that is gone may not be dead (a stopped host resumes and writes
        those requests' outputs in place): their regions must never be
        reused, so each frontend reattaches with a fresh one. Deferred to
        the top of the loop: a device can fail mid-pass, while ``_order``
        is being iterated."""
        exposed, self._exposed = self._exposed, set()
        for fe in exposed:
            if fe.alive:
                event(log, "warning", "frontend_dropped", frontend=fe.fid, frontend_pid=fe.pid,
                      reason="the lost device may still write its region")
                self.control.drop(fe)

    def _device_sid(self, sess: Session) -> int:
        if sess.device_sid is None or sess.epoch != self._epoch:
            sess.device_sid = self.device.create_session(sess.meta)
            sess.epoch = self._epoch
        return sess.device_sid

    # -- for the control plane (its DataPlane protocol) ------------------------------

    @property
    def geometry(self) -> Geometry:
        return self.cfg.geometry

    @property
    def control_send_timeout_s(self) -> float:
        return self.cfg.control_send_timeout_s

    def shared_fds(self) -> tuple[int, int]:
        """What a frontend gets at attach besides its region: the shared
        region's memfd and the doorbell eventfd."""
        return self._shm.fd, self._doorbell

    def register_region(self, fe: FrontendConn) -> None:
        if self.device is not None:
            try:
                self.device.register_region(fe.fid, fe.shm)
            except CryptoDeviceError as exc:
                self._device_failed(exc)

    def unregister_region(self, fe: FrontendConn) -> None:
        if self.device is not None:
            try:
                self.device.unregister_region(fe.fid)
            except CryptoDeviceError as exc:
                self._device_failed(exc)

    def open_session(self, refs: dict[int, int], meta: SessionMeta) -> dict:
        """Find or create the session for ``meta``; +1 reference in ``refs``
        (a frontend's). The control reply's fields."""
        canonical = meta.canonical()
        sess = self.sessions.find(canonical)
        if sess is not None:
            self.sessions.ref(refs, sess)
            return {"ok": True, "sid": sess.sid, "hit": True}
        sess = self.sessions.new(meta, canonical)
        if self.device is not None:
            try:
                self._device_sid(sess)  # validated at create (§8a: strict session protocol)
            except SessionRejected as exc:
                return {"ok": False, "kind": "rejected", "detail": str(exc)}
            except CryptoDeviceError as exc:
                self._device_failed(exc)
        self.sessions.add(sess)
        self.sessions.ref(refs, sess)
        return {"ok": True, "sid": sess.sid, "hit": False}

    def unref(self, sess: Session) -> None:
        """-1 reference; at zero the session leaves the cache and the device."""
        if not self.sessions.unref(sess):
            return
        if sess.device_sid is not None and self.device is not None and sess.epoch == self._epoch:
            try:
                self.device.close_session(sess.device_sid)
            except CryptoDeviceError as exc:
                self._device_failed(exc)

    # -- the work pass -------------------------------------------------------------

    def _work_pass(self) -> bool:
        n = self._drain_rings()
        now = time.monotonic()
        if n:
            self._last_drained = n
            # EWMA of the time between arriving requests, for the batch hold.
            if self._last_arrival:
                gap = (now - self._last_arrival) / n
                self._gap_s = gap if self._gap_s is None else 0.8 * self._gap_s + 0.2 * gap
            self._last_arrival = now
        if self._batch and (len(self._batch) >= self.cfg.batch_max
                            or now >= self._batch_deadline or not self._worth_holding()):
            self._flush()
        m = self._reap()
        self._wake_frontends()
        return n + m > 0

    def _drain_rings(self) -> int:
        order = self.control.order
        if not order:
            return 0
        total = 0
        k = len(order)
        start = self._rr % k
        self._rr += 1
        now_ns = time.monotonic_ns()
        for j in range(k):
            fe = order[(start + j) % k]
            if fe.alive and fe.region is not None:
                total += self._take_some(fe, now_ns)
        return total

    def take_pending(self, fe: FrontendConn) -> None:
        """Take everything ``fe`` has pushed so far (ordering against a
        control message it sent afterwards); the next pass flushes it."""
        now_ns = time.monotonic_ns()
        while fe.alive and fe.region is not None and self._take_some(fe, now_ns):
            pass

    def _take_some(self, fe: FrontendConn, now_ns: int) -> int:
        """Take up to ``ring_quota`` requests from ``fe``'s ring; how many."""
        try:
            idxs = fe.region.ring.pop_many(self.cfg.ring_quota)
        except LayoutError as exc:  # corrupt ring counters: that frontend is broken
            event(log, "warning", "frontend_dropped", frontend=fe.fid, frontend_pid=fe.pid, reason=str(exc))
            self.control.drop(fe)
            return 0
        for i in idxs:
            self._take(fe, i, now_ns)
        return len(idxs)

    def _take(self, fe: FrontendConn, i: int, now_ns: int) -> None:
        region = fe.region
        self.stats.requests += 1
        try:
            req = region.read_request(i)
        except BadSlotError as exc:
            self.stats.bad_requests += 1
            self._finish_bad(fe, i, exc.opdone, SlotStatus.BAD_REQUEST)
            return
        if req.key_len:
            # Stateless AEAD: the traffic key is in the slot (this frontend's
            # own region); no session, no refcount, no control message.
            if req.op not in AEAD_OPS or AEAD_KEY_BYTES[req.alg] != req.key_len:
                self.stats.bad_requests += 1
                self._finish_bad(fe, i, req.opdone, SlotStatus.INVALID)
                return
            sess = None
            self.stats.stateless_requests += 1
        else:
            sess = self.sessions.get(req.session_id)
            # Only a session this frontend holds a reference on (opened or
            # acquired): session ids are small integers, and another worker's
            # session may hold a connection's traffic key or a keyless signing key.
            if (sess is None or sess.meta.op is not req.op or sess.meta.alg is not req.alg
                    or not fe.refs.get(sess.sid)):
                self.stats.bad_requests += 1
                self._finish_bad(fe, i, req.opdone, SlotStatus.INVALID)
                return
            self.sessions.ref(None, sess)
        token = self._next_token
        self._next_token += 1
        fe.inflight += 1
        self.stats.inflight_by_op[req.op] += 1
        self._tokens[token] = (fe, req, sess, now_ns, -1)
        self.stats.queue_ns_sum += max(0, now_ns - req.submit_ns)
        if self.device is None:
            self.stats.device_errors += 1
            self._complete([(token, SlotStatus.DEVICE_LOST, 0)])
            return
        if sess is None:
            if not self._stateless:   # (frontends read it in the shared region)
                self._complete([(token, SlotStatus.NOT_SUPPORTED, 0)])
                return
            dsid = 0
        else:
            try:
                dsid = self._device_sid(sess)
            except SessionRejected:
                self._complete([(token, SlotStatus.INVALID, 0)])
                return
            except CryptoDeviceError as exc:
                self._device_failed(exc)
                return
        self._tokens[token] = (fe, req, sess, now_ns, dsid)
        if not self._batch:
            self._batch_deadline = time.monotonic() + self.cfg.batch_deadline_us / 1e6
        self._batch.append(DeviceRequest(token, fe.fid, region, req, dsid))

    def _worth_holding(self) -> bool:
        """Hold a partial batch only while, at the current arrival rate, the
        next request is expected before the batch's deadline (at most
        ``batch_deadline_us`` after its first request): the hold adapts to the
        rate -- a trickle is sent at once, a dense stream is batched, and no
        request waits longer than the deadline."""
        if self.cfg.batch_deadline_us <= 0 or self._gap_s is None:
            return False
        return self._gap_s <= self._batch_deadline - time.monotonic()

    def _finish_bad(self, fe: FrontendConn, i: int, opdone: int | None, status: SlotStatus) -> None:
        fe.region.complete(i, status)
        if opdone is not None and fe.region.opdones.bump(opdone):
            self._to_wake.add(fe)

    def _flush(self) -> None:
        batch, self._batch = self._batch, []
        self.stats.record_batch([r.req.op for r in batch])
        try:
            n = self.device.submit(batch)
        except CryptoDeviceError as exc:
            self._batch = batch
            self._device_failed(exc)
            return
        if n < len(batch):  # device queue full: keep the rest until it has room
            self._batch = batch[n:]
            self._batch_deadline = time.monotonic()
            self._device_full = True
            self.stats.device_full += 1

    def _reap(self) -> int:
        if self.device is None or not self._tokens:
            return 0
        try:
            done = self.device.completions()
        except CryptoDeviceError as exc:
            self._device_failed(exc)
            return 1
        if done:
            self._device_full = False
            self._progress_ns = time.monotonic_ns()
            self._complete(done)
        return len(done)

    def _complete(self, done) -> None:
        now_ns = time.monotonic_ns()
        st = self.stats
        for token, status, dst_len in done:
            if status is SlotStatus.SESSION_LOST:
                status = self._session_lost(token)
                if status is None:
                    continue        # resubmitted on a recreated session
            entry = self._tokens.pop(token, None)
            if entry is None:
                continue
            if self._redone:
                self._redone.discard(token)
            fe, req, sess, t_ns, _dsid = entry
            st.completed += 1
            st.exec_ns_sum += now_ns - t_ns
            st.timed += 1
            st.inflight_by_op[req.op] -= 1
            fe.inflight -= 1
            if fe.alive:
                fe.region.complete(req.slot, status, dst_len)
                if fe.region.opdones.bump(req.opdone):
                    self._to_wake.add(fe)
            elif fe.inflight == 0:
                self.control.free_region(fe)
            if sess is not None:
                self.unref(sess)

    def _session_lost(self, token: int) -> SlotStatus | None:
        """The device no longer knows the session a request went with (host
        restarted between a cache hit and the request, a session dropped at
        the host): not the request's fault. Recreate the device session and
        resubmit the request once (None); lost again, the frontend redoes it
        in-process (DEVICE_ERROR), which gives the authoritative answer."""
        entry = self._tokens.get(token)
        if entry is None:
            return SlotStatus.DEVICE_ERROR
        fe, req, sess, t_ns, dsid = entry
        if sess is None or token in self._redone or not fe.alive or self.device is None:
            self.stats.device_errors += 1
            return SlotStatus.DEVICE_ERROR
        if sess.device_sid == dsid and sess.epoch == self._epoch:
            # The first completion to report this sid lost; requests that
            # went with it too find the session already recreated.
            sess.device_sid = None
            self.stats.sessions_lost += 1
        try:
            new_sid = self._device_sid(sess)
        except SessionRejected:
            return SlotStatus.INVALID
        except CryptoDeviceError as exc:
            self._device_failed(exc)   # completes every token, this one included
            return None
        self.stats.session_lost_redos += 1
        self._redone.add(token)
        self._tokens[token] = (fe, req, sess, t_ns, new_sid)
        if not self._batch:
            self._batch_deadline = time.monotonic()   # flushed on the next pass
        self._batch.append(DeviceRequest(token, fe.fid, fe.region, req, new_sid))
        return None

    def _wake_frontends(self) -> None:
        if not self._to_wake:
            return
        full_fence()  # opdone stores before the frontend_waiting loads
        for fe in self._to_wake:
            if fe.alive and fe.region.frontend_waiting:
                try:
                    os.eventfd_write(fe.efd, 1)
                    self.stats.calls += 1
                except OSError:
                    pass
        self._to_wake.clear()

    # -- events ----------------------------------------------------------------------

    def _handle(self, events) -> None:
        for key, _mask in events:
            kind, fe = key.data
            if kind == "doorbell":
                try:
                    os.eventfd_read(self._doorbell)
                except BlockingIOError:
                    pass
                self.stats.kicks_doorbell_wakes += 1
            elif kind == "call":
                if self.device is not None:
                    try:
                        self.device.ack_call()
                    except CryptoDeviceError as exc:
                        self._device_failed(exc)
            elif kind == "devwatch":
                if self.device is not None:
                    try:
                        self.device.watch_event()
                    except CryptoDeviceError as exc:
                        self._device_failed(exc)
            elif kind == "listen":
                self.control.accept()
            elif kind == "ctl":
                self.control.read(fe)
            elif kind == "wake":
                try:
                    self._wake_r.recv(64)
                except BlockingIOError:
                    pass


    # -- admin status (``_status``, ``_admin``) ----------------------------------------

    def ask_status(self, deliver: Callable[[dict | None, BaseException | None], None]) -> None:
        """From another thread: have the loop build the status document and
        call ``deliver(doc, error)`` on the loop's thread (within one pass)."""
        self._status_asks.append(deliver)
        try:
            self._wake_w.send(b"s")
        except OSError:   # the wake socket is full: the loop is awake anyway
            pass

    def _answer_status(self) -> None:
        try:
            doc, error = backend_status(self), None
        except Exception as exc:  # noqa: BLE001 - a status bug must not stop the data plane
            doc, error = None, exc
        while self._status_asks:
            self._status_asks.popleft()(doc, error)

    @property
    def inflight_count(self) -> int:
        """Requests taken from the trans rings and not yet completed."""
        return len(self._tokens)

    @property
    def pending_batch(self) -> int:
        """Requests held in the batch, not yet submitted to the device."""
        return len(self._batch)

    @property
    def device_full(self) -> bool:
        """The device's queue could not take the last batch whole (back-pressure)."""
        return self._device_full

    def snapshot(self) -> dict:
        looked_up = self.stats.cache_hits + self.stats.cache_misses
        return {
            **self.gauges(),
            # for the control-socket view only: Prometheus gets hits and misses
            "cache_hit_ratio": self.stats.cache_hits / looked_up if looked_up else 0.0,
            **self.stats.as_dict(),
            "sessions": self.sessions.refcounts(),
            "cache_entries": self.shared.cache.live_entries(),
            "device_up": self.device is not None,
            "device_sessions": self.device.session_count if self.device is not None else 0,
            "frontends": len(self.control.frontends),
            "inflight": len(self._tokens),
            "device_stats": self._device_stats(),
        }

    def gauges(self) -> dict[str, float]:
        """Live values for the metrics endpoint (read at scrape time, from the
        exporter thread: plain reads of ints the loop owns). The host_* counts
        are the current device's plus every closed device's."""
        st = self.stats
        dev = self.device
        return {
            "sessions": len(self.sessions),
            "frontends": len(self.control.frontends),
            "device_up": 1 if dev is not None else 0,
            "host_kicks": st.closed_host_kicks + getattr(dev, "kicks", 0),
            "host_calls": st.closed_host_calls + getattr(dev, "calls", 0),
        }

    def _device_stats(self) -> dict | None:
        """The host's own counters (vendor GET_STATS), when a host is attached."""
        stats = getattr(self.device, "stats", None)
        if stats is None:
            return None
        try:
            return stats()
        except CryptoDeviceError as exc:
            self._device_failed(exc)
            return None
