"""The frontend region: the shared memory one frontend and the engine-backend
(and the host, in place) read and write with no lock. Pure code over a
buffer: no sockets, no trio.

Theory of operation
-------------------
Two processes read and write these bytes with no lock, so the layouts are
documented once, here, byte by byte, and every accessor below is a thin view
over them: the frontend fills a request slot and pushes its index on the
trans ring; the backend validates the slot (never trusting a frontend's
offsets), completes it, and bumps the slot's opdone counter; the frontend's
waiter compares opdone ``done`` with ``total`` (``Opdones``). The
backend's shared region (flags, session cache) is ``_session_cache``. The
module is long because the layout description is; the code per structure is
short.

Frontend region
===============
One per attached frontend (proxy worker process). The engine-backend creates
it (``memfd``) at attach, sends the fd to the frontend, and registers it with
the host as a memory region, so the host reads request inputs and writes
results in place (zero copy). All integers little-endian; every section
starts on a 64-byte boundary.

Header, offset 0, 128 bytes::

    offset size field              written by  meaning
    0      4    magic              backend     0x45464356 (b"VCFE")
    4      4    version            backend     1
    8      8    region_bytes       backend     total size of the region
    16     4    ring_offset        backend     where the trans ring starts
    20     4    ring_capacity      backend     entries (power of two)
    24     4    slots_offset       backend     request slot 0
    28     4    slot_count         backend
    32     4    opdone_offset      backend     opdone record 0
    36     4    opdone_count       backend
    40     4    data_offset        backend     data chunk of slot 0
    44     4    chunk_bytes        backend     data chunk per slot
    48     16   -                  -           reserved
    64     4    frontend_waiting   frontend    1 while the frontend's waiter is
                                               (about to be) blocked on its eventfd
    68     60   -                  -           reserved (own cache line)

Trans ring at ``ring_offset``: see ``vcrypto.shm.ring``.

Request slot i at ``slots_offset + 128*i`` (the mempool: pre-allocated,
cache-line aligned, IV storage inside)::

    offset size field        written by  meaning
    0      4    status       backend     SlotStatus; PENDING while in flight
    4      1    op           frontend    OP_CODE
    5      1    alg          frontend    ALG_CODE
    6      2    opdone       frontend    index of the opdone record to bump
    8      8    session_id   frontend    backend session id (see session cache)
    16     4    src_offset   frontend    region offset of the input
    20     4    src_len      frontend
    24     4    dst_offset   frontend    region offset of the output buffer
    28     4    dst_cap      frontend    its capacity
    32     4    aad_offset   frontend
    36     4    aad_len      frontend
    40     4    dst_len      backend     bytes of output written
    44     4    iv_len       frontend    0..32
    48     8    submit_ns    frontend    CLOCK_MONOTONIC at submission (metrics)
    56     4    generation   frontend    bumped per use; completions carry it
    60     1    key_len      frontend    0: session mode (session_id names the
                                         session); 16 or 32: stateless AEAD, the
                                         traffic key is ``key`` (session_id 0)
    61     3    -            -           reserved
    64     32   iv           frontend    the IV / nonce
    96     32   key          frontend    stateless AEAD: the key (key_len bytes)

Stateless slots are how a connection's AEAD traffic keys reach the host
with no session at all (DESIGN §5: no shared-cache entry, no control round
trip): the key lives only in this region, which the worker shares with the
engine-backend and the host and with no other worker; the backend passes it
on as a virtio-crypto stateless AEAD request (``vcrypto.wire.virtio_crypto``),
the descriptor pointing at this field.

Opdone record j at ``opdone_offset + 64*j`` (one cache line each)::

    0      4    total        frontend    requests that share this record (1..16)
    4      4    done         backend     requests completed so far
    8      4    generation   frontend    bumped per use
    12     52   -            -           reserved

Data chunk of slot i at ``data_offset + chunk_bytes*i``: the frontend lays
out ``aad | src | dst`` inside it, 64-byte aligned each.

Ordering (x86-64 TSO, see ``vcrypto.shm.ring``): the frontend writes the
chunk and the slot, then pushes the index (store order publishes them). The
backend writes ``dst``/``dst_len``/``status`` of every slot of an opdone
before it stores ``done``; the frontend reads ``done`` then the slots.
"""
from __future__ import annotations

import dataclasses
import enum
import mmap
import struct

from vcrypto.ops import Alg, Op
from vcrypto.shm.ring import TransRing, ring_bytes

FRONTEND_MAGIC = 0x45464356
VERSION = 1
HEADER_BYTES = 128
SLOT_BYTES = 128
OPDONE_BYTES = 64
MAX_IV_BYTES = 32
PIPELINE_DEPTH = 16  # requests per opdone, as in the notes

# byte offsets of slot fields (u32 index = offset // 4, u64 index = offset // 8)
S_STATUS, S_OPALG, S_SID, S_SRC_OFF, S_SRC_LEN = 0, 4, 8, 16, 20
S_DST_OFF, S_DST_CAP, S_AAD_OFF, S_AAD_LEN, S_DST_LEN, S_IV_LEN = 24, 28, 32, 36, 40, 44
S_SUBMIT_NS, S_GEN, S_KEY_LEN, S_IV, S_KEY = 48, 56, 60, 64, 96
MAX_KEY_BYTES = 32
STATELESS_KEY_LENS = (16, 32)
H_WAITING = 64

#: Slot bytes 0..60 in one struct (see the layout table above).
_SLOT_FIELDS = struct.Struct("<IBBHQIIIIIIIIQIB")

OP_CODE = {Op.AEAD_SEAL: 1, Op.AEAD_OPEN: 2, Op.ECDH: 3, Op.SIGN: 4}
CODE_OP = {v: k for k, v in OP_CODE.items()}
ALG_CODE = {
    Alg.AES_128_GCM: 1, Alg.AES_256_GCM: 2, Alg.CHACHA20_POLY1305: 3,
    Alg.X25519: 16, Alg.SECP256R1: 17, Alg.SECP384R1: 18,
    Alg.X25519MLKEM768: 19, Alg.SECP256R1MLKEM768: 20,
    Alg.ECDSA_SECP256R1_SHA256: 32, Alg.ECDSA_SECP384R1_SHA384: 33,
    Alg.RSA_PSS_RSAE_SHA256: 34, Alg.RSA_PSS_RSAE_SHA384: 35, Alg.RSA_PSS_RSAE_SHA512: 36,
    Alg.RSA_PKCS1_SHA256: 37, Alg.RSA_PKCS1_SHA384: 38, Alg.RSA_PKCS1_SHA512: 39,
    Alg.ED25519: 40,
}
CODE_ALG = {v: k for k, v in ALG_CODE.items()}


class SlotStatus(enum.IntEnum):
    PENDING = 0
    OK = 1
    BAD_MESSAGE = 2     # AEAD tag mismatch
    INVALID = 3         # bad input (peer key not on the curve, lengths)
    NOT_SUPPORTED = 4
    DEVICE_ERROR = 5    # the device reported a failure (virtio ERR): redo in-process
    BAD_REQUEST = 6     # the slot itself was malformed (a frontend bug)
    DEVICE_LOST = 7     # the backend has no device (host down or lost): redo in-process
    # Between a device and the backend only, never written to a slot: the
    # device does not know the session (host INVSESS). Not the request's
    # fault: the backend recreates the session and redoes the request once.
    SESSION_LOST = 8


#: code -> SlotStatus without the IntEnum call (a frontend reads one per record)
_SLOT_STATUS = {int(s): s for s in SlotStatus}


class LayoutError(Exception):
    """A region does not have the layout it claims, or a request does not fit."""


class BadSlotError(LayoutError):
    """A slot's fields do not make sense; ``opdone`` is its record if valid."""

    def __init__(self, message: str, opdone: int | None = None):
        super().__init__(message)
        self.opdone = opdone


@dataclasses.dataclass(frozen=True)
class Geometry:
    """Sizes of a frontend region, fixed at attach."""

    ring_capacity: int = 256
    slot_count: int = 256
    opdone_count: int = 256  # one per slot: single requests never wait for a record
    chunk_bytes: int = 36864  # aad + a 16 KiB+256 record + its sealed copy, 64-aligned

    def __post_init__(self):
        if self.slot_count > self.ring_capacity:
            raise LayoutError("slot_count must not exceed ring_capacity (ring never overflows)")
        if self.slot_count < 1 or self.opdone_count < 1 or self.opdone_count > 65535:
            raise LayoutError(f"bad geometry {self}")
        if self.chunk_bytes % 64 or self.chunk_bytes < 1024:
            raise LayoutError("chunk_bytes must be a multiple of 64, at least 1024")

    @property
    def ring_offset(self) -> int:
        return HEADER_BYTES

    @property
    def slots_offset(self) -> int:
        return self.ring_offset + ring_bytes(self.ring_capacity)

    @property
    def opdone_offset(self) -> int:
        return self.slots_offset + SLOT_BYTES * self.slot_count

    @property
    def data_offset(self) -> int:
        return self.opdone_offset + OPDONE_BYTES * self.opdone_count

    @property
    def region_bytes(self) -> int:
        end = self.data_offset + self.chunk_bytes * self.slot_count
        return (end + mmap.PAGESIZE - 1) // mmap.PAGESIZE * mmap.PAGESIZE


def _a64(n: int) -> int:
    return (n + 63) & ~63


class FrontendRegion:
    """Typed access to one frontend region (both sides use it)."""

    def __init__(self, mm, geometry: Geometry | None = None, *, create: bool = False):
        self.mm = mm
        self.mv = memoryview(mm)
        if len(self.mv) % 8:
            raise LayoutError("region size must be a multiple of 8")
        self.u32 = self.mv.cast("I")
        self.u64 = self.mv.cast("Q")
        if create:
            if geometry is None:
                raise LayoutError("creating a region needs a geometry")
            if len(self.mv) < geometry.region_bytes:
                raise LayoutError(f"region of {len(self.mv)} bytes, geometry needs "
                                  f"{geometry.region_bytes}")
            self.mv[:geometry.data_offset] = bytes(geometry.data_offset)
            struct.pack_into("<IIQIIIIIIII", self.mv, 0, FRONTEND_MAGIC, VERSION,
                             len(self.mv), geometry.ring_offset, geometry.ring_capacity,
                             geometry.slots_offset, geometry.slot_count,
                             geometry.opdone_offset, geometry.opdone_count,
                             geometry.data_offset, geometry.chunk_bytes)
        magic, version, size, r_off, r_cap, s_off, s_cnt, o_off, o_cnt, d_off, chunk = \
            struct.unpack_from("<IIQIIIIIIII", self.mv, 0)
        if magic != FRONTEND_MAGIC or version != VERSION:
            raise LayoutError(f"not a v{VERSION} frontend region (magic {magic:#x}, "
                              f"version {version})")
        found = Geometry(r_cap, s_cnt, o_cnt, chunk)
        if (size != len(self.mv) or found.ring_offset != r_off or found.slots_offset != s_off
                or found.opdone_offset != o_off or found.data_offset != d_off
                or found.region_bytes > size):
            raise LayoutError("frontend region header is inconsistent with its size")
        if geometry is not None and geometry != found:
            raise LayoutError(f"region geometry {found}, expected {geometry}")
        self.geometry = found
        self.ring = TransRing(self.mv, r_off, r_cap, create=create)
        self._slots = s_off
        self._gens = [0] * s_cnt  # the writer's per-slot generation counters
        self.opdones = Opdones(self.mv, o_off)
        self._data = d_off
        self._chunk = chunk

    # -- header ------------------------------------------------------------

    @property
    def frontend_waiting(self) -> int:
        return self.u32[H_WAITING // 4]

    @frontend_waiting.setter
    def frontend_waiting(self, value: int) -> None:
        self.u32[H_WAITING // 4] = value

    # -- slots (frontend side) -----------------------------------------------

    def slot_offset(self, i: int) -> int:
        return self._slots + SLOT_BYTES * i

    def fits(self, src_len: int, dst_cap: int, aad_len: int = 0) -> bool:
        """Whether a request of these sizes fits one data chunk."""
        return _a64(aad_len) + _a64(src_len) + dst_cap <= self._chunk

    def write_request(self, i: int, op: Op, alg: Alg, opdone: int, session_id: int,
                      src: bytes, dst_cap: int, iv: bytes = b"", aad: bytes = b"",
                      submit_ns: int = 0, key: bytes = b"") -> None:
        """Fill slot ``i`` and its data chunk. Raises ``LayoutError`` if it does
        not fit. ``key``: a stateless AEAD request (``session_id`` 0)."""
        self.write_requests((i,), op, alg, opdone, session_id, ((src, iv, aad),), (dst_cap,),
                            submit_ns, key)

    def write_requests(self, slots, op: Op, alg: Alg, opdone: int, session_id: int,
                       items, dst_caps, submit_ns: int = 0, key: bytes = b"") -> None:
        """``write_request`` for a group of requests of one session and one
        opdone: slot ``slots[k]`` gets ``items[k]`` = ``(src, iv, aad)`` with
        output room ``dst_caps[k]``. What is the same for the whole group
        (codes, key checks, bound methods) is looked up once: this runs once
        per record on the frontend's send path."""
        key_len = len(key)
        if key_len and key_len not in STATELESS_KEY_LENS:
            raise LayoutError(f"stateless key of {key_len} bytes")
        op_code, alg_code = OP_CODE[op], ALG_CODE[alg]
        mv, gens, pack = self.mv, self._gens, _SLOT_FIELDS.pack_into
        chunk_bytes, data_offset, slots_offset = self._chunk, self._data, self._slots
        for i, (src, iv, aad), dst_cap in zip(slots, items, dst_caps):
            iv_len, aad_len, src_len = len(iv), len(aad), len(src)
            if iv_len > MAX_IV_BYTES:
                raise LayoutError(f"iv of {iv_len} bytes (max {MAX_IV_BYTES})")
            aad_off = data_offset + chunk_bytes * i       # the chunk: aad | src | dst
            src_off = aad_off + ((aad_len + 63) & ~63)
            dst_off = src_off + ((src_len + 63) & ~63)
            if dst_off + dst_cap > aad_off + chunk_bytes:
                raise LayoutError(f"request of {aad_len}+{src_len}+{dst_cap} bytes does not "
                                  f"fit a {chunk_bytes}-byte chunk")
            base = slots_offset + SLOT_BYTES * i
            if aad_len:
                mv[aad_off:aad_off + aad_len] = aad
            mv[src_off:src_off + src_len] = src
            if iv_len:
                mv[base + S_IV:base + S_IV + iv_len] = iv
            if key_len:
                mv[base + S_KEY:base + S_KEY + key_len] = key
            gen = gens[i] = (gens[i] + 1) & 0xFFFFFFFF
            # One C-level pack of bytes 0..60 (status PENDING first): the slot is
            # published by the ring push that follows, so no field order matters
            # inside it, only that all of it precedes the tail store (TSO).
            pack(mv, base, 0, op_code, alg_code, opdone, session_id, src_off, src_len, dst_off,
                 dst_cap, aad_off, aad_len, 0, iv_len, submit_ns, gen, key_len)

    def result(self, i: int) -> tuple[SlotStatus, bytes]:
        """Status and output of a completed slot (copied out of the region)."""
        w = self.slot_offset(i) // 4
        code = self.u32[w]
        status = _SLOT_STATUS.get(code)
        if status is None:
            status = SlotStatus(code)      # not a status: ValueError, as ever
        if status is not SlotStatus.OK:
            return status, b""
        off, n = self.u32[w + 6], self.u32[w + 10]
        return status, bytes(self.mv[off:off + n])

    # -- slots (backend side) ------------------------------------------------

    def read_request(self, i: int) -> "SlotRequest":
        """Decode slot ``i`` as the backend sees it, validating every range.

        A frontend is trusted less than the backend: a slot whose fields do
        not make sense raises ``LayoutError`` and completes as BAD_REQUEST.
        """
        if not 0 <= i < self.geometry.slot_count:
            raise BadSlotError(f"slot index {i} out of range 0..{self.geometry.slot_count - 1}")
        base = self._slots + SLOT_BYTES * i
        (_status, op_code, alg_code, opdone, session_id, src_off, src_len, dst_off, dst_cap,
         aad_off, aad_len, _dst_len, iv_len, submit_ns, generation, key_len) = \
            _SLOT_FIELDS.unpack_from(self.mv, base)
        if opdone >= self.geometry.opdone_count:
            raise BadSlotError(f"slot {i}: opdone {opdone} out of range")
        op = CODE_OP.get(op_code)
        alg = CODE_ALG.get(alg_code)
        if op is None or alg is None:
            raise BadSlotError(f"slot {i}: unknown op/alg code {op_code:#x}/{alg_code:#x}", opdone)
        chunk = self._data + self._chunk * i
        end = chunk + self._chunk
        for name, off, n in (("src", src_off, src_len), ("dst", dst_off, dst_cap),
                             ("aad", aad_off, aad_len)):
            if n and not (chunk <= off and off + n <= end):
                raise BadSlotError(f"slot {i}: {name} [{off}, +{n}) outside its chunk", opdone)
        if iv_len > MAX_IV_BYTES:
            raise BadSlotError(f"slot {i}: iv_len {iv_len}", opdone)
        if key_len and (key_len not in STATELESS_KEY_LENS or session_id):
            raise BadSlotError(f"slot {i}: key_len {key_len} with session {session_id}", opdone)
        return SlotRequest(i, op, alg, opdone, session_id, src_off, src_len, dst_off, dst_cap,
                           aad_off, aad_len, base + S_IV, iv_len, submit_ns, generation,
                           base + S_KEY, key_len)

    def complete(self, i: int, status: SlotStatus, dst_len: int = 0) -> None:
        w = self.slot_offset(i) // 4
        self.u32[w + 10] = dst_len
        self.u32[w] = status

    def slot_opdone(self, i: int) -> int:
        return self.u32[self.slot_offset(i) // 4 + 1] >> 16

    def release(self) -> None:
        self.ring.release()
        self.opdones.release()
        self.u32.release()
        self.u64.release()
        self.mv.release()


class Opdones:
    """The opdone records of a frontend region (the notes' "opdone"): one
    completion record shared by up to ``PIPELINE_DEPTH`` requests. The
    frontend resets record ``j`` with the number of requests that share it
    and suspends once; the backend bumps ``done`` as they complete; the
    waiter wakes the owning task when ``done`` reaches ``total``."""

    __slots__ = ("u32", "_base")

    def __init__(self, mv: memoryview, offset: int):
        self.u32 = mv.cast("I")
        self._base = offset // 4

    def reset(self, j: int, total: int) -> None:
        """Frontend: record ``j`` now counts ``total`` requests, none done."""
        w = self._base + OPDONE_BYTES // 4 * j
        self.u32[w + 1] = 0
        self.u32[w] = total
        self.u32[w + 2] = (self.u32[w + 2] + 1) & 0xFFFFFFFF

    def done(self, j: int) -> int:
        return self.u32[self._base + OPDONE_BYTES // 4 * j + 1]

    def total(self, j: int) -> int:
        return self.u32[self._base + OPDONE_BYTES // 4 * j]

    def is_complete(self, j: int) -> bool:
        w = self._base + OPDONE_BYTES // 4 * j
        return self.u32[w + 1] >= self.u32[w]

    def bump(self, j: int, n: int = 1) -> bool:
        """Backend: count ``n`` completions; True when the record is complete."""
        w = self._base + OPDONE_BYTES // 4 * j + 1
        done = self.u32[w] + n
        self.u32[w] = done
        return done >= self.u32[w - 1]

    def release(self) -> None:
        self.u32.release()


@dataclasses.dataclass(slots=True)
class SlotRequest:
    """A slot decoded by the backend: offsets are region offsets.

    Not frozen: one is built per request, and a frozen dataclass's
    ``__init__`` (a ``object.__setattr__`` per field) costs ~8x more here.
    Nothing changes it after ``read_request``."""

    slot: int
    op: Op
    alg: Alg
    opdone: int
    session_id: int
    src_offset: int
    src_len: int
    dst_offset: int
    dst_cap: int
    aad_offset: int
    aad_len: int
    iv_offset: int
    iv_len: int
    submit_ns: int
    generation: int
    key_offset: int = 0
    key_len: int = 0     # > 0: stateless AEAD, the key at key_offset
