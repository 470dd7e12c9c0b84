"""The engine frontend: the library every application process loads.

Theory of operation
-------------------
``Frontend`` is trio-native and bound to one trio run. At first use it
attaches to the engine-backend over a unix socket, sending its eventfd and
receiving three fds: its *frontend region* (trans ring, request slots,
opdone records, data chunks; ``vcrypto.engine.contract``), the backend's
*shared region* (sleep flag, device state, session cache; mapped read-only)
and the backend's doorbell.

Many tasks submit at once. ``Frontend.run(session, items)`` is the fiber of
the notes: it takes up to 16 free slots and one opdone record per chunk of
items (pipeline mode), writes inputs into the slots' data chunks, pushes the
slot indices on the trans ring (the process is the ring's single producer:
trio runs one task at a time and the push has no await inside) and suspends
once per opdone. The doorbell is rung by the *kicker* task, once per trio
scheduling batch that submitted anything and only if ``backend_sleeping``
is set: the requests of concurrent connections reach the backend together
and become one device batch (handshake ops of different connections share
batches; notes/ipc-costs.md).
Results are read in place by slot address.

One system task, the *waiter*, watches the process's single eventfd with
``trio.lowlevel.wait_readable``: it sets ``frontend_waiting``, fences, scans
the opdones tasks wait on, and blocks only if none completed (the backend
writes the eventfd only when that flag is set). While the trio loop is
busy (other tasks runnable, or other tasks ran for more than ``BUSY_GAP_NS``
since the waiter's last tick: the loop will not sleep anyway) it instead
scans once per tick with the flag clear, so a busy process costs the
backend no eventfd write per completion (``busy_poll``). A completed opdone
wakes exactly the task that owns it.

Sessions: a connection's AEAD traffic key (not ``shareable``) needs none
while the backend's device takes stateless AEAD (``stateless_aead`` in the
shared region): the key is written into each request's slot (this worker's
own region) and travels to the host with the request (virtio-crypto
stateless mode), so a connection costs no control message and no shared
cache entry. Every other session: a local handle table (canonical metadata
-> handle, local refcount) first; on a miss the shared session cache (MD5 -> sid, confirmed
byte for byte) and an ``acquire`` to the backend; else ``open`` (the backend
creates the session at the host). The backend reference is dropped after
the last local user has been gone ``linger_s`` (so back-to-back connections
reuse the session rather than churn it at the host). The handle table and
its reaper are the frontend's ``SessionHandles`` (``_handles``).

Fallback: if the backend is unreachable, or dies (control socket EOF), or
the host device is down (``device_up`` = 0), requests run in-process with
``cryptography`` and ``stats.fallback_requests`` counts them; in-flight
requests that did not complete are redone in-process. The frontend retries
the attach every ``reconnect_interval_s`` in the background and offloads
again once attached. A forked child notices the pid change and attaches
afresh (it never shares its parent's ring).

Stalls: a backend that hangs without dying (SIGSTOP, a deadlock) closes no
socket. The waiter, which wakes at least every ``backstop_s`` while
requests are out, checks the age of the oldest opdone still at the backend
(``sent_at``, in submit order), counted from its submit or the last
completion, whichever is later; past ``stall_timeout_s`` (or a control
request unanswered for ``control_timeout_s``) it counts ``stats.stalls``,
logs, and detaches: the waiting tasks redo their requests
in-process. The attachment's slots are never reused (the backend or the
host may still write them when they resume); the regions are unmapped once
no task reads them, and the frontend reattaches with a fresh region. The
default sits above the backend's own host deadline
(``BackendConfig.stall_timeout_s``) so a hung *host* is failed by the
backend first.
"""
from __future__ import annotations

import array
import enum
import itertools
import logging
import os
import socket
import time
from collections.abc import Callable, Sequence

import trio

from vcrypto.shm.region import Region
from vcrypto.shm.ring import full_fence

from vcrypto.ops import Op, max_dst_bytes

from ..contract import PIPELINE_DEPTH, InlineOpError, SessionMeta, SlotStatus, control
from ._attachment import Attachment, Detached
from ._handles import EngineSession, EngineUnavailable, SessionHandles
from ._stats import FrontendStats

#: One request: (src, iv, aad).
Item = tuple[bytes, bytes, bytes]
Result = tuple[SlotStatus, bytes]


#: The waiter's tick took this long: other tasks ran meanwhile (a busy loop).
BUSY_GAP_NS = 50_000

#: Frontend deadline: twice the backend's host deadline (3 s), so a hung
#: host is failed by the backend (which keeps serving) before any frontend
#: gives up on the backend itself.
DEFAULT_STALL_TIMEOUT_S = 6.0

_log = logging.getLogger("vcrypto.engine.frontend")


class _State(enum.Enum):
    """What the frontend is doing about attaching (whether it is attached is
    its ``Attachment``'s state)."""
    IDLE = "idle"            # attached, or waiting for the next retry
    ATTACHING = "attaching"  # an attach is in progress
    CLOSED = "closed"        # closed by the application: no reattach


class Frontend:
    def __init__(self, socket_path: str, *, reconnect_interval_s: float = 0.5,
                 linger_s: float = 1.0, attach_timeout_s: float = 2.0,
                 backstop_s: float = 0.05, control_timeout_s: float = 5.0,
                 stall_timeout_s: float = DEFAULT_STALL_TIMEOUT_S, busy_poll: bool = True):
        if not stall_timeout_s > 0:
            raise ValueError(f"stall_timeout_s must be > 0, got {stall_timeout_s}")
        self.stall_timeout_s = stall_timeout_s
        # The waiter polls the opdones instead of arming the eventfd while
        # other tasks of this trio loop are runnable (see ``_waiter``).
        self.busy_poll = busy_poll
        self.socket_path = socket_path
        self.reconnect_interval_s = reconnect_interval_s
        self.attach_timeout_s = attach_timeout_s
        self.backstop_s = backstop_s
        self.control_timeout_s = control_timeout_s
        self.stats = FrontendStats()
        #: Called as ``on_inline(op, redone)`` for each request computed
        #: in-process (``redone``: the device failed or could not do it), at
        #: the moment it runs: an application's metrics count it with the op
        #: it counted as offered to the engine, not a second later.
        self.on_inline: Callable[[Op, bool], None] | None = None
        self._att: Attachment | None = None
        self._gen = 0
        self._retry_at = 0.0
        self._state = _State.IDLE
        self.sessions = SessionHandles(self, self.stats, linger_s)
        self._ids = itertools.count(1)
        self._token = None
        self._first_attach = trio.Event()
        self.last_detach_reason = ""

    # -- sessions (the handle table is ``SessionHandles``) -------------------------------

    async def open_session(self, meta: SessionMeta) -> EngineSession:
        """A handle on the session for ``meta`` (+1 local reference)."""
        if self._token is not trio.lowlevel.current_trio_token():
            await self.start()
        return self.sessions.open(meta)

    async def close_session(self, h: EngineSession, *, linger: bool = True) -> None:
        """-1 local reference; see ``SessionHandles.close``."""
        await self.sessions.close(h, linger=linger)

    def release_soon(self, h: EngineSession) -> None:
        """Sync -1 local reference (for finalizers); see ``SessionHandles``."""
        self.sessions.release_soon(h)

    # -- attach -------------------------------------------------------------------------

    @property
    def attached(self) -> bool:
        return self._att is not None and self._att.alive and self._att.pid == os.getpid()

    @property
    def attachment(self) -> Attachment | None:
        """The live attachment, if any (no attach attempt)."""
        att = self._att
        return att if att is not None and att.alive else None

    async def start(self) -> bool:
        """Attach now (first use). False if the backend is unreachable, or
        while an attach started elsewhere (a request's, ``reattach_soon``) is
        still under way."""
        token = trio.lowlevel.current_trio_token()
        if token is not self._token:
            self._abandon()  # a new trio run (or a forked child): start afresh
            self._token = token
            # Tasks arriving during the first attach wait for it rather than
            # fall back (a burst of first connections would otherwise all
            # run in-process).
            self._first_attach = trio.Event()
            try:
                await self._try_attach()
            finally:
                self._first_attach.set()
        elif not self._first_attach.is_set():
            await self._first_attach.wait()
        elif not self.attached and self._state is not _State.ATTACHING:
            # (one attach at a time: a second one finishing after the first
            # would replace its attachment and orphan it, fds, region, tasks)
            await self._try_attach()
        return self.attached

    def close_nowait(self) -> None:
        """Sync close (no trio needed): drop the attachment's fds; the backend
        sees the socket close and releases this frontend's references."""
        self._state = _State.CLOSED
        self._abandon()

    def _abandon(self) -> None:
        """Forget an attachment made in another trio run or another process,
        closing only plain fds (its trio objects belong to a dead run)."""
        att, self._att = self._att, None
        self.sessions.forget_attachment()
        if att is not None:
            # Closing our copies is harmless in a forked child: the parent
            # keeps its own, so the backend sees no detach.
            att.end()
            att.close_fds()
            att.waiter_running = False  # its run is over
            att.maybe_unmap()

    async def _current(self) -> Attachment | None:
        att = self._att
        if (self._token is not trio.lowlevel.current_trio_token()
                or (att is not None and att.pid != os.getpid())):
            await self.start()
            return self._att if self.attached else None
        if att is not None and att.alive:
            return att
        if not self._first_attach.is_set():
            await self._first_attach.wait()
            return self._att if self.attached else None
        if self._state is _State.IDLE and time.monotonic() >= self._retry_at:
            self._state = _State.ATTACHING
            trio.lowlevel.spawn_system_task(self._try_attach)
        return None

    def reattach_soon(self) -> None:
        """Detached (backend away) and idle: start an attach attempt in the
        background once the retry interval has passed, as a request on its
        way in would. For an application with no traffic that still wants to
        know the engine is back (the proxy's readiness)."""
        if (self._token is trio.lowlevel.current_trio_token() and self._first_attach.is_set()
                and not self.attached and self._state is _State.IDLE and time.monotonic() >= self._retry_at):
            self._state = _State.ATTACHING
            trio.lowlevel.spawn_system_task(self._try_attach)

    async def _try_attach(self) -> None:
        if self._state is not _State.CLOSED:  # (start() may still attach a closed one)
            self._state = _State.ATTACHING
        try:
            with trio.fail_after(self.attach_timeout_s):
                att = await self._attach()
        except Exception as exc:  # noqa: BLE001 - a system task must not crash the run
            self._retry_at = time.monotonic() + self.reconnect_interval_s
            self._last_attach_error = exc
            return
        finally:
            if self._state is _State.ATTACHING:
                self._state = _State.IDLE
        self._att = att
        self.stats.attaches += 1
        trio.lowlevel.spawn_system_task(self._reader, att)
        trio.lowlevel.spawn_system_task(self._waiter, att)
        trio.lowlevel.spawn_system_task(self._kicker, att)

    async def _attach(self) -> Attachment:
        raw = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock = trio.socket.from_stdlib_socket(raw)
        efd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        fds: list[int] = []
        try:
            await sock.connect(self.socket_path)
            hello = control.encode({"t": "attach", "v": control.PROTOCOL_VERSION,
                                     "pid": os.getpid()})
            await sock.sendmsg([hello], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                          array.array("i", [efd]))])
            decoder = control.FrameDecoder()
            msgs: list[dict] = []
            while not msgs:
                data, anc, _flags, _addr = await sock.recvmsg(65536, socket.CMSG_SPACE(16))
                for level, kind, payload in anc:
                    if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                        a = array.array("i")
                        a.frombytes(payload[:len(payload) - len(payload) % a.itemsize])
                        fds.extend(a)
                if not data:
                    raise control.ControlProtocolError("backend closed during attach")
                msgs = decoder.feed(data)
            if msgs[0].get("t") != "attached" or len(fds) != 3:
                raise control.ControlProtocolError(f"bad attach reply {msgs[0]!r} with {len(fds)} fds")
            region_fd, shared_fd, doorbell = fds
            fds = [shared_fd, doorbell]   # (from_fd owns and closes its fd, even on failure)
            maps = [Region.from_fd("frontend", region_fd)]
            try:
                fds = [doorbell]
                maps.append(Region.from_fd("engine-shared", shared_fd, writable=False))
                att = Attachment(self._gen + 1, sock, raw, efd, *maps, doorbell, decoder)
            except BaseException:
                for shm in maps:
                    shm.close()
                raise
            self._gen += 1
        except BaseException:
            raw.close()
            os.close(efd)
            for fd in fds:
                os.close(fd)
            raise
        for msg in msgs[1:]:
            self._dispatch(att, msg)
        return att

    def _detach(self, att: Attachment) -> None:
        """The backend is gone: wake every waiter (they redo in-process)."""
        if not att.alive:
            return
        att.end()
        self.stats.detaches += 1
        self._retry_at = time.monotonic() + min(self.reconnect_interval_s, 0.05)
        for ev in att.waiting.values():
            ev.set()
        att.waiting.clear()
        att.capacity.unpark_all()
        for slot in att.replies.values():
            slot[0].set()
        att.has_work.set()
        att.kick.set()  # the kicker sees the end and exits
        att.sock.close()
        # The regions stay mapped until every task that read from them is done
        # (their memoryviews are released with the attachment object).

    async def _reader(self, att: Attachment) -> None:
        run_ended = False
        try:
            while att.alive:
                data = await att.sock.recv(65536)
                if not data:
                    self.last_detach_reason = "backend closed the control socket"
                    break
                for msg in att.decoder.feed(data):
                    self._dispatch(att, msg)
        except (OSError, control.ControlProtocolError, trio.ClosedResourceError) as exc:
            if att.alive:  # else _detach closed it and said why
                self.last_detach_reason = f"control channel: {exc!r}"
        except trio.Cancelled:  # the trio run is ending: not a backend failure
            run_ended = True
            att.end()
            raise
        finally:
            if att.pid == os.getpid() and not run_ended:
                self._detach(att)

    def _dispatch(self, att: Attachment, msg: dict) -> None:
        slot = att.replies.pop(msg.get("id"), None)
        if slot is not None:
            slot[1] = msg
            slot[0].set()

    async def control_send(self, att: Attachment, msg: dict) -> None:
        """Send a control message whose reply nobody waits for (the reply,
        matched to no request, is dropped). Shielded: a release cut off by
        the caller's cancellation would leak the backend's (and the host's)
        session for good. Bounded all the same."""
        try:
            with trio.CancelScope(shield=True), trio.move_on_after(self.control_timeout_s):
                async with att.send_lock:
                    await att.sock.send(control.encode(msg | {"id": next(self._ids)}))
        except (OSError, trio.ClosedResourceError) as exc:
            self.last_detach_reason = f"{msg['t']} send: {exc!r}"
            self._detach(att)

    async def control_request(self, att: Attachment, msg: dict) -> dict:
        """A control round trip; ``Detached`` if the attachment ends first."""
        rid = next(self._ids)
        slot = [trio.Event(), None]
        att.replies[rid] = slot
        try:
            async with att.send_lock:
                await att.sock.send(control.encode(msg | {"id": rid}))
        except (OSError, trio.ClosedResourceError) as exc:
            self.last_detach_reason = f"request send: {exc!r}"
            self._detach(att)
        with trio.move_on_after(self.control_timeout_s):
            await slot[0].wait()
        if slot[1] is None:
            if att.alive:  # a backend that does not answer is as good as gone
                self._stall(att, f"no reply to {msg['t']!r} in {self.control_timeout_s}s")
            raise Detached()
        return slot[1]

    # -- the waiter (one eventfd per process) -------------------------------------------

    async def _waiter(self, att: Attachment) -> None:
        region = att.region
        polled_ns = quiet = 0
        try:
            while att.alive:
                if not att.waiting and not att.orphans:
                    att.has_work = trio.Event()
                    await att.has_work.wait()
                    continue
                if att.sent_at and self._stalled(att):
                    return
                if self.busy_poll:
                    busy = (time.perf_counter_ns() - polled_ns > BUSY_GAP_NS
                            or trio.lowlevel.current_statistics().tasks_runnable)
                    quiet = 0 if busy else quiet + 1
                    if quiet < 2:
                        # The loop is busy: other tasks are runnable, or ran
                        # for a while since our last tick. It will not block in
                        # epoll anyway, so scan the opdones once per tick (a
                        # few loads) and leave ``frontend_waiting`` clear: the
                        # backend writes no eventfd while this process is busy.
                        # Two quiet ticks in a row (trio may run a busy task
                        # just after us in one batch and just before us in the
                        # next: one tick can look quiet) and we arm and block
                        # below: idle costs nothing, a lone request waits at
                        # most two extra ticks.
                        self.stats.waiter_polls += 1
                        self._scan(att)
                        polled_ns = time.perf_counter_ns()   # the tick's gap counts from here
                        await trio.lowlevel.checkpoint()
                        continue
                    quiet = 0
                region.frontend_waiting = 1
                full_fence()  # our flag store before the opdone loads
                if self._scan(att):
                    region.frontend_waiting = 0
                    await trio.lowlevel.checkpoint()
                    continue
                # aclose/_detach close the eventfd synchronously, possibly while
                # this task is scheduled but not running: never touch a closed
                # fd (its number may already belong to another file)
                if att.fds_closed:
                    return
                with trio.move_on_after(self.backstop_s):
                    try:
                        await trio.lowlevel.wait_readable(att.efd)
                    except (trio.ClosedResourceError, OSError):
                        return
                region.frontend_waiting = 0
                if att.fds_closed:
                    return
                try:
                    os.eventfd_read(att.efd)
                    self.stats.waiter_wakes += 1
                except BlockingIOError:
                    pass
                self._scan(att)
        finally:
            att.waiter_running = False
            if att.alive:
                region.frontend_waiting = 0
            else:
                att.close_fds()
                att.maybe_unmap()

    def _stalled(self, att: Attachment) -> bool:
        """Detach if the oldest request at the backend is past the deadline
        with no completion meanwhile (a busy backend keeps completing; a hung
        one completes nothing). Only time this process ran counts: after a gap between the waiter's
        checks (it checks every ``backstop_s`` while requests are out; a gap
        means this process was stopped or its trio loop starved) ages
        restart, so the frontend never blames the backend for its own pause."""
        now = time.monotonic_ns()
        if now - att.stall_check_ns > max(0.25, self.stall_timeout_s / 4) * 1e9:
            att.stall_from_ns = now
        att.stall_check_ns = now
        j, sent_ns = next(iter(att.sent_at.items()))
        age = (now - max(sent_ns, att.progress_ns, att.stall_from_ns)) / 1e9
        if age <= self.stall_timeout_s or att.region.opdones.is_complete(j):
            return False  # (done but not yet collected by its task: not stuck)
        self._stall(att, f"oldest request outstanding {(now - sent_ns) / 1e9:.2f}s, none completed "
                         f"for {age:.2f}s (stall_timeout_s {self.stall_timeout_s}s)")
        return True

    def _stall(self, att: Attachment, what: str) -> None:
        """The backend is alive (its socket is open) but hung: count, log, detach."""
        self.stats.stalls += 1
        self.last_detach_reason = f"engine-backend stalled: {what}"
        _log.warning("vcrypto frontend (pid %d): %s; %d requests outstanding there are redone "
                     "in-process, their slots abandoned; reattaching",
                     os.getpid(), self.last_detach_reason,
                     sum(att.region.opdones.total(j) for j in att.sent_at))
        self._detach(att)

    def _scan(self, att: Attachment) -> int:
        region, n = att.region, 0
        for j in [j for j in att.waiting if region.opdones.is_complete(j)]:
            att.waiting.pop(j).set()
            n += 1
        for j in [j for j in att.orphans if region.opdones.is_complete(j)]:
            self._free(att, att.orphans.pop(j), j)
            n += 1
        if n:
            att.progress_ns = time.monotonic_ns()
        return n

    def _free(self, att: Attachment, slots: list[int], j: int) -> None:
        att.sent_at.pop(j, None)
        att.free_slots.extend(slots)
        att.free_opdones.append(j)
        att.capacity.unpark_all()

    async def backend_stats(self) -> dict:
        """The backend's counters and session table (tests, diagnostics)."""
        att = await self._current()
        if att is None:
            raise EngineUnavailable("not attached to an engine-backend")
        try:
            return (await self.control_request(att, {"t": "stats"}))["stats"]
        except Detached:
            raise EngineUnavailable("engine-backend went away") from None

    # -- requests --------------------------------------------------------------------------

    def _inline(self, h: EngineSession, item: Item, redo: bool = False) -> Result:
        if redo:
            self.stats.redone_requests += 1
        else:
            self.stats.fallback_requests += 1
        if self.on_inline is not None:
            self.on_inline(h.meta.op, redo)
        src, iv, aad = item
        try:
            return SlotStatus.OK, h.inline().perform(src, iv, aad)
        except InlineOpError as exc:
            return exc.status, b""

    async def run(self, h: EngineSession, items: Sequence[Item]) -> list[Result]:
        """Run ``items`` on session ``h``; results in order, one per item.

        Offloaded in opdone groups of <= 16 (one suspension per group); runs
        in-process when the engine cannot take them (counted).
        """
        att = await self._current()
        key = b""
        if att is not None and att.shared.device_up and h.rejected_gen != att.gen:
            if not h.meta.shareable and att.shared.stateless_aead:
                # A traffic key travels in its slots (stateless AEAD): no
                # session, no control round trip, nothing in the shared cache.
                key = h.meta.key
            else:
                try:
                    await self.sessions.sid(att, h)
                except Detached:
                    att = None
                except EngineUnavailable:
                    # The device refused the session (a capability it lacks, a
                    # key it rejects): this session runs in-process (per-op
                    # fallback) until the next attach, without asking again.
                    h.rejected_gen = att.gen
                    att = None
        else:
            att = None
        if att is None or not att.alive:
            await trio.lowlevel.checkpoint()
            return [self._inline(h, it) for it in items]
        att.users += 1  # keeps the shared mappings alive while we read slots
        results: list[Result | None] = [None] * len(items)
        meta, region = h.meta, att.region
        offload = []
        dst_caps = []   # per item, computed once (the slot write needs it too)
        op, alg, fits = meta.op, meta.alg, region.fits
        for k, (src, _iv, aad) in enumerate(items):
            cap = max_dst_bytes(op, alg, len(src))
            dst_caps.append(cap)
            if fits(len(src), cap, len(aad)):
                offload.append(k)
            else:  # larger than a data chunk: never worth a round trip
                results[k] = self._inline(h, items[k])
        depth = min(PIPELINE_DEPTH, region.geometry.slot_count)
        groups = [offload[k:k + depth] for k in range(0, len(offload), depth)]
        pending: list = []

        async def collect_oldest():
            group, slots, j, ev = pending[0]
            if not ev.is_set():
                self.stats.opdone_waits += 1
                await ev.wait()
            pending.pop(0)
            result = region.result
            for k, slot in zip(group, slots):
                status, out = result(slot)
                if status is SlotStatus.OK:     # (the usual case, tested first)
                    results[k] = (status, out)
                elif status in (SlotStatus.PENDING, SlotStatus.DEVICE_LOST):
                    results[k] = self._inline(h, items[k])
                elif status in (SlotStatus.DEVICE_ERROR, SlotStatus.NOT_SUPPORTED):
                    # The device failed it or cannot do it: in-process gives the
                    # authoritative answer (a per-op fallback, counted apart).
                    results[k] = self._inline(h, items[k], redo=True)
                    if status is SlotStatus.NOT_SUPPORTED:
                        h.rejected_gen = att.gen  # do not offer it again this attach
                else:
                    results[k] = (status, out)
            if att.alive:
                self._free(att, slots, j)

        try:
            for group in groups:
                # Deadlock freedom: a task waits for capacity only while it
                # holds none; otherwise it first collects its own oldest
                # group (the backend completes everything submitted).
                while att.alive and (len(att.free_slots) < len(group) or not att.free_opdones):
                    if pending:
                        await collect_oldest()
                    else:
                        await att.capacity.park()
                if not att.alive:
                    for k in group:
                        results[k] = self._inline(h, items[k])
                    continue
                pending.append(self._submit(att, h, items, group, key, dst_caps))
            while pending:
                await collect_oldest()
        finally:
            for group, slots, j, ev in pending:
                if att.alive:
                    att.waiting.pop(j, None)
                    if ev.is_set():  # complete but unread (cancelled meanwhile)
                        self._free(att, slots, j)
                    else:  # still at the backend: the waiter frees it when done
                        att.orphans[j] = slots
                        att.has_work.set()
            att.users -= 1
            att.maybe_unmap()
        return results  # type: ignore[return-value]

    async def run_together(self, requests: Sequence[tuple[EngineSession, Item, int]]) -> list[Result]:
        """One request on each of several sessions, ALL submitted before this
        task suspends: ``(session, item, dst_bytes)`` each (``dst_bytes`` 0:
        the op's ``max_dst_bytes``; less asks an op that reads it, ECDH's
        derive-only form, for less). Results in order.

        A TLS handshake's ECDH derive and signature are published by one
        task before it waits (one opdone each; the kicker rings once: one
        device batch), without a child task per op. Anything the fast path cannot take at once (detached,
        a session refused, a request over a data chunk, too few free slots)
        runs through ``run`` one request after the other, with its fallback
        and capacity rules; requests submitted here that the backend does
        not complete (detach, stall) are redone in-process as in ``run``.
        """
        att = await self._current()
        keys: list[bytes] = []
        if att is not None and not att.shared.device_up:
            att = None
        if att is not None:
            for h, _item, _dst in requests:
                if h.rejected_gen == att.gen:
                    att = None
                    break
                if not h.meta.shareable and att.shared.stateless_aead:
                    keys.append(h.meta.key)
                    continue
                try:
                    await self.sessions.sid(att, h)
                except Detached:
                    att = None
                    break
                except EngineUnavailable:
                    h.rejected_gen = att.gen  # as in ``run``: in-process until the next attach
                    att = None
                    break
                keys.append(b"")
        region = att.region if att is not None and att.alive else None
        dsts = [dst or max_dst_bytes(h.meta.op, h.meta.alg, len(src)) for h, (src, _iv, _a), dst in requests]
        if (region is None or len(att.free_slots) < len(requests) or len(att.free_opdones) < len(requests)
                or not all(region.fits(len(src), dst, len(aad))
                           for (_h, (src, _iv, aad), _d), dst in zip(requests, dsts))):
            return [(await self.run(h, [item]))[0] for h, item, _dst in requests]
        att.users += 1
        # One opdone per request (the backend's unit is a session's group),
        # all published before the first wait: the kicker rings once.
        pending = [self._submit(att, h, (item,), (0,), key, [dst])
                   for (h, item, _d), key, dst in zip(requests, keys, dsts)]
        results: list[Result] = []
        try:
            for (h, item, _d), (_g, slots, j, ev) in zip(requests, pending):
                if not ev.is_set():
                    self.stats.opdone_waits += 1
                    await ev.wait()
                results.append(self._settle(att, h, item, slots[0]))
                if att.alive:
                    self._free(att, slots, j)
        finally:
            for _g, slots, j, ev in pending[len(results):]:  # cancelled: as ``run``'s
                if att.alive:
                    att.waiting.pop(j, None)
                    if ev.is_set():
                        self._free(att, slots, j)
                    else:
                        att.orphans[j] = slots
                        att.has_work.set()
            att.users -= 1
            att.maybe_unmap()
        return results

    def _settle(self, att: Attachment, h: EngineSession, item: Item, slot: int) -> Result:
        """One collected slot's result, redone in-process when the backend
        did not complete it or the device failed it (``run``'s rules)."""
        status, out = att.region.result(slot)
        if status is SlotStatus.PENDING or status is SlotStatus.DEVICE_LOST:
            return self._inline(h, item)
        if status is SlotStatus.DEVICE_ERROR or status is SlotStatus.NOT_SUPPORTED:
            if status is SlotStatus.NOT_SUPPORTED:
                h.rejected_gen = att.gen
            return self._inline(h, item, redo=True)
        return status, out

    def _submit(self, att: Attachment, h: EngineSession, items, group, key: bytes,
                dst_caps: list[int]):
        """Write one group (<= 16 requests, one opdone) and publish it. No
        await inside: the ring has a single producer. ``key``: stateless
        AEAD, the key goes into each slot and no session id. ``dst_caps``:
        each item's dst size, by item index."""
        region = att.region
        j = att.free_opdones.pop()
        slots = [att.free_slots.pop() for _ in group]
        now_ns = time.monotonic_ns()
        meta, sid = h.meta, (0 if key else h.sid)
        op, alg = meta.op, meta.alg
        region.opdones.reset(j, len(group))
        mine = [items[k] for k in group]
        region.write_requests(slots, op, alg, j, sid, mine, [dst_caps[k] for k in group], now_ns, key)
        ev = trio.Event()
        att.waiting[j] = ev
        att.sent_at[j] = now_ns
        att.region.ring.push_many(slots)  # capacity >= slot_count: always fits
        att.has_work.set()
        self.stats.submitted += len(group)
        self.stats.opdones += 1
        if not att.kick_pending:
            att.kick_pending = True
            att.kick.set()
        return group, slots, j, ev

    async def _kicker(self, att: Attachment) -> None:
        """Ring the backend's doorbell once per trio scheduling batch that
        submitted work. Woken by the first submission of a batch, it runs
        after every task of that batch (trio runs tasks made runnable during
        a batch in the next one), so concurrent connections' requests reach
        the backend together and leave it as one device batch."""
        while True:
            await att.kick.wait()
            att.kick = trio.Event()
            att.kick_pending = False
            if not att.alive or att.fds_closed:
                return
            full_fence()  # ring tail stores before the backend_sleeping load
            if att.shared.backend_sleeping:
                try:
                    os.eventfd_write(att.doorbell, 1)
                    self.stats.doorbells += 1
                except OSError:
                    pass

    async def aclose(self) -> None:
        """Detach (the backend drops this frontend's references) and close fds."""
        self._state = _State.CLOSED
        att, self._att = self._att, None
        if att is not None and att.pid == os.getpid():
            self._detach(att)
            if not att.fds_closed:
                trio.lowlevel.notify_closing(att.efd)  # wake the waiter off it
            att.close_fds()
        self.sessions.clear()
