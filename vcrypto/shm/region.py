"""Shared-memory regions: ``memfd_create`` + ``mmap``.

A ``Region`` is one anonymous memory file mapped read-write and shared,
sealed against resizing (F_SEAL_SHRINK | F_SEAL_GROW), so a peer that maps it
never faults on a page the owner truncated away. The
creator passes its fd across a unix socket (``socket.send_fds``; vhost-user
SET_MEM_TABLE / ADD_MEM_REG carry it as SCM_RIGHTS ancillary data); the peer
maps the same pages with ``Region.from_fd``. Nothing is copied: both
processes see each other's stores (x86-64 TSO, see ``vcrypto.shm.ring``).

A region has no header of its own: its layout is whatever its owner puts in
it (a driver's queue region, a frontend's slots and buffers). Callers address
it by byte offset; ``view(offset, length)`` returns a bounds-checked
``memoryview`` slice (zero-copy).

Lifetime: the mapping stays valid while any ``memoryview`` on it is alive,
so ``close()`` releases the exported views first; a view still held by a
caller makes ``mmap.close`` raise ``BufferError``, which ``close`` reports
instead of leaking the fd.
"""
from __future__ import annotations

import fcntl
import mmap
import os

__all__ = ["Region", "RegionError", "PAGE_SIZE", "SIZE_SEALS", "is_size_sealed"]

PAGE_SIZE = mmap.PAGESIZE
#: Linux 5.1+ (include/uapi/linux/fcntl.h); Python names it only from 3.13.
F_SEAL_FUTURE_WRITE = getattr(fcntl, "F_SEAL_FUTURE_WRITE", 0x0010)
SIZE_SEALS = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW


def is_size_sealed(fd: int) -> bool:
    """Whether ``fd`` is a memfd whose size can never shrink (F_SEAL_SHRINK)."""
    try:
        return bool(fcntl.fcntl(fd, fcntl.F_GET_SEALS) & fcntl.F_SEAL_SHRINK)
    except OSError:          # not a memfd / sealing not supported
        return False


class RegionError(Exception):
    """A region could not be created or mapped, or an access is out of bounds."""


class Region:
    """One shared mapping of a memfd (or any mappable fd)."""

    __slots__ = ("name", "size", "fd", "_mm", "buf", "_closed")

    def __init__(self, name: str, fd: int, size: int, *, _mm: mmap.mmap):
        self.name = name
        self.fd = fd
        self.size = size
        self._mm = _mm
        #: The whole region as a writable memoryview (zero-copy access).
        self.buf = memoryview(_mm)
        self._closed = False

    # -- construction -----------------------------------------------------

    @classmethod
    def create(cls, name: str, size: int, *, peers_read_only: bool = False) -> Region:
        """A fresh zero-filled region of ``size`` bytes (rounded up to a page).

        ``peers_read_only``: seal it against new writable mappings
        (F_SEAL_FUTURE_WRITE): this process keeps writing through its own
        mapping, every peer it sends the fd to can only map it read-only."""
        if size <= 0:
            raise RegionError(f"region {name!r}: size must be positive, got {size}")
        size = (size + PAGE_SIZE - 1) // PAGE_SIZE * PAGE_SIZE
        fd = os.memfd_create(f"vcrypto-{name}", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            os.ftruncate(fd, size)
            mm = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
            # Fix the size for good (as QEMU's memory-backend-memfd does with
            # seal=on): a peer that maps this region can then trust that the
            # pages stay backed; a shrunk file would SIGBUS whoever touches it.
            seals = SIZE_SEALS | fcntl.F_SEAL_SEAL
            if peers_read_only:
                seals |= F_SEAL_FUTURE_WRITE
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, seals)
        except OSError as exc:
            os.close(fd)
            raise RegionError(f"region {name!r}: cannot create {size} bytes: {exc}") from exc
        return cls(name, fd, size, _mm=mm)

    @classmethod
    def from_fd(cls, name: str, fd: int, size: int | None = None, *, offset: int = 0,
                writable: bool = True) -> Region:
        """Map a region received from a peer; takes ownership of ``fd``.
        ``writable=False`` maps it read-only (a region its owner sealed with
        ``peers_read_only`` can only be mapped so).

        ``size`` defaults to the file's size. ``offset`` must be page aligned
        (mmap's rule); vhost-user's ``mmap_offset`` is honoured by mapping
        ``offset + size`` bytes from 0 when it is not.
        """
        try:
            file_size = os.fstat(fd).st_size
            if size is None:
                size = file_size - offset
            if size <= 0 or offset < 0 or offset + size > file_size:
                raise RegionError(f"region {name!r}: range {offset}+{size} exceeds the "
                                  f"{file_size}-byte file")
            prot = mmap.PROT_READ | (mmap.PROT_WRITE if writable else 0)
            mm = mmap.mmap(fd, offset + size, mmap.MAP_SHARED, prot)
        except OSError as exc:
            os.close(fd)
            raise RegionError(f"region {name!r}: cannot map fd {fd}: {exc}") from exc
        except RegionError:
            os.close(fd)
            raise
        region = cls(name, fd, offset + size, _mm=mm)
        return region

    # -- access -------------------------------------------------------------

    def view(self, offset: int, length: int) -> memoryview:
        """``buf[offset:offset+length]`` after checking it lies inside the region."""
        if offset < 0 or length < 0 or offset + length > self.size:
            raise RegionError(f"region {self.name!r}: [{offset}, {offset + length}) is outside "
                              f"[0, {self.size})")
        return self.buf[offset:offset + length]

    def write(self, offset: int, data: bytes) -> None:
        self.view(offset, len(data))[:] = data

    def read(self, offset: int, length: int) -> bytes:
        return bytes(self.view(offset, length))

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Unmap and close the fd. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self.buf.release()
        try:
            self._mm.close()
        except BufferError as exc:
            raise RegionError(f"region {self.name!r}: still viewed by a caller: {exc}") from exc
        finally:
            os.close(self.fd)

    def __enter__(self) -> Region:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Region({self.name!r}, fd={self.fd}, size={self.size})"
