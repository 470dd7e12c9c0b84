"""vhost-user message framing (QEMU docs/interop/vhost-user.rst) and payloads.

Every message is a 12-byte header then ``size`` payload bytes, sent on a
unix stream socket; file descriptors travel as SCM_RIGHTS ancillary data on
the same ``sendmsg``::

    offset  size  field
    0       4     request   message number (below)
    4       4     flags     bits 0-1 version (= 1), bit 2 REPLY, bit 3 NEED_REPLY
    8       4     size      payload bytes that follow

Payloads used here (little-endian, ``struct`` formats in the codecs):

* u64 (features, protocol features, SET_VRING_KICK/CALL: bits 0-7 vring
  index, bit 8 = no fd (polling mode)).
* vring state: u32 index, u32 num (SET_VRING_NUM/BASE, GET_VRING_BASE reply).
* vring address: u32 index, u32 flags, u64 desc, u64 used, u64 avail,
  u64 log — in the *front-end's* virtual addresses (translated through each
  region's ``userspace_addr``).
* memory table (SET_MEM_TABLE): u32 nregions, u32 padding, then ≤ 8 regions of
  u64 guest_phys_addr, u64 memory_size, u64 userspace_addr, u64 mmap_offset;
  one fd per region in order.
* single region (ADD_MEM_REG, protocol feature CONFIGURE_MEM_SLOTS): u64
  padding then one region; one fd.
* CREATE_CRYPTO_SESSION / CLOSE_CRYPTO_SESSION: see ``vcrypto.wire.session_msg``.

Replies carry flags ``VERSION | REPLY`` (0x5), as QEMU expects. With
protocol feature REPLY_ACK, a request sent with NEED_REPLY gets a u64 reply
(0 = success).

Vendor extension (ours; vhost-user has no vendor range, so numbers well above
the assigned ones, gated by protocol feature bit 62 ``VCRYPTO_EXT``):

* ``VCRYPTO_GET_CAPS`` (0x5601): no payload; reply = UTF-8 JSON
  ``{"v": 1, "capabilities": ["op:alg", ...], "max_sessions": n,
  "max_queues": n, "max_queue_size": n}``.
* ``VCRYPTO_GET_STATS`` (0x5602): no payload; reply = UTF-8 JSON
  ``{"v": 1, "device": {...counters...}, "host": {"cpu_s": float, ...}}``.
"""
from __future__ import annotations

import dataclasses
import enum
import struct

VHOST_USER_VERSION = 0x1
FLAG_REPLY = 0x4
FLAG_NEED_REPLY = 0x8
REPLY_FLAGS = VHOST_USER_VERSION | FLAG_REPLY   # 0x5
HEADER = struct.Struct("<III")
HEADER_BYTES = HEADER.size
MAX_PAYLOAD_BYTES = 64 * 1024
MAX_FDS = 8
VHOST_MEMORY_MAX_NREGIONS = 8
VRING_IDX_MASK = 0xFF
VRING_NOFD_MASK = 0x100


class Request(enum.IntEnum):
    GET_FEATURES = 1
    SET_FEATURES = 2
    SET_OWNER = 3
    RESET_OWNER = 4
    SET_MEM_TABLE = 5
    SET_LOG_BASE = 6
    SET_LOG_FD = 7
    SET_VRING_NUM = 8
    SET_VRING_ADDR = 9
    SET_VRING_BASE = 10
    GET_VRING_BASE = 11
    SET_VRING_KICK = 12
    SET_VRING_CALL = 13
    SET_VRING_ERR = 14
    GET_PROTOCOL_FEATURES = 15
    SET_PROTOCOL_FEATURES = 16
    GET_QUEUE_NUM = 17
    SET_VRING_ENABLE = 18
    GET_CONFIG = 24
    SET_CONFIG = 25
    CREATE_CRYPTO_SESSION = 26
    CLOSE_CRYPTO_SESSION = 27
    RESET_DEVICE = 34
    GET_MAX_MEM_SLOTS = 36
    ADD_MEM_REG = 37
    REM_MEM_REG = 38
    # vendor extension (documented above)
    VCRYPTO_GET_CAPS = 0x5601
    VCRYPTO_GET_STATS = 0x5602


class ProtocolFeature(enum.IntEnum):
    MQ = 0
    REPLY_ACK = 3
    CRYPTO_SESSION = 7
    CONFIGURE_MEM_SLOTS = 15
    VCRYPTO_EXT = 62   # vendor: GET_CAPS / GET_STATS


# virtio feature bits (virtio 1.2 §6) and the vhost-user one
VIRTIO_F_INDIRECT_DESC = 28
VIRTIO_F_EVENT_IDX = 29
VHOST_USER_F_PROTOCOL_FEATURES = 30
VIRTIO_F_VERSION_1 = 32


class VhostUserError(Exception):
    """A malformed vhost-user message: the connection cannot continue."""


@dataclasses.dataclass(frozen=True, slots=True)
class Message:
    request: int
    flags: int
    payload: bytes
    fds: tuple[int, ...] = ()

    @property
    def need_reply(self) -> bool:
        return bool(self.flags & FLAG_NEED_REPLY)


def encode(request: int, payload: bytes = b"", flags: int = VHOST_USER_VERSION) -> bytes:
    return HEADER.pack(request, flags, len(payload)) + payload


def decode_header(data: bytes) -> tuple[int, int, int]:
    """(request, flags, size); rejects bad versions and oversized payloads."""
    if len(data) != HEADER_BYTES:
        raise VhostUserError(f"header of {len(data)} bytes, expected {HEADER_BYTES}")
    request, flags, size = HEADER.unpack(data)
    if flags & 0x3 != VHOST_USER_VERSION:
        raise VhostUserError(f"version {flags & 0x3} in flags {flags:#x}, expected 1")
    if size > MAX_PAYLOAD_BYTES:
        raise VhostUserError(f"payload of {size} bytes exceeds {MAX_PAYLOAD_BYTES}")
    return request, flags, size


# -- payload codecs ----------------------------------------------------------

_U64 = struct.Struct("<Q")
_STATE = struct.Struct("<II")
_ADDR = struct.Struct("<IIQQQQ")
_REGION = struct.Struct("<QQQQ")
_MEMHDR = struct.Struct("<II")


def u64(value: int) -> bytes:
    return _U64.pack(value)


def parse_u64(payload: bytes) -> int:
    if len(payload) != 8:
        raise VhostUserError(f"u64 payload of {len(payload)} bytes")
    return _U64.unpack(payload)[0]


def vring_state(index: int, num: int) -> bytes:
    return _STATE.pack(index, num)


def parse_vring_state(payload: bytes) -> tuple[int, int]:
    if len(payload) != _STATE.size:
        raise VhostUserError(f"vring state payload of {len(payload)} bytes")
    return _STATE.unpack(payload)


@dataclasses.dataclass(frozen=True, slots=True)
class VringAddr:
    index: int
    flags: int
    desc: int
    used: int
    avail: int
    log: int = 0

    def encode(self) -> bytes:
        return _ADDR.pack(self.index, self.flags, self.desc, self.used, self.avail, self.log)

    @classmethod
    def decode(cls, payload: bytes) -> VringAddr:
        if len(payload) != _ADDR.size:
            raise VhostUserError(f"vring addr payload of {len(payload)} bytes")
        return cls(*_ADDR.unpack(payload))


@dataclasses.dataclass(frozen=True, slots=True)
class MemRegion:
    guest_phys_addr: int
    memory_size: int
    userspace_addr: int
    mmap_offset: int = 0

    def encode(self) -> bytes:
        return _REGION.pack(self.guest_phys_addr, self.memory_size, self.userspace_addr,
                            self.mmap_offset)


def mem_table(regions: list[MemRegion]) -> bytes:
    if len(regions) > VHOST_MEMORY_MAX_NREGIONS:
        raise VhostUserError(f"{len(regions)} regions > {VHOST_MEMORY_MAX_NREGIONS}")
    return _MEMHDR.pack(len(regions), 0) + b"".join(r.encode() for r in regions)


def parse_mem_table(payload: bytes) -> list[MemRegion]:
    if len(payload) < _MEMHDR.size:
        raise VhostUserError("memory table shorter than its header")
    n, _pad = _MEMHDR.unpack_from(payload)
    # QEMU sends the full 8-slot array; accept that or exactly n regions.
    if n > VHOST_MEMORY_MAX_NREGIONS or len(payload) < _MEMHDR.size + n * _REGION.size:
        raise VhostUserError(f"memory table with {n} regions in {len(payload)} bytes")
    return [MemRegion(*_REGION.unpack_from(payload, _MEMHDR.size + i * _REGION.size))
            for i in range(n)]


def mem_reg(region: MemRegion) -> bytes:
    return _U64.pack(0) + region.encode()


def parse_mem_reg(payload: bytes) -> MemRegion:
    if len(payload) != 8 + _REGION.size:
        raise VhostUserError(f"single memory region payload of {len(payload)} bytes")
    return MemRegion(*_REGION.unpack_from(payload, 8))
