"""The user-space poll-mode driver: see the package docstring for the API.

Theory of operation. ``Driver.attach`` connects to a vhost-user back-end
(vcrypto-host, or anything speaking the same protocol), negotiates features
(EVENT_IDX, INDIRECT_DESC, and the virtio 1.2 stateless AEAD mode when both
sides have it) and hands over one shared-memory region plus, per data queue,
the split virtqueue's rings and its kick/call eventfds. After that the
control socket carries only session create/close, region (un)registration
and capability queries (``_request``: one message, optionally one reply).

The data path is ``Queue``: ``enqueue_burst`` writes each ``DataOp`` as one
descriptor chain (header, IV/AAD/src, dst, status) into free slots of the
queue's slot area, publishes the avail index once per burst and kicks the
device only if it asked for kicks (EVENT_IDX); ``dequeue_burst`` reads the
used ring and returns ``Completion``s matched by token, never by order.
``wait_used`` busy-polls for ``poll_s`` and then arms calls and sleeps on the
call eventfd (re-checking the ring after arming, so no completion is missed).
Every wait is bounded (``DriverTimeout`` names what and how long); a closed
or broken back-end surfaces as ``DriverError``, never as a hang.

The module stays one file (~620 lines) because ``Queue`` and ``Driver`` share
the negotiated geometry and slot packing; the wire layouts live in
``vcrypto.wire`` and the ring layouts in ``vcrypto.shm``.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import socket
import struct
from collections.abc import Sequence

import trio

from vcrypto.ops import SYM_OPS, Alg, Op
from vcrypto.shm.region import Region
from vcrypto.shm.ring import full_fence
from vcrypto.shm.virtqueue import (
    DESC_BYTES, VIRTQ_DESC_F_INDIRECT, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE, SplitVirtqueue,
    vring_layout,
)
from vcrypto.wire import session_msg, transport
from vcrypto.wire import vhost_user as vu
from vcrypto.wire import virtio_crypto as vc

R = vu.Request
PF = vu.ProtocolFeature

#: Per-request bookkeeping in the driver region (see the package docstring).
SLOT_BYTES = 256
SLOT_STATUS = 72
SLOT_TABLE = 128
MAX_CHAIN = 7                  # header, key (stateless AEAD), iv, aad, src, dst, status


def check_queue_size(n: int) -> None:
    """A split virtqueue's size is a power of two (virtio 1.2 §2.7), and no
    chain, indirect or not, may be longer than it (§2.7.5.3.1): below
    MAX_CHAIN every AEAD request would be refused by the device."""
    if n < MAX_CHAIN or n > 32768 or n & (n - 1):
        raise ValueError(f"queue size must be a power of two in {1 << (MAX_CHAIN - 1).bit_length()}..32768 "
                         f"(a request chain has up to {MAX_CHAIN} descriptors), got {n}")
GPA_STRIDE = 1 << 36           # each registered region gets its own 64 GiB window

# virtio_crypto_op_data_req header + the AEAD / akcipher flf, packed in place
# (the layouts are documented in vcrypto.wire.virtio_crypto; the wire tests pin them)
_AEAD_HDR = struct.Struct("<IIQIIIIIIII")
#: header + sym/MAC flf (10 u32) + op_type + padding: all 72 bytes
_SYM_HDR = struct.Struct("<IIQII10III")
#: header + the stateless AEAD flf (8 u32) + zero padding: all 72 bytes
_AEAD_STATELESS_HDR = struct.Struct("<IIQII8I16x")
_DESC = struct.Struct("<QIHH")
_AEAD_OPS = (Op.AEAD_SEAL, Op.AEAD_OPEN)


#: How long one control message may wait for the device (the socket to take
#: it, the reply to arrive). The host answers in well under 10 ms (a session
#: create parses a key); a device silent this long is not answering, and the
#: caller gets ``DriverTimeout`` instead of a stall.
CONTROL_TIMEOUT_S = 10.0


class DriverError(Exception):
    """The device refused or broke the protocol (control path)."""


class DriverTimeout(DriverError):
    """The device did not answer within the bound: ``what`` names the message
    (or the wait) that got no answer. After a control message timed out the
    control connection is out of step (a late reply would answer the next
    request), so the driver refuses further control requests: close it."""

    def __init__(self, what: str, bound: str):
        super().__init__(f"{what}: no answer from the device within {bound}")
        self.what = what


async def _bounded(what: str, timeout_s: float, aw):
    """Await ``aw``; ``DriverTimeout(what)`` if it takes longer than ``timeout_s``."""
    with trio.move_on_after(timeout_s):
        return await aw
    raise DriverTimeout(what, f"{timeout_s:g} s")


class SessionCreateError(DriverError):
    def __init__(self, status: int, detail: str = ""):
        super().__init__(f"session create refused: {vc.STATUS_NAMES.get(status, status)} {detail}")
        self.status = status


@dataclasses.dataclass(frozen=True, slots=True)
class RegionHandle:
    """A region registered with the device; ``gpa`` is its device address."""

    region: Region
    gpa: int

    def buf(self, offset: int, length: int) -> Buf:
        return Buf(self, offset, length)


@dataclasses.dataclass(slots=True)   # one per request: frozen init is ~8x slower
class Buf:
    """``length`` bytes at ``offset`` inside a registered region."""

    region: RegionHandle
    offset: int
    length: int

    @property
    def addr(self) -> int:
        return self.region.gpa + self.offset

    def view(self) -> memoryview:
        return self.region.region.view(self.offset, self.length)


@dataclasses.dataclass(slots=True)   # one per request: frozen init is ~8x slower
class DataOp:
    """One request for ``enqueue_burst``. ``dst`` must hold
    ``max_dst_bytes(op, alg, src.length)``; ``token`` comes back in the
    ``Completion``. A stateless AEAD request (the device offered
    VIRTIO_CRYPTO_F_AEAD_STATELESS_MODE: ``Queue.stateless_aead``) has
    ``session_id`` 0, its ``key`` and its ``alg``."""

    session_id: int
    op: Op
    src: Buf
    dst: Buf
    iv: Buf | None = None
    aad: Buf | None = None
    token: object = None
    key: Buf | None = None
    alg: Alg | None = None


@dataclasses.dataclass(slots=True)   # one per request: frozen init is ~8x slower
class Completion:
    token: object
    status: int          # virtio-crypto status (VIRTIO_CRYPTO_OK = 0)
    dst_len: int         # result bytes written at the start of dst


def _pack_sym(slots, base: int, dop: DataOp, iv_len: int, aad_len: int, flag: int) -> None:
    """The 72-byte header of a cipher / chain / MAC request. The MAC length is
    what dst and src differ by (chain), or dst itself (MAC): a DataOp's dst is
    exactly ``max_dst_bytes`` for these ops."""
    op, src_len, dst_len = dop.op, dop.src.length, dop.dst.length
    code = vc.DATA_OPCODE[op]
    if op is Op.MAC:
        flf = (src_len, dst_len) + (0,) * 8
        op_type = 0
    elif op is Op.CIPHER_ENCRYPT or op is Op.CIPHER_DECRYPT:
        flf = (iv_len, src_len, dst_len) + (0,) * 7
        op_type = vc.SYM_OP_CIPHER
    else:
        if op is Op.CHAIN_SEAL:
            text, hash_len = src_len, dst_len - src_len
        else:
            text, hash_len = dst_len, src_len - dst_len
        flf = (iv_len, src_len, text, 0, text, 0, text, aad_len, hash_len, 0)
        op_type = vc.SYM_OP_CHAIN
    _SYM_HDR.pack_into(slots, base, code, 0, dop.session_id, flag, 0, *flf, op_type, 0)


class Queue:
    """Driver side of one data virtqueue."""

    def __init__(self, index: int, vq: SplitVirtqueue, slots: memoryview, slots_gpa: int,
                 indirect: bool, stateless_aead: bool = False):
        self.index = index
        # Negotiated stateless AEAD: session-mode requests then say so in
        # header.flag (virtio 1.2 §5.9.7.1); without the feature flag stays 0.
        self.stateless_aead = stateless_aead
        self._flag = vc.VIRTIO_CRYPTO_FLAG_SESSION_MODE if stateless_aead else 0
        self.vq = vq
        self.kick_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self.call_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._slots = slots
        self._slots_gpa = slots_gpa
        self.indirect = indirect
        capacity = vq.num if indirect else vq.num // MAX_CHAIN
        self.capacity = capacity
        self._free = list(range(capacity - 1, -1, -1))
        self._tokens: list[object] = [None] * capacity
        self.kicks = 0
        self.calls = 0
        self.polls = 0
        self.enqueued = 0
        self.dequeued = 0
        vq.driver_disable_calls()

    @property
    def free_slots(self) -> int:
        return len(self._free)

    @property
    def in_flight(self) -> int:
        return self.capacity - len(self._free)

    def enqueue_burst(self, ops: Sequence[DataOp]) -> int:
        vq = self.vq
        for dop in ops:
            if dop.key is not None and not (self.stateless_aead and dop.op in _AEAD_OPS):
                raise DriverError(f"stateless {dop.op.value} request: the device offers stateless "
                                  f"AEAD only" if self.stateless_aead else "stateless request: "
                                  "the device did not offer VIRTIO_CRYPTO_F_AEAD_STATELESS_MODE")
        n = 0
        for dop in ops:
            if not self._free:
                break
            slot = self._free.pop()
            self._tokens[slot] = dop.token
            self._write_chain(slot, dop)
            vq.driver_add(slot if self.indirect else slot * MAX_CHAIN)
            n += 1
        if n:
            old, new = vq.driver_publish()
            self.enqueued += n
            full_fence()      # publish avail.idx before reading the device's suppression state
            if vq.driver_should_kick(old, new):
                os.eventfd_write(self.kick_fd, 1)
                self.kicks += 1
        return n

    def enqueue_chain(self, chain: Sequence[tuple[int, int, int]], token: object = None) -> bool:
        """Publish an arbitrary chain of (device address, length, flags) buffers
        (NEXT links added here). For conformance and hostile-driver tests: the
        caller supplies the header and status buffers itself and reads its own
        status byte; the ``Completion`` only reports ``dst_len`` (used len - 1)."""
        if not self._free or not 0 < len(chain) <= MAX_CHAIN:
            return False
        slot = self._free.pop()
        self._tokens[slot] = token
        self._slots[slot * SLOT_BYTES + SLOT_STATUS] = 0xFF
        self._link(slot, list(chain))
        self.vq.driver_add(slot if self.indirect else slot * MAX_CHAIN)
        old, new = self.vq.driver_publish()
        self.enqueued += 1
        full_fence()
        if self.vq.driver_should_kick(old, new):
            os.eventfd_write(self.kick_fd, 1)
            self.kicks += 1
        return True

    def _write_chain(self, slot: int, dop: DataOp) -> None:
        base = slot * SLOT_BYTES
        slot_gpa = self._slots_gpa + base
        iv, aad, src, dst = dop.iv, dop.aad, dop.src, dop.dst
        iv_len = iv.length if iv is not None else 0
        aad_len = aad.length if aad is not None else 0
        slots = self._slots
        key = dop.key
        flag = self._flag
        if key is not None:   # (checked by enqueue_burst: stateless AEAD, negotiated)
            _AEAD_STATELESS_HDR.pack_into(
                slots, base, vc.DATA_OPCODE[dop.op], 0, 0, 0, 0, vc.aead_algo(dop.alg),
                key.length, vc.OP_ENCRYPT if dop.op is Op.AEAD_SEAL else vc.OP_DECRYPT,
                iv_len, vc.AEAD_TAG_BYTES, aad_len, src.length, dst.length)
        elif dop.op is Op.AEAD_SEAL or dop.op is Op.AEAD_OPEN:
            _AEAD_HDR.pack_into(slots, base, vc.DATA_OPCODE[dop.op], 0, dop.session_id, flag, 0,
                                iv_len, aad_len, src.length, dst.length, vc.AEAD_TAG_BYTES, 0)
        elif dop.op in SYM_OPS:
            _pack_sym(slots, base, dop, iv_len, aad_len, flag)
        else:
            # akcipher / KX flf: src_len, dst_len; the rest of the 48-byte union is zero
            _AEAD_HDR.pack_into(slots, base, vc.DATA_OPCODE[dop.op], 0, dop.session_id, flag, 0,
                                src.length, dst.length, 0, 0, 0, 0)
        slots[base + SLOT_STATUS] = 0xFF
        chain = [(slot_gpa, vc.DATA_REQ_BYTES, 0)]
        if key is not None:
            chain.append((key.region.gpa + key.offset, key.length, 0))
        if iv_len:
            chain.append((iv.region.gpa + iv.offset, iv_len, 0))
        if aad_len:
            chain.append((aad.region.gpa + aad.offset, aad_len, 0))
        if src.length:
            chain.append((src.region.gpa + src.offset, src.length, 0))
        if dst.length:
            chain.append((dst.region.gpa + dst.offset, dst.length, VIRTQ_DESC_F_WRITE))
        chain.append((slot_gpa + SLOT_STATUS, vc.INHDR_BYTES, VIRTQ_DESC_F_WRITE))
        self._link(slot, chain)

    def _link(self, slot: int, chain: list[tuple[int, int, int]]) -> None:
        slot_gpa = self._slots_gpa + slot * SLOT_BYTES
        last = len(chain) - 1
        if self.indirect:
            off = slot * SLOT_BYTES + SLOT_TABLE
            slots = self._slots
            for i, (addr, length, flags) in enumerate(chain):
                _DESC.pack_into(slots, off + DESC_BYTES * i, addr, length,
                                flags if i == last else flags | VIRTQ_DESC_F_NEXT, i + 1)
            self.vq.desc.write(slot, slot_gpa + SLOT_TABLE, len(chain) * DESC_BYTES,
                               VIRTQ_DESC_F_INDIRECT, 0)
        else:
            first = slot * MAX_CHAIN
            for i, (addr, length, flags) in enumerate(chain):
                self.vq.desc.write(first + i, addr, length,
                                   flags if i == last else flags | VIRTQ_DESC_F_NEXT, first + i + 1)

    def dequeue_burst(self, max_count: int = 1 << 16) -> list[Completion]:
        vq = self.vq
        out: list[Completion] = []
        while len(out) < max_count:
            elem = vq.driver_pop_used()
            if elem is None:
                break
            head, written = elem
            slot = head if self.indirect else head // MAX_CHAIN
            if not 0 <= slot < self.capacity:
                raise DriverError(f"device returned unknown head {head}")
            if written == 0:
                status, dst_len = vc.VIRTIO_CRYPTO_ERR, 0   # device could not even write status
            else:
                status, dst_len = self._slots[slot * SLOT_BYTES + SLOT_STATUS], written - 1
            out.append(Completion(self._tokens[slot], status, dst_len))
            self._tokens[slot] = None
            self._free.append(slot)
        self.dequeued += len(out)
        return out

    def pending(self) -> int:
        return self.vq.driver_pending_used()

    def arm_calls(self) -> bool:
        """For a caller's own wait loop: ask the device for a call at the next
        completion, fence, and re-check. True = nothing pending, safe to sleep
        on ``call_fd``; False = completions are already there (calls disarmed)."""
        self.vq.driver_enable_calls()
        full_fence()              # store used_event/flags before re-reading used.idx
        if self.vq.driver_pending_used():
            self.vq.driver_disable_calls()
            return False
        return True

    def disarm_calls(self) -> None:
        self.vq.driver_disable_calls()

    async def wait_used(self, poll_s: float = 0.0, *, deadline: float = math.inf) -> None:
        """Wait until the used ring has something: first poll it for up to
        ``poll_s`` (trio checkpoints, so other tasks run), then arm calls,
        re-check, and sleep on the call eventfd. ``deadline`` (``trio``'s
        clock): raise ``DriverTimeout`` if nothing was used by then."""
        with trio.move_on_at(deadline):
            await self._wait_used(poll_s)
            return
        self.vq.driver_disable_calls()
        raise DriverTimeout(f"wait_used(queue {self.index})", "the caller's deadline")

    async def _wait_used(self, poll_s: float) -> None:
        vq = self.vq
        if poll_s > 0 and not vq.driver_pending_used():
            deadline = trio.current_time() + poll_s
            while not vq.driver_pending_used() and trio.current_time() < deadline:
                self.polls += 1
                await trio.sleep(0)
        while not vq.driver_pending_used():
            vq.driver_enable_calls()
            full_fence()
            if vq.driver_pending_used():
                break
            await trio.lowlevel.wait_readable(self.call_fd)
            try:
                os.eventfd_read(self.call_fd)
                self.calls += 1
            except BlockingIOError:
                pass
        vq.driver_disable_calls()

    def close(self) -> None:
        for fd in (self.kick_fd, self.call_fd):
            trio.lowlevel.notify_closing(fd)
            os.close(fd)
        self.vq.release()
        self._slots.release()


class Driver:
    """An attached virtio-crypto device (see the package docstring)."""

    def __init__(self, sock, region: Region, queues: list[Queue], features: int,
                 protocol_features: int, control_timeout_s: float = CONTROL_TIMEOUT_S):
        self._sock = sock
        self.control_timeout_s = control_timeout_s
        self._broken = ""          # why the control connection is out of step
        self.region = region
        self.queues = queues
        self.features = features
        self.protocol_features = protocol_features
        self._lock = trio.Lock()
        self._regions: list[RegionHandle] = [RegionHandle(region, GPA_STRIDE)]
        self._next_gpa = 2 * GPA_STRIDE
        self.closed = False

    # -- attach ---------------------------------------------------------------

    @classmethod
    async def attach(cls, socket_path: str, *, queues: int = 1, queue_size: int = 256,
                     event_idx: bool = True, indirect: bool = True, stateless: bool = True,
                     control_timeout_s: float = CONTROL_TIMEOUT_S) -> Driver:
        """Connect and negotiate. Each message waits at most ``control_timeout_s``
        (``DriverTimeout`` naming it); the driver keeps the bound for its
        control requests."""
        check_queue_size(queue_size)
        sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            await _bounded(f"attach to {socket_path}: connect", control_timeout_s,
                           sock.connect(socket_path))
            return await cls._negotiate(sock, queues, queue_size, event_idx, indirect,
                                        stateless, control_timeout_s)
        except (OSError, transport.ConnectionClosed, vu.VhostUserError) as exc:
            sock.close()
            raise DriverError(f"attach to {socket_path}: {exc!r}") from exc
        except BaseException:
            sock.close()
            raise

    @classmethod
    async def _negotiate(cls, sock, nqueues, queue_size, event_idx, indirect, stateless,
                         timeout_s: float) -> Driver:
        async def call(req, payload=b"", fds=(), need_reply=False):
            flags = vu.VHOST_USER_VERSION | (vu.FLAG_NEED_REPLY if need_reply else 0)
            await _bounded(f"attach: {R(req).name}", timeout_s,
                           transport.send_message(sock, req, payload, flags=flags, fds=list(fds)))

        async def reply(req):
            msg = await _bounded(f"attach: reply to {R(req).name}", timeout_s,
                                 transport.recv_message(sock))
            for fd in msg.fds:
                os.close(fd)
            if msg.request != req or not msg.flags & vu.FLAG_REPLY:
                raise DriverError(f"expected a reply to {R(req).name}, got request {msg.request}")
            return msg.payload

        await call(R.GET_FEATURES)
        offered = vu.parse_u64(await reply(R.GET_FEATURES))
        if not offered & (1 << vu.VHOST_USER_F_PROTOCOL_FEATURES):
            raise DriverError("device does not offer vhost-user protocol features")
        await call(R.GET_PROTOCOL_FEATURES)
        pf_offered = vu.parse_u64(await reply(R.GET_PROTOCOL_FEATURES))
        need = (1 << PF.REPLY_ACK) | (1 << PF.CRYPTO_SESSION) | (1 << PF.CONFIGURE_MEM_SLOTS)
        if pf_offered & need != need:
            raise DriverError(f"device protocol features {pf_offered:#x} lack {need:#x}")
        pf = need | (pf_offered & ((1 << PF.VCRYPTO_EXT) | (1 << PF.MQ)))
        await call(R.SET_PROTOCOL_FEATURES, vu.u64(pf))
        await call(R.SET_OWNER)
        await call(R.GET_QUEUE_NUM)
        max_queues = vu.parse_u64(await reply(R.GET_QUEUE_NUM))
        if nqueues > max_queues:
            raise DriverError(f"device serves {max_queues} data queues, asked for {nqueues}")
        want = (1 << vu.VIRTIO_F_VERSION_1) | (1 << vu.VHOST_USER_F_PROTOCOL_FEATURES)
        if event_idx:
            want |= 1 << vu.VIRTIO_F_EVENT_IDX
        if indirect:
            want |= 1 << vu.VIRTIO_F_INDIRECT_DESC
        if stateless:
            want |= vc.STATELESS_AEAD_FEATURES
        features = want & offered
        await call(R.SET_FEATURES, vu.u64(features))

        layout = vring_layout(queue_size)
        slots_bytes = queue_size * SLOT_BYTES
        per_queue = layout.total + slots_bytes
        region = Region.create("driver", per_queue * nqueues)
        gpa = GPA_STRIDE
        await call(R.SET_MEM_TABLE, vu.mem_table([vu.MemRegion(gpa, region.size, gpa, 0)]),
                   fds=[region.fd], need_reply=True)
        if vu.parse_u64(await reply(R.SET_MEM_TABLE)) != 0:
            raise DriverError("SET_MEM_TABLE refused")
        use_event = bool(features & (1 << vu.VIRTIO_F_EVENT_IDX))
        use_indirect = bool(features & (1 << vu.VIRTIO_F_INDIRECT_DESC))
        queues: list[Queue] = []
        try:
            for q in range(nqueues):
                base = q * per_queue
                lay = vring_layout(queue_size, base)
                vq = SplitVirtqueue(queue_size, region.buf[lay.desc:lay.avail],
                                    region.buf[lay.avail:lay.used],
                                    region.buf[lay.used:base + lay.total], event_idx=use_event)
                slots_off = base + lay.total
                queue = Queue(q, vq, region.buf[slots_off:slots_off + slots_bytes],
                              gpa + slots_off, use_indirect, vc.stateless_aead(features))
                queues.append(queue)
                await call(R.SET_VRING_NUM, vu.vring_state(q, queue_size))
                await call(R.SET_VRING_BASE, vu.vring_state(q, 0))
                await call(R.SET_VRING_ADDR, vu.VringAddr(q, 0, gpa + lay.desc, gpa + lay.used,
                                                          gpa + lay.avail).encode())
                await call(R.SET_VRING_CALL, vu.u64(q), fds=[queue.call_fd])
                await call(R.SET_VRING_KICK, vu.u64(q), fds=[queue.kick_fd], need_reply=True)
                if vu.parse_u64(await reply(R.SET_VRING_KICK)) != 0:
                    raise DriverError(f"vring {q} refused")
        except BaseException:
            for queue in queues:
                queue.close()
            region.close()
            raise
        return cls(sock, region, queues, features, pf, timeout_s)

    # -- control path -----------------------------------------------------------

    @property
    def control_fileno(self) -> int:
        """The vhost-user socket's fd, for a caller that watches it for EOF
        (the device never speaks first between control requests)."""
        return self._sock.fileno()

    async def _request(self, req: int, payload: bytes = b"", *, fds=(), need_reply=False,
                       expect_reply=True) -> bytes | None:
        if self.closed:
            raise DriverError("driver is closed")
        name, timeout_s = R(req).name, self.control_timeout_s
        async with self._lock:
            if self._broken:
                raise DriverError(f"{name}: control connection unusable ({self._broken})")
            flags = vu.VHOST_USER_VERSION | (vu.FLAG_NEED_REPLY if need_reply else 0)
            finished = False
            try:
                await _bounded(name, timeout_s, transport.send_message(
                    self._sock, req, payload, flags=flags, fds=list(fds)))
                if not (expect_reply or need_reply):
                    finished = True
                    return None
                msg = await _bounded(f"reply to {name}", timeout_s,
                                     transport.recv_message(self._sock))
                finished = True
            except (OSError, transport.ConnectionClosed, vu.VhostUserError) as exc:
                raise DriverError(f"{name}: connection to the device failed: {exc}") from exc
            finally:
                if not finished:
                    # Timed out, cancelled or failed mid-exchange: a late or
                    # partial message would be taken for the next request's.
                    self._broken = f"{name} did not complete"
            for fd in msg.fds:
                os.close(fd)
            if msg.request != req or not msg.flags & vu.FLAG_REPLY:
                self._broken = f"unexpected reply to {name}"
                raise DriverError(f"{name}: unexpected reply {msg.request}")
            return msg.payload

    async def create_session(self, params: vc.SessionParams) -> int:
        payload = await self._request(R.CREATE_CRYPTO_SESSION, session_msg.encode_create(params))
        sid, status = session_msg.decode_create_reply(payload)
        if sid < 0 or status != vc.VIRTIO_CRYPTO_OK:
            raise SessionCreateError(status or vc.VIRTIO_CRYPTO_ERR, repr(params))
        return sid

    async def close_session(self, session_id: int) -> None:
        payload = await self._request(R.CLOSE_CRYPTO_SESSION, vu.u64(session_id), need_reply=True)
        status = vu.parse_u64(payload)
        if status != 0:
            raise DriverError(f"close session {session_id}: "
                              f"{vc.STATUS_NAMES.get(status, status)}")

    async def register_region(self, region: Region) -> RegionHandle:
        """Register a caller's shared region (ADD_MEM_REG); buffers inside it can
        then be used in ``DataOp``s. The caller keeps owning the region."""
        gpa = self._next_gpa
        self._next_gpa += GPA_STRIDE * ((region.size + GPA_STRIDE - 1) // GPA_STRIDE)
        payload = await self._request(R.ADD_MEM_REG,
                                      vu.mem_reg(vu.MemRegion(gpa, region.size, gpa, 0)),
                                      fds=[region.fd], need_reply=True)
        if vu.parse_u64(payload) != 0:
            raise DriverError("ADD_MEM_REG refused")
        handle = RegionHandle(region, gpa)
        self._regions.append(handle)
        return handle

    async def unregister_region(self, handle: RegionHandle) -> None:
        payload = await self._request(
            R.REM_MEM_REG, vu.mem_reg(vu.MemRegion(handle.gpa, handle.region.size, handle.gpa, 0)),
            need_reply=True)
        if vu.parse_u64(payload) != 0:
            raise DriverError("REM_MEM_REG refused")
        self._regions.remove(handle)

    async def capabilities(self) -> dict:
        return json.loads(await self._request(R.VCRYPTO_GET_CAPS))

    async def stats(self) -> dict:
        """The device's counters and the host's CPU time (vendor GET_STATS)."""
        return json.loads(await self._request(R.VCRYPTO_GET_STATS))

    # -- data path (non-blocking) -------------------------------------------------

    def enqueue_burst(self, queue: int, ops: Sequence[DataOp]) -> int:
        return self.queues[queue].enqueue_burst(ops)

    def dequeue_burst(self, queue: int, max_count: int = 1 << 16) -> list[Completion]:
        return self.queues[queue].dequeue_burst(max_count)

    def kick_fd(self, queue: int) -> int:
        return self.queues[queue].kick_fd

    def call_fd(self, queue: int) -> int:
        return self.queues[queue].call_fd

    async def wait_used(self, queue: int, poll_s: float = 0.0, *,
                        deadline: float = math.inf) -> None:
        await self.queues[queue].wait_used(poll_s, deadline=deadline)

    # -- teardown -----------------------------------------------------------------

    async def aclose(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._sock.close()
        for q in self.queues:
            q.close()
        try:
            self.region.close()
        except Exception:  # a caller still holds a view: leave it to the GC
            pass

    async def __aenter__(self) -> Driver:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
