"""Split virtqueues (virtio 1.2 §2.7), the driver ↔ device data path.

A split virtqueue of ``num`` entries (a power of two, ≤ 32768) is three
areas in shared memory. All fields are little-endian; the code reads and
writes them through native ``memoryview.cast`` views, which is correct on
x86-64 (little-endian, and aligned 2/4/8-byte stores are single, untorn
``mov`` instructions). Nothing here does I/O: it is the layout plus the
index arithmetic, used by the driver (``vcrypto.driver``) and the host
(``vcrypto.host``) alike.

Descriptor table (driver-written), 16-byte aligned, 16 bytes × num::

    offset     size  field   meaning
    16*i + 0   8     addr    guest-physical address of the buffer (le64)
    16*i + 8   4     len     buffer length in bytes (le32)
    16*i + 12  2     flags   NEXT=1 (chain continues at `next`), WRITE=2
                             (device writes this buffer), INDIRECT=4 (buffer
                             is a table of descriptors, virtio 1.2 §2.7.5.3)
    16*i + 14  2     next    index of the next descriptor when NEXT is set

Available ring (driver-written), 2-byte aligned, 6 + 2·num bytes::

    offset     size  field       meaning
    0          2     flags       VIRTQ_AVAIL_F_NO_INTERRUPT=1: driver does not
                                 want used-buffer notifications (calls); ignored
                                 by the device when VIRTIO_F_EVENT_IDX is on
    2          2     idx         free-running count of heads published (wraps at 2^16)
    4 + 2*k    2     ring[k]     head descriptor index; entry n at ring[n mod num]
    4 + 2*num  2     used_event  (EVENT_IDX) call me when used.idx passes this

Used ring (device-written), 4-byte aligned, 6 + 8·num bytes::

    offset     size  field        meaning
    0          2     flags        VIRTQ_USED_F_NO_NOTIFY=1: device does not want
                                  available-buffer notifications (kicks); ignored
                                  by the driver when EVENT_IDX is on
    2          2     idx          free-running count of used elements published
    4 + 8*k    4     ring[k].id   head index of the completed chain (le32)
    8 + 8*k    4     ring[k].len  bytes the device wrote into the chain (le32)
    4 + 8*num  2     avail_event  (EVENT_IDX) kick me when avail.idx passes this

``vring_bytes(num)`` lays the three areas out contiguously for a driver that
owns one region: descriptor table at 0, avail ring at 16·num, used ring at
the next 64-byte boundary (the used ring is written by the other side, so it
starts on its own cache line).

Publication order (virtio 1.2 §2.7.13, §2.7.8): the driver writes
descriptors, then ring[idx mod num], then idx; the device writes used
elements, then idx. x86-64 TSO keeps stores in program order, so no fence is
needed for publication. The notification handshake ("arm, then re-check")
needs a store→load fence: see ``vcrypto.shm.ring.full_fence``.

Notification suppression, both sides (virtio 1.2 §2.7.7, §2.7.10):
``need_event(event, new, old)`` is the spec's ``vring_need_event``: notify
iff ``event`` lies in the half-open window ``[old, new)`` of indices just
published, computed mod 2^16.
"""
from __future__ import annotations

import dataclasses
import struct

__all__ = [
    "VIRTQ_DESC_F_NEXT", "VIRTQ_DESC_F_WRITE", "VIRTQ_DESC_F_INDIRECT",
    "VIRTQ_AVAIL_F_NO_INTERRUPT", "VIRTQ_USED_F_NO_NOTIFY", "DESC_BYTES",
    "VirtqueueError", "VringLayout", "vring_layout", "need_event", "Descriptor",
    "DescriptorTable", "SplitVirtqueue",
]

VIRTQ_DESC_F_NEXT = 1
VIRTQ_DESC_F_WRITE = 2
VIRTQ_DESC_F_INDIRECT = 4
VIRTQ_AVAIL_F_NO_INTERRUPT = 1
VIRTQ_USED_F_NO_NOTIFY = 1
DESC_BYTES = 16
MAX_QUEUE_SIZE = 32768


class VirtqueueError(Exception):
    """The virtqueue memory or an index in it is invalid."""


def need_event(event_idx: int, new_idx: int, old_idx: int) -> bool:
    """virtio 1.2 §2.7.10.1 ``vring_need_event``: did [old, new) pass ``event_idx``?"""
    return ((new_idx - event_idx - 1) & 0xFFFF) < ((new_idx - old_idx) & 0xFFFF)


def desc_table_bytes(num: int) -> int:
    return DESC_BYTES * num


def avail_bytes(num: int) -> int:
    return 6 + 2 * num


def used_bytes(num: int) -> int:
    return 6 + 8 * num


@dataclasses.dataclass(frozen=True)
class VringLayout:
    """Offsets of one contiguously laid-out vring inside its region."""

    num: int
    desc: int
    avail: int
    used: int
    total: int


def vring_layout(num: int, base: int = 0) -> VringLayout:
    check_num(num)
    desc = base
    avail = desc + desc_table_bytes(num)
    used = (avail + avail_bytes(num) + 63) // 64 * 64
    end = (used + used_bytes(num) + 63) // 64 * 64
    return VringLayout(num, desc, avail, used, end - base)


def check_num(num: int) -> None:
    # virtio 1.2 §2.7: "Queue Size ... a power of 2 ... maximum 32768".
    if num < 1 or num > MAX_QUEUE_SIZE or num & (num - 1):
        raise VirtqueueError(f"queue size must be a power of two in 1..{MAX_QUEUE_SIZE}, got {num}")


@dataclasses.dataclass(frozen=True, slots=True)
class Descriptor:
    addr: int
    len: int
    flags: int
    next: int

    @property
    def writable(self) -> bool:
        return bool(self.flags & VIRTQ_DESC_F_WRITE)


_DESC = struct.Struct("<QIHH")


class DescriptorTable:
    """A table of 16-byte descriptors over a memoryview (the ring's own table,
    or an indirect table the driver placed in one of its regions)."""

    __slots__ = ("count", "_mem", "_q", "_i", "_h")

    def __init__(self, mem: memoryview):
        if len(mem) % DESC_BYTES:
            raise VirtqueueError(f"descriptor table of {len(mem)} bytes is not a multiple of 16")
        self.count = len(mem) // DESC_BYTES
        self._mem = mem
        self._q = self._i = self._h = None     # write views, made on first write

    def read(self, i: int) -> Descriptor:
        return Descriptor(*self.read_raw(i))

    def read_raw(self, i: int) -> tuple[int, int, int, int]:
        """(addr, len, flags, next) of descriptor ``i`` (one unpack, no object)."""
        if not 0 <= i < self.count:
            raise VirtqueueError(f"descriptor index {i} outside table of {self.count}")
        return _DESC.unpack_from(self._mem, DESC_BYTES * i)

    @staticmethod
    def read_from(mem: memoryview, i: int) -> tuple[int, int, int, int]:
        """``read_raw`` on a table view without building a DescriptorTable."""
        return _DESC.unpack_from(mem, DESC_BYTES * i)

    def write(self, i: int, addr: int, length: int, flags: int, next_: int = 0) -> None:
        if self._q is None:
            mem = self._mem.cast("B")
            self._q, self._i, self._h = mem.cast("Q"), mem.cast("I"), mem.cast("H")
        self._q[2 * i] = addr
        self._i[4 * i + 2] = length
        self._h[8 * i + 6] = flags
        self._h[8 * i + 7] = next_

    def release(self) -> None:
        for v in (self._q, self._i, self._h):
            if v is not None:
                v.release()
        self._q = self._i = self._h = None
        self._mem.release()


class SplitVirtqueue:
    """Index arithmetic over one split virtqueue's three areas.

    Both roles use this class; each side touches only the fields the spec
    lets it write. ``event_idx`` says whether VIRTIO_F_EVENT_IDX was
    negotiated (then used_event/avail_event govern notifications, else the
    flags do). The device still keeps ``avail_event`` written when it is
    off: QEMU guests use event index even when QEMU does not pass the bit on
    (notes/qemu-virtio-crypto.md).
    """

    def __init__(self, num: int, desc: memoryview, avail: memoryview, used: memoryview,
                 *, event_idx: bool):
        check_num(num)
        if len(desc) < desc_table_bytes(num) or len(avail) < avail_bytes(num) \
                or len(used) < used_bytes(num):
            raise VirtqueueError(f"vring areas too small for {num} entries")
        self.num = num
        self.event_idx = event_idx
        self.desc = DescriptorTable(desc[:desc_table_bytes(num)])
        self._avail = avail[:avail_bytes(num)].cast("B").cast("H")
        self._used_h = used[:used_bytes(num)].cast("B").cast("H")
        self._used_i = used[4:4 + 8 * num].cast("B").cast("I")
        self._mask = num - 1
        # driver-side private state
        self.next_avail = 0       # avail.idx the driver will publish next
        self.last_used = 0        # used entries the driver has consumed
        # device-side private state
        self.last_avail = 0       # avail entries the device has consumed
        self.next_used = 0        # used.idx the device will publish next

    # -- avail ring ----------------------------------------------------------

    @property
    def avail_flags(self) -> int:
        return self._avail[0]

    @avail_flags.setter
    def avail_flags(self, value: int) -> None:
        self._avail[0] = value

    @property
    def avail_idx(self) -> int:
        return self._avail[1]

    @property
    def used_event(self) -> int:
        return self._avail[2 + self.num]

    @used_event.setter
    def used_event(self, value: int) -> None:
        self._avail[2 + self.num] = value & 0xFFFF

    # -- used ring -----------------------------------------------------------

    @property
    def used_flags(self) -> int:
        return self._used_h[0]

    @used_flags.setter
    def used_flags(self, value: int) -> None:
        self._used_h[0] = value

    @property
    def used_idx(self) -> int:
        return self._used_h[1]

    @property
    def avail_event(self) -> int:
        return self._used_h[2 + 4 * self.num]

    @avail_event.setter
    def avail_event(self, value: int) -> None:
        self._used_h[2 + 4 * self.num] = value & 0xFFFF

    # -- driver role ---------------------------------------------------------

    def driver_add(self, head: int) -> None:
        """Place one chain head in the avail ring (not yet visible)."""
        self._avail[2 + (self.next_avail & self._mask)] = head
        self.next_avail = (self.next_avail + 1) & 0xFFFF

    def driver_publish(self) -> tuple[int, int]:
        """Make added heads visible; returns (old, new) avail idx for ``driver_should_kick``."""
        old = self._avail[1]
        self._avail[1] = self.next_avail
        return old, self.next_avail

    def driver_should_kick(self, old: int, new: int) -> bool:
        """After a publish (and a fence): does the device want a kick?"""
        if old == new:
            return False
        if self.event_idx:
            return need_event(self.avail_event, new, old)
        return not (self.used_flags & VIRTQ_USED_F_NO_NOTIFY)

    def driver_pending_used(self) -> int:
        return (self._used_h[1] - self.last_used) & 0xFFFF

    def driver_pop_used(self) -> tuple[int, int] | None:
        """Next (head id, written len) from the used ring, or None."""
        if self._used_h[1] == self.last_used:
            return None
        k = self.last_used & self._mask
        elem = (self._used_i[2 * k], self._used_i[2 * k + 1])
        self.last_used = (self.last_used + 1) & 0xFFFF
        return elem

    def driver_enable_calls(self) -> None:
        """Ask for a call at the next completion (then re-check before sleeping)."""
        self.used_event = self.last_used
        self.avail_flags = 0

    def driver_disable_calls(self) -> None:
        # With EVENT_IDX the flag is ignored: park used_event half the index
        # space ahead, where the device's publishes will not reach it before
        # we re-arm (a queue never holds more than num <= 2^15 entries).
        self.avail_flags = VIRTQ_AVAIL_F_NO_INTERRUPT
        if self.event_idx:
            self.used_event = self.last_used + 0x8000

    # -- device role ---------------------------------------------------------

    def device_pending_avail(self) -> int:
        """Heads published and not yet consumed; > num means a corrupt ring."""
        return (self._avail[1] - self.last_avail) & 0xFFFF

    def device_pop_avail(self) -> int:
        """Next head index (unvalidated: the caller checks it against num)."""
        head = self._avail[2 + (self.last_avail & self._mask)]
        self.last_avail = (self.last_avail + 1) & 0xFFFF
        return head

    def device_add_used(self, head: int, written: int) -> None:
        """Write one used element (not yet visible)."""
        k = self.next_used & self._mask
        self._used_i[2 * k] = head
        self._used_i[2 * k + 1] = written
        self.next_used = (self.next_used + 1) & 0xFFFF

    def device_publish_used(self) -> tuple[int, int]:
        old = self._used_h[1]
        self._used_h[1] = self.next_used
        return old, self.next_used

    def device_should_call(self, old: int, new: int) -> bool:
        if old == new:
            return False
        if self.event_idx:
            return need_event(self.used_event, new, old)
        return not (self.avail_flags & VIRTQ_AVAIL_F_NO_INTERRUPT)

    def device_enable_kicks(self) -> None:
        """Ask for a kick at the next publish (the caller re-checks avail after a fence)."""
        self.avail_event = self.last_avail
        self.used_flags = 0

    def device_disable_kicks(self) -> None:
        # Same trick as driver_disable_calls for EVENT_IDX drivers.
        self.used_flags = VIRTQ_USED_F_NO_NOTIFY
        if self.event_idx:
            self.avail_event = self.last_avail + 0x8000

    def release(self) -> None:
        self.desc.release()
        for v in (self._avail, self._used_h, self._used_i):
            v.release()
