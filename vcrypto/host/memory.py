"""The device's view of the driver's memory: regions received over vhost-user.

Each region arrives with an fd (SCM_RIGHTS) and three coordinates: its
guest-physical base (what descriptor ``addr`` fields use), its size, and the
front-end's userspace address (what SET_VRING_ADDR uses). ``gpa_view`` /
``uva_view`` translate an (address, length) to a zero-copy ``memoryview``
into the mapping, or raise ``BadAddress`` when the range is not wholly
inside one registered region — the check every descriptor goes through.
"""
from __future__ import annotations

import dataclasses
import logging
import os

from vcrypto.shm.region import Region, RegionError, is_size_sealed
from vcrypto.wire.vhost_user import MemRegion

log = logging.getLogger("vcrypto.host.memory")

U64_MAX = (1 << 64) - 1


class BadAddress(Exception):
    """An address range outside every registered region."""


@dataclasses.dataclass(slots=True)
class _Mapped:
    desc: MemRegion
    region: Region
    base: int       # offset of guest_phys_addr inside the mapping (= mmap_offset)


class GuestMemory:
    def __init__(self, max_slots: int, *, require_sealed: bool = True):
        self.max_slots = max_slots
        self.require_sealed = require_sealed
        self._maps: list[_Mapped] = []
        self._retired: list[Region] = []
        self._gpa: list[tuple[int, int, int, memoryview]] = []

    def __len__(self) -> int:
        return len(self._maps)

    def add(self, desc: MemRegion, fd: int) -> None:
        """Map one region (takes ownership of ``fd``)."""
        if len(self._maps) >= self.max_slots:
            os.close(fd)
            raise BadAddress(f"more than {self.max_slots} memory regions")
        if desc.memory_size == 0 or desc.guest_phys_addr + desc.memory_size > U64_MAX \
                or desc.userspace_addr + desc.memory_size > U64_MAX:
            os.close(fd)
            raise BadAddress(f"region {desc} has an empty or overflowing range")
        if self.require_sealed and not is_size_sealed(fd):
            # A driver that truncates an unsealed file under our mapping would
            # kill the whole host with SIGBUS on the next access.
            os.close(fd)
            raise BadAddress("region fd is not a memfd sealed against shrinking "
                             "(F_SEAL_SHRINK); refusing to map it")
        for m in self._maps:
            d = m.desc
            if desc.guest_phys_addr < d.guest_phys_addr + d.memory_size and \
                    d.guest_phys_addr < desc.guest_phys_addr + desc.memory_size:
                os.close(fd)
                raise BadAddress(f"region at {desc.guest_phys_addr:#x} overlaps one at "
                                 f"{d.guest_phys_addr:#x}")
        try:
            region = Region.from_fd(f"gpa-{desc.guest_phys_addr:#x}", fd,
                                    desc.memory_size + desc.mmap_offset)
        except RegionError as exc:
            raise BadAddress(str(exc)) from exc
        self._maps.append(_Mapped(desc, region, desc.mmap_offset))
        self._reindex()

    def _reindex(self) -> None:
        """The data path's lookup table: (start, end, base, buf) per region,
        plain tuples so a descriptor's translation is one short loop (a
        request's buffers usually alternate between two regions, the driver's
        request slots and its payload pool)."""
        self._gpa = [(m.desc.guest_phys_addr, m.desc.guest_phys_addr + m.desc.memory_size,
                      m.base, m.region.buf) for m in self._maps]

    def remove(self, gpa: int) -> None:
        for i, m in enumerate(self._maps):
            if m.desc.guest_phys_addr == gpa:
                del self._maps[i]
                self._reindex()
                self._close(m.region)
                return
        raise BadAddress(f"no region at {gpa:#x}")

    def _close(self, region: Region) -> None:
        try:
            region.close()
        except RegionError:
            # A request still holds a view; the mapping lives until it is done.
            self._retired.append(region)

    def clear(self) -> None:
        maps, self._maps = self._maps, []
        self._gpa = []
        for m in maps:
            self._close(m.region)
        retired, self._retired = self._retired, []
        for r in retired:
            try:
                r.close()
            except RegionError:
                log.warning("region %s still referenced at close", r.name)

    def _find(self, addr: int, length: int, field: str) -> memoryview:
        if addr < 0 or length < 0 or addr + length > U64_MAX:
            raise BadAddress(f"range {addr:#x}+{length} overflows")
        for m in self._maps:
            start = getattr(m.desc, field)
            if start <= addr and addr + length <= start + m.desc.memory_size:
                off = m.base + addr - start
                return m.region.buf[off:off + length]
        raise BadAddress(f"range {addr:#x}+{length} is outside every registered region")

    def gpa_view(self, addr: int, length: int) -> memoryview:
        end = addr + length
        # (start + memory_size <= 2^64 was checked in add(); descriptor
        # addresses and lengths are unsigned)
        for start, stop, base, buf in self._gpa:
            if start <= addr and end <= stop:
                off = base + addr - start
                return buf[off:off + length]
        return self._find(addr, length, "guest_phys_addr")   # raises BadAddress

    def uva_view(self, addr: int, length: int) -> memoryview:
        return self._find(addr, length, "userspace_addr")
