"""The trans ring: a lock-free single-producer/single-consumer ring of u32
slot indices in shared memory.

One trans ring lives in every frontend region. The producer is the frontend
(one proxy worker process; its trio tasks run one at a time, so the process
is a single producer), the consumer is the engine-backend. Nothing is
locked: each side writes only its own counter.

Layout (little-endian, offsets from the ring's base, which must be 64-byte
aligned; the total is ``ring_bytes(capacity)``)::

    offset  size       field      written by   meaning
    ------  ---------  ---------  -----------  ----------------------------------
    0       8          head       consumer     entries consumed so far (u64, only grows)
    8       56         -          -            padding: head owns cache line 0
    64      8          tail       producer     entries published so far (u64, only grows)
    72      56         -          -            padding: tail owns cache line 1
    128     4          capacity   creator      number of entries, a power of two >= 2
    132     4          magic      creator      0x474E5254 (b"TRNG" read as u32 LE)
    136     56         -          -            reserved, zero
    192     4*capacity entries    producer     u32 slot index; entry n at 192 + 4*(n mod capacity)

``tail - head`` is the number of published, unconsumed entries (0 ..
capacity). The counters are 64-bit and never wrap in practice (2^64 pushes).
Head and tail sit on separate cache lines so the producer's and consumer's
stores do not bounce one line between the cores (false sharing).

Memory ordering. We rely on x86-64's TSO model: stores become visible to
other cores in program order, and loads are not reordered with older loads.
So the producer writes the entry (and, before it, the request slot the entry
names), then stores ``tail``: a consumer that sees the new tail sees the
entry and the slot. The consumer reads entries, then stores ``head``: a
producer that sees the new head may overwrite those entries. Each counter is
stored with one aligned 8-byte ``mov`` (through ``memoryview.cast('Q')``,
which is also the cheapest index access measured here: 0.075 us), so a
reader never sees a torn value. TSO does *not* order a store before a later
load of another location (store buffering); code that needs that — the
"am I asleep?" doorbell handshake — issues ``full_fence()`` between them. On
a weakly ordered CPU (ARM) this module would need explicit release/acquire
barriers; we only claim x86-64.
"""
from __future__ import annotations

import threading

HEAD_OFFSET = 0
TAIL_OFFSET = 64
CAPACITY_OFFSET = 128
MAGIC_OFFSET = 132
ENTRIES_OFFSET = 192
MAGIC = 0x474E5254  # b"TRNG" as a little-endian u32

_fence_lock = threading.Lock()


def full_fence() -> None:
    """A full memory barrier (orders an earlier store before a later load).

    CPython exposes no fence instruction. Acquiring a ``threading.Lock``
    runs a locked compare-and-exchange in glibc (``sem_trywait``/futex fast
    path), and on x86-64 every ``lock``-prefixed instruction is a full
    barrier that drains the store buffer. Costs ~0.1 us.
    """
    _fence_lock.acquire()
    _fence_lock.release()


class RingError(Exception):
    """The ring memory is not a valid ring, or the ring is misused."""


def ring_bytes(capacity: int) -> int:
    """Bytes a ring of ``capacity`` entries occupies, rounded to 64."""
    _check_capacity(capacity)
    return (ENTRIES_OFFSET + 4 * capacity + 63) // 64 * 64


def _check_capacity(capacity: int) -> None:
    if capacity < 2 or capacity & (capacity - 1) or capacity > 1 << 24:
        raise RingError(f"ring capacity must be a power of two in 2..2^24, got {capacity}")


class TransRing:
    """A view of one trans ring inside a shared buffer.

    Both ends construct a ``TransRing`` over the same memory; use
    ``push``/``push_many`` only in the producer and ``pop_many`` only in the
    consumer. ``create=True`` initialises the memory (done once, by whoever
    creates the region, before the other side maps it).
    """

    __slots__ = ("capacity", "_mask", "_head", "_tail", "_entries", "_views",
                 "_cached_head", "_cached_tail")

    def __init__(self, buf, offset: int = 0, capacity: int | None = None, *,
                 create: bool = False):
        if offset % 64:
            raise RingError(f"ring offset {offset} is not 64-byte aligned")
        mv = memoryview(buf)
        if create:
            if capacity is None:
                raise RingError("creating a ring needs a capacity")
            _check_capacity(capacity)
            size = ring_bytes(capacity)
            if offset + size > len(mv):
                raise RingError(f"ring of {capacity} entries needs {size} bytes at "
                                f"{offset}; buffer has {len(mv)}")
            mv[offset:offset + size] = bytes(size)
            hdr = mv[offset + CAPACITY_OFFSET:offset + CAPACITY_OFFSET + 8].cast("I")
            hdr[0] = capacity
            hdr[1] = MAGIC
            hdr.release()
        if offset + ENTRIES_OFFSET > len(mv):
            raise RingError(f"buffer of {len(mv)} bytes too small for a ring at {offset}")
        hdr = mv[offset + CAPACITY_OFFSET:offset + CAPACITY_OFFSET + 8].cast("I")
        found_cap, magic = hdr[0], hdr[1]
        hdr.release()
        if magic != MAGIC:
            raise RingError(f"no trans ring at offset {offset}: magic {magic:#x}, "
                            f"expected {MAGIC:#x}")
        _check_capacity(found_cap)
        if capacity is not None and capacity != found_cap:
            raise RingError(f"ring capacity {found_cap}, expected {capacity}")
        if offset + ring_bytes(found_cap) > len(mv):
            raise RingError("ring extends past the end of the buffer")
        self.capacity = found_cap
        self._mask = found_cap - 1
        self._head = mv[offset + HEAD_OFFSET:offset + HEAD_OFFSET + 8].cast("Q")
        self._tail = mv[offset + TAIL_OFFSET:offset + TAIL_OFFSET + 8].cast("Q")
        ent = offset + ENTRIES_OFFSET
        self._entries = mv[ent:ent + 4 * found_cap].cast("I")
        self._views = (self._head, self._tail, self._entries, mv)
        # Each side caches the other side's counter and re-reads it only
        # when the cached value says "full" (producer) / "empty" (consumer).
        self._cached_head = self._head[0]
        self._cached_tail = self._tail[0]

    # -- producer --------------------------------------------------------

    def push(self, index: int) -> bool:
        """Publish one slot index. False if the ring is full."""
        return self.push_many((index,)) == 1

    def push_many(self, indices) -> int:
        """Publish as many of ``indices`` as fit, with one store of ``tail``.

        Returns how many were pushed (a prefix of ``indices``).
        """
        tail = self._tail[0]
        free = self.capacity - (tail - self._cached_head)
        if free < len(indices):
            self._cached_head = self._head[0]
            free = self.capacity - (tail - self._cached_head)
        n = min(free, len(indices))
        entries, mask = self._entries, self._mask
        for i in range(n):
            entries[(tail + i) & mask] = indices[i]
        if n:
            self._tail[0] = tail + n  # publish: entries are stored before this (TSO)
        return n

    # -- consumer --------------------------------------------------------

    def pop_many(self, max_count: int) -> list[int]:
        """Take up to ``max_count`` published indices, with one store of ``head``."""
        head = self._head[0]
        avail = self._cached_tail - head
        if avail < max_count:
            self._cached_tail = self._tail[0]
            avail = self._cached_tail - head
        if avail > self.capacity:
            raise RingError(f"corrupt ring: tail - head = {avail} > capacity {self.capacity}")
        n = min(avail, max_count)
        if n <= 0:
            return []
        entries, mask = self._entries, self._mask
        out = [entries[(head + i) & mask] for i in range(n)]
        self._head[0] = head + n  # release the entries to the producer
        return out

    # -- either side -----------------------------------------------------

    def __len__(self) -> int:
        """Published, unconsumed entries (a snapshot)."""
        return self._tail[0] - self._head[0]

    def empty(self) -> bool:
        return self._tail[0] == self._head[0]

    def release(self) -> None:
        """Drop the memoryviews so the underlying mmap can be closed."""
        for v in self._views:
            v.release()
