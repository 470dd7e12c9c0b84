"""One virtual crypto device: the host side of one vhost-user connection.

Theory of operation
-------------------
``VirtioCryptoDevice.serve(sock)`` reads vhost-user messages one at a time (the
protocol is strictly request/reply on this socket) and applies them to the device
state: negotiated features, the memory table, per-vring configuration, and
the session table (control plane). A vring starts serving (a ``DataQueue``
task in the device nursery) once it has a size, addresses and a kick
(QEMU never sends SET_VRING_ENABLE for crypto: SET_VRING_KICK is the start
signal, notes/qemu-virtio-crypto.md); GET_VRING_BASE stops it after the
requests it already popped are completed and published, and replies with the
next avail index. Region fds must be memfds sealed against shrinking (a
truncated file under the host's mapping would SIGBUS the whole host).

A malformed message, an unknown request number, or a ring the driver
corrupted raises ``VhostProtocolError``: this device's connection is closed and its
resources released; the host and every other device carry on. A bad data
request is not a device error: it gets an error status in its own inhdr.
"""
from __future__ import annotations

import enum
import inspect
import json
import logging
import os
import resource
import time

import trio

from vcrypto.host.config import HostConfig
from vcrypto.host.keys import KeyStore
from vcrypto.host.memory import BadAddress, GuestMemory
from vcrypto.host.queue import DataQueue, DeviceStats, QueueBroken
from vcrypto.host.scheduling import capabilities_of
from vcrypto.host.sessions import SessionError, SessionTable
from vcrypto.shm.virtqueue import (
    SplitVirtqueue, VirtqueueError, avail_bytes, check_num, desc_table_bytes, used_bytes,
)
from vcrypto.wire import session_msg
from vcrypto.wire import transport
from vcrypto.wire import vhost_user as vu
from vcrypto.wire import virtio_crypto as vc

log = logging.getLogger("vcrypto.host.device")

R = vu.Request
PF = vu.ProtocolFeature

DEVICE_FEATURES = ((1 << vu.VIRTIO_F_VERSION_1) | (1 << vu.VIRTIO_F_INDIRECT_DESC)
                   | (1 << vu.VIRTIO_F_EVENT_IDX) | (1 << vu.VHOST_USER_F_PROTOCOL_FEATURES)
                   # stateless AEAD (virtio 1.2 §5.9.3): a connection's traffic key
                   # travels with its records, no session create/close round trips
                   | vc.STATELESS_AEAD_FEATURES)
PROTOCOL_FEATURES = ((1 << PF.MQ) | (1 << PF.REPLY_ACK) | (1 << PF.CRYPTO_SESSION)
                     | (1 << PF.CONFIGURE_MEM_SLOTS) | (1 << PF.VCRYPTO_EXT))


DRAIN_TIMEOUT_S = 5.0     # GET_VRING_BASE waits this long for in-flight requests


class VhostProtocolError(Exception):
    """The driver broke the protocol; this device's connection is closed."""


def _close_fd(fd: int | None) -> None:
    if fd is not None:
        trio.lowlevel.notify_closing(fd)
        os.close(fd)


def host_cpu_seconds() -> float:
    """CPU time (user + system) of the whole host process, all threads."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


class VringState(enum.Enum):
    """A vring is configured (NUM/ADDR/BASE/CALL) while STOPPED; SET_VRING_KICK
    starts it (RUNNING); GET_VRING_BASE stops it again (vhost-user spec:
    "stop ring upon receiving VHOST_USER_GET_VRING_BASE")."""

    STOPPED = "stopped"
    RUNNING = "running"


class _Vring:
    __slots__ = ("state", "num", "addr", "base", "kick_fd", "call_fd", "queue", "cancel", "done")

    def __init__(self) -> None:
        self.state = VringState.STOPPED
        self.num = 0
        self.addr: vu.VringAddr | None = None
        self.base = 0
        self.kick_fd: int | None = None
        self.call_fd: int | None = None
        self.queue: DataQueue | None = None
        self.cancel: trio.CancelScope | None = None
        self.done: trio.Event | None = None


class VirtioCryptoDevice:
    def __init__(self, device_id: int, config: HostConfig, scheduler, keys: KeyStore):
        self.id = device_id
        self.config = config
        self.scheduler = scheduler
        limits = config.limits
        self.sessions = SessionTable(limits.max_sessions_per_device, keys)
        self.mem = GuestMemory(limits.max_mem_slots, require_sealed=limits.require_sealed_memory)
        self.stats = DeviceStats()
        self.features = 0
        self.protocol_features = 0
        self.vrings: dict[int, _Vring] = {}
        self._nursery: trio.Nursery | None = None
        self.started_at = time.monotonic()
        self.peer_pid = 0        # the driver's process (SO_PEERCRED), for the admin status

    # -- connection ---------------------------------------------------------

    async def serve(self, sock: trio.socket.SocketType) -> None:
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                try:
                    await self._message_loop(sock)
                except (VhostProtocolError, vu.VhostUserError) as exc:
                    log.warning("device %d: closing: %s", self.id, exc)
                except transport.ConnectionClosed:
                    log.info("device %d: driver disconnected", self.id)
                except OSError as exc:
                    log.info("device %d: connection error: %s", self.id, exc)
                finally:
                    nursery.cancel_scope.cancel()
        finally:
            self._teardown()

    async def _message_loop(self, sock) -> None:
        while True:
            msg = await transport.recv_message(sock)
            try:
                reply = self._handle(msg)
                if inspect.isawaitable(reply):
                    reply = await reply
            finally:
                for fd in msg.fds:
                    if fd >= 0:
                        try:
                            os.close(fd)
                        except OSError:
                            pass
            if reply is not None:
                await transport.send_message(sock, msg.request, reply, flags=vu.REPLY_FLAGS)
            elif msg.need_reply and self.protocol_features & (1 << PF.REPLY_ACK):
                await transport.send_message(sock, msg.request, vu.u64(0), flags=vu.REPLY_FLAGS)

    def _teardown(self) -> None:
        for ring in self.vrings.values():
            self._stop_ring(ring)
            for fd in (ring.kick_fd, ring.call_fd):
                _close_fd(fd)
            ring.kick_fd = ring.call_fd = None
        self.sessions.close_all()
        self.mem.clear()

    # -- message dispatch -----------------------------------------------------

    def _take_fd(self, msg: vu.Message) -> int:
        """Duplicate the message's single fd (the loop closes the originals)."""
        if len(msg.fds) != 1:
            raise VhostProtocolError(f"{R(msg.request).name}: expected 1 fd, got {len(msg.fds)}")
        return os.dup(msg.fds[0])

    def _handle(self, msg: vu.Message) -> bytes | None:
        """Apply one message; returns the reply payload or None (no reply)."""
        try:
            req = R(msg.request)
        except ValueError:
            raise VhostProtocolError(f"unknown vhost-user request {msg.request}") from None
        handler = _HANDLERS.get(req)
        if handler is None:
            raise VhostProtocolError(f"request {req.name} is not supported here")
        return handler(self, msg)

    # One method per message; ``_HANDLERS`` below maps request numbers to them.

    def _get_features(self, msg: vu.Message) -> bytes:
        return vu.u64(DEVICE_FEATURES)

    def _set_features(self, msg: vu.Message) -> None:
        features = vu.parse_u64(msg.payload)
        if features & ~DEVICE_FEATURES:
            raise VhostProtocolError(f"SET_FEATURES {features:#x} has bits the device did not offer")
        self.features = features

    def _get_protocol_features(self, msg: vu.Message) -> bytes:
        return vu.u64(PROTOCOL_FEATURES)

    def _set_protocol_features(self, msg: vu.Message) -> None:
        pf = vu.parse_u64(msg.payload)
        if pf & ~PROTOCOL_FEATURES:
            raise VhostProtocolError(f"SET_PROTOCOL_FEATURES {pf:#x} has bits not offered")
        self.protocol_features = pf

    def _ignore(self, msg: vu.Message) -> None:
        return None

    def _get_queue_num(self, msg: vu.Message) -> bytes:
        return vu.u64(self.config.limits.max_queues)

    def _get_max_mem_slots(self, msg: vu.Message) -> bytes:
        return vu.u64(self.config.limits.max_mem_slots)

    def _add_mem_reg(self, msg: vu.Message) -> None:
        self._add_region(vu.parse_mem_reg(msg.payload), self._take_fd(msg))

    def _rem_mem_reg(self, msg: vu.Message) -> None:
        region = vu.parse_mem_reg(msg.payload)
        try:
            self.mem.remove(region.guest_phys_addr)
        except BadAddress as exc:
            raise VhostProtocolError(str(exc)) from exc

    def _set_vring_num(self, msg: vu.Message) -> None:
        index, num = vu.parse_vring_state(msg.payload)
        ring = self._ring(index, stopped=True)
        try:
            check_num(num)
        except VirtqueueError as exc:
            raise VhostProtocolError(str(exc)) from exc
        if num > self.config.limits.max_queue_size:
            raise VhostProtocolError(f"vring {index}: size {num} > {self.config.limits.max_queue_size}")
        ring.num = num

    def _set_vring_addr(self, msg: vu.Message) -> None:
        addr = vu.VringAddr.decode(msg.payload)
        self._ring(addr.index, stopped=True).addr = addr

    def _set_vring_base(self, msg: vu.Message) -> None:
        index, base = vu.parse_vring_state(msg.payload)
        self._ring(index, stopped=True).base = base & 0xFFFF

    async def _get_vring_base(self, msg: vu.Message) -> bytes:
        """Stop the ring and report where it stopped. Requests already popped
        finish and are published first (bounded by DRAIN_TIMEOUT_S), so the
        front-end's view (used.idx) and the returned base agree."""
        index, _ = vu.parse_vring_state(msg.payload)
        ring = self._ring(index)
        if ring.state is VringState.RUNNING:
            ring.queue.begin_drain()
            with trio.move_on_after(DRAIN_TIMEOUT_S):
                await ring.done.wait()
            self._stop_ring(ring)
        return vu.vring_state(index, ring.base)

    def _close_session(self, msg: vu.Message) -> bytes | None:
        sid = vu.parse_u64(msg.payload)
        try:
            self.sessions.close(sid)
        except SessionError as exc:
            log.info("device %d: close session %d: %s", self.id, sid, exc)
            return vu.u64(exc.status) if msg.need_reply else None
        return None

    def _vendor(self, msg: vu.Message) -> None:
        if not self.protocol_features & (1 << PF.VCRYPTO_EXT):
            raise VhostProtocolError(f"vendor request {msg.request:#x} without VCRYPTO_EXT negotiated")

    def _get_caps(self, msg: vu.Message) -> bytes:
        self._vendor(msg)
        return json.dumps({
            "v": 1,
            "capabilities": sorted(f"{op.value}:{alg.value}"
                                   for op, alg in capabilities_of(self.scheduler)),
            "max_sessions": self.config.limits.max_sessions_per_device,
            "max_queues": self.config.limits.max_queues,
            "max_queue_size": self.config.limits.max_queue_size,
        }).encode()

    def _get_stats(self, msg: vu.Message) -> bytes:
        self._vendor(msg)
        return json.dumps({"v": 1, "device": self.stats_dict(),
                           "host": {"cpu_s": host_cpu_seconds(), "pid": os.getpid()}}).encode()

    def stats_dict(self) -> dict:
        d = self.stats.as_dict()
        d["sessions"] = len(self.sessions)
        d["id"] = self.id
        return d

    # -- memory -----------------------------------------------------------------

    def _set_mem_table(self, msg: vu.Message) -> None:
        regions = vu.parse_mem_table(msg.payload)
        if len(regions) != len(msg.fds):
            raise VhostProtocolError(f"SET_MEM_TABLE: {len(regions)} regions but {len(msg.fds)} fds")
        if any(r.state is VringState.RUNNING for r in self.vrings.values()):
            raise VhostProtocolError("SET_MEM_TABLE while vrings are running")
        self.mem.clear()
        for region, fd in zip(regions, msg.fds):
            self._add_region(region, os.dup(fd))
        return None

    def _add_region(self, region: vu.MemRegion, fd: int) -> None:
        try:
            self.mem.add(region, fd)
        except BadAddress as exc:
            raise VhostProtocolError(f"memory region: {exc}") from exc

    # -- vrings -------------------------------------------------------------------

    def _ring(self, index: int, *, stopped: bool = False) -> _Vring:
        if index >= self.config.limits.max_queues:
            raise VhostProtocolError(f"vring {index} >= max_queues {self.config.limits.max_queues}")
        ring = self.vrings.setdefault(index, _Vring())
        if stopped and ring.state is VringState.RUNNING:
            raise VhostProtocolError(f"vring {index} reconfigured while running")
        return ring

    def _set_vring_fd(self, msg: vu.Message) -> None:
        req = R(msg.request)
        value = vu.parse_u64(msg.payload)
        index = value & vu.VRING_IDX_MASK
        nofd = bool(value & vu.VRING_NOFD_MASK)
        if value & ~(vu.VRING_IDX_MASK | vu.VRING_NOFD_MASK):
            raise VhostProtocolError(f"{req.name}: bad payload {value:#x}")
        fd = None if nofd else self._take_fd(msg)
        if req is R.SET_VRING_ERR:
            if fd is not None:
                os.close(fd)
            return None
        ring = self._ring(index)
        if fd is not None:
            os.set_blocking(fd, False)
        if req is R.SET_VRING_CALL:
            _close_fd(ring.call_fd)
            ring.call_fd = fd
            if ring.state is VringState.RUNNING:
                ring.queue.call_fd = fd
            return None
        # SET_VRING_KICK: (re)start the ring.
        self._stop_ring(ring)
        _close_fd(ring.kick_fd)
        ring.kick_fd = fd
        self._start_ring(index, ring)
        return None

    def _start_ring(self, index: int, ring: _Vring) -> None:
        if ring.num == 0 or ring.addr is None:
            raise VhostProtocolError(f"vring {index} kicked before SET_VRING_NUM/ADDR")
        a, n = ring.addr, ring.num
        try:
            desc = self.mem.uva_view(a.desc, desc_table_bytes(n))
            avail = self.mem.uva_view(a.avail, avail_bytes(n))
            used = self.mem.uva_view(a.used, used_bytes(n))
        except BadAddress as exc:
            raise VhostProtocolError(f"vring {index} addresses: {exc}") from exc
        vq = SplitVirtqueue(n, desc, avail, used,
                            event_idx=bool(self.features & (1 << vu.VIRTIO_F_EVENT_IDX)))
        vq.last_avail = ring.base
        vq.next_used = ring.base
        ring.queue = DataQueue(
            index, vq, kick_fd=ring.kick_fd, call_fd=ring.call_fd, mem=self.mem,
            sessions=self.sessions, scheduler=self.scheduler, stats=self.stats,
            fifo=self.config.fifo, poll=self.config.poll,
            max_request_bytes=self.config.limits.max_request_bytes,
            bad_input_status=self.config.bad_input_status,
            stateless_aead=vc.stateless_aead(self.features))
        ring.cancel = trio.CancelScope()
        ring.done = trio.Event()
        ring.state = VringState.RUNNING
        self._nursery.start_soon(self._run_ring, ring, ring.queue, ring.cancel, ring.done)

    async def _run_ring(self, ring: _Vring, queue: DataQueue, cancel: trio.CancelScope,
                        done: trio.Event) -> None:
        try:
            with cancel:
                await queue.run()
        except QueueBroken as exc:
            # The driver corrupted the ring: reset this device only.
            log.warning("device %d: closing: %s", self.id, exc)
            self._nursery.cancel_scope.cancel()
        except Exception:
            log.exception("device %d: vring %d failed; closing the device", self.id, queue.index)
            self._nursery.cancel_scope.cancel()
        finally:
            queue.vq.release()
            done.set()

    def _stop_ring(self, ring: _Vring) -> None:
        if ring.state is VringState.STOPPED:
            return
        ring.base = ring.queue.vq.last_avail
        ring.queue.stop()
        ring.cancel.cancel()
        ring.queue = None
        ring.state = VringState.STOPPED

    # -- sessions -------------------------------------------------------------------

    def _create_session(self, msg: vu.Message) -> bytes:
        payload = msg.payload
        request = None
        try:
            request = session_msg.decode_create(payload)
            params = request.params() if isinstance(request, session_msg.QemuSymSession) \
                else request
            session = self.sessions.create(params)
        except (vc.WireError, SessionError) as exc:
            log.info("device %d: session create refused: %s", self.id, exc)
            return session_msg.encode_create_reply(request, None, exc.status)
        log.debug("device %d: session %d created (%s/%s)", self.id, session.id,
                  session.op.value, session.alg.value)
        return session_msg.encode_create_reply(request, session.id, vc.VIRTIO_CRYPTO_OK)


_HANDLERS = {
    R.GET_FEATURES: VirtioCryptoDevice._get_features,
    R.SET_FEATURES: VirtioCryptoDevice._set_features,
    R.GET_PROTOCOL_FEATURES: VirtioCryptoDevice._get_protocol_features,
    R.SET_PROTOCOL_FEATURES: VirtioCryptoDevice._set_protocol_features,
    R.SET_OWNER: VirtioCryptoDevice._ignore,
    R.RESET_OWNER: VirtioCryptoDevice._ignore,
    R.SET_VRING_ENABLE: VirtioCryptoDevice._ignore,   # QEMU never sends it for crypto; KICK starts a ring
    R.GET_QUEUE_NUM: VirtioCryptoDevice._get_queue_num,
    R.GET_MAX_MEM_SLOTS: VirtioCryptoDevice._get_max_mem_slots,
    R.SET_MEM_TABLE: VirtioCryptoDevice._set_mem_table,
    R.ADD_MEM_REG: VirtioCryptoDevice._add_mem_reg,
    R.REM_MEM_REG: VirtioCryptoDevice._rem_mem_reg,
    R.SET_VRING_NUM: VirtioCryptoDevice._set_vring_num,
    R.SET_VRING_ADDR: VirtioCryptoDevice._set_vring_addr,
    R.SET_VRING_BASE: VirtioCryptoDevice._set_vring_base,
    R.GET_VRING_BASE: VirtioCryptoDevice._get_vring_base,
    R.SET_VRING_KICK: VirtioCryptoDevice._set_vring_fd,
    R.SET_VRING_CALL: VirtioCryptoDevice._set_vring_fd,
    R.SET_VRING_ERR: VirtioCryptoDevice._set_vring_fd,
    R.CREATE_CRYPTO_SESSION: VirtioCryptoDevice._create_session,
    R.CLOSE_CRYPTO_SESSION: VirtioCryptoDevice._close_session,
    R.VCRYPTO_GET_CAPS: VirtioCryptoDevice._get_caps,
    R.VCRYPTO_GET_STATS: VirtioCryptoDevice._get_stats,
}
