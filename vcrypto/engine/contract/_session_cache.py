"""The engine-backend's shared region: its flags and the session cache,
and the session metadata the cache is keyed by (DESIGN §5). Pure code over
a buffer: no sockets, no trio.

Backend shared region
=====================
One per engine-backend. The backend creates it sealed against writable
mappings by anyone else (F_SEAL_FUTURE_WRITE): every frontend maps it
read-only, so no worker can rewrite the flags or another worker's cache
entries, and it holds no key material (entries carry digests only)::

    offset size field            meaning
    0      4    magic            0x45424356 (b"VCBE")
    4      4    version          1
    8      8    region_bytes
    16     4    cache_offset     first cache entry
    20     4    cache_entries    power of two
    24     4    entry_bytes      bytes per entry (64)
    28     36   -                reserved
    64     4    backend_sleeping 1 while the backend is (about to be) blocked
                                 on its doorbell: frontends ring it only then
    68     60   -                reserved (own cache line)
    128    4    device_up        1 while the host device is attached; 0 = frontends
                                 compute in-process (fallback)
    132    4    device_epoch     bumped at every (re)attach to the host
    136    4    stateless_aead   1 while the device takes stateless AEAD requests
                                 (the key in the slot, no session): frontends
                                 then open no session for a traffic key
    140    52   -                reserved

Session cache entry k at ``cache_offset + entry_bytes*k`` (open addressing,
linear probing from ``md5[0:4] mod cache_entries``)::

    0      4    seq          seqlock: odd while the backend rewrites the entry
    4      4    state        0 empty, 1 live, 2 tombstone (deleted; keep probing)
    8      8    session_id
    16     16   md5          MD5 of the canonical session metadata (the notes'
                             cache key; where probing starts)
    32     32   sha256       SHA-256 of the same metadata: a hit is confirmed
                             against it, as MD5 is not collision resistant; the
                             metadata itself (it holds keys) is never stored here

Only reusable sessions are cached (signing with the certificate key, ECDH
parameters): a connection's AEAD traffic keys are private to one frontend
(``SessionMeta.shareable``).

A reader reads ``seq`` (must be even), the fields, then ``seq`` again; a
change means a concurrent rewrite and is treated as a miss (the backend is
asked, which is always correct).
"""
from __future__ import annotations

import dataclasses
import hashlib
import mmap
import struct

from vcrypto.ops import Alg, Op

from ._region import ALG_CODE, CODE_ALG, CODE_OP, OP_CODE, VERSION, LayoutError

BACKEND_MAGIC = 0x45424356
B_SLEEPING, B_DEVICE_UP, B_EPOCH, B_STATELESS = 64, 128, 132, 136


@dataclasses.dataclass(frozen=True)
class SessionMeta:
    """What a session is: op + algorithm + key material or a host key name.

    AEAD: the traffic key (a session per direction: SEAL or OPEN; the key
    goes in the request slot instead, with no session, while the device takes
    stateless AEAD: ``B_STATELESS``, off with ``--aead-sessions``). SIGN: the
    PKCS#8 DER private key, or empty with ``key_ref`` naming a key the host
    holds (keyless). ECDH: no key (keygen + derive per request).
    """

    op: Op
    alg: Alg
    key: bytes = dataclasses.field(default=b"", repr=False)
    key_ref: str = ""

    def canonical(self) -> bytes:
        """The versioned, pointer-free encoding the cache hashes and stores."""
        ref = self.key_ref.encode()
        return (b"VCS1" + bytes((OP_CODE[self.op], ALG_CODE[self.alg]))
                + len(ref).to_bytes(2, "little") + ref
                + len(self.key).to_bytes(4, "little") + self.key)

    @classmethod
    def from_canonical(cls, data: bytes) -> SessionMeta:
        try:
            if data[:4] != b"VCS1":
                raise LayoutError("session metadata: bad magic")
            op, alg = CODE_OP[data[4]], CODE_ALG[data[5]]
            rl = int.from_bytes(data[6:8], "little")
            ref = data[8:8 + rl].decode()
            p = 8 + rl
            kl = int.from_bytes(data[p:p + 4], "little")
            key = data[p + 4:p + 4 + kl]
            if len(key) != kl or p + 4 + kl != len(data):
                raise LayoutError("session metadata: bad lengths")
        except (IndexError, KeyError, UnicodeDecodeError) as exc:
            raise LayoutError(f"session metadata: {exc!r}") from exc
        return cls(op, alg, bytes(key), ref)

    @property
    def shareable(self) -> bool:
        """Whether other connections (and workers) can reuse this session:
        not an AEAD traffic key, which belongs to one connection direction."""
        return self.op not in AEAD_OPS


AEAD_OPS = frozenset({Op.AEAD_SEAL, Op.AEAD_OPEN})


@dataclasses.dataclass(frozen=True)
class CacheGeometry:
    entries: int = 256
    entry_bytes: int = 64

    @property
    def cache_offset(self) -> int:
        return 192

    @property
    def region_bytes(self) -> int:
        end = self.cache_offset + self.entries * self.entry_bytes
        return (end + mmap.PAGESIZE - 1) // mmap.PAGESIZE * mmap.PAGESIZE


E_SEQ, E_STATE, E_SID, E_MD5, E_SHA = 0, 4, 8, 16, 32
ENTRY_MIN_BYTES = 64
EMPTY, LIVE, TOMBSTONE = 0, 1, 2
MAX_PROBE = 16


class BackendRegion:
    """The backend's shared region: its flags and the ``SessionCache``.

    The backend is the only writer (flags, ``cache.insert``/``remove``);
    frontends read the flags and call ``cache.lookup``.
    """

    def __init__(self, mm, geometry: CacheGeometry | None = None, *, create: bool = False):
        self.mm = mm
        self.mv = memoryview(mm)
        self.u32 = self.mv.cast("I")
        if create:
            if geometry is None:
                raise LayoutError("creating a shared region needs a geometry")
            if (geometry.entries & (geometry.entries - 1) or geometry.entry_bytes % 64
                    or geometry.entry_bytes < ENTRY_MIN_BYTES):
                raise LayoutError(f"bad cache geometry {geometry}")
            self.mv[:] = bytes(len(self.mv))
            struct.pack_into("<IIQIII", self.mv, 0, BACKEND_MAGIC, VERSION, len(self.mv),
                             geometry.cache_offset, geometry.entries, geometry.entry_bytes)
        magic, version, size, c_off, n, eb = struct.unpack_from("<IIQIII", self.mv, 0)
        if magic != BACKEND_MAGIC or version != VERSION or size != len(self.mv):
            raise LayoutError("not a v1 backend shared region")
        found = CacheGeometry(n, eb)
        if found.region_bytes > size or c_off != found.cache_offset:
            raise LayoutError("backend shared region header inconsistent")
        self.geometry = found
        self.cache = SessionCache(self.mv, found)

    # -- flags ------------------------------------------------------------------

    @property
    def backend_sleeping(self) -> int:
        return self.u32[B_SLEEPING // 4]

    @backend_sleeping.setter
    def backend_sleeping(self, v: int) -> None:
        self.u32[B_SLEEPING // 4] = v

    @property
    def device_up(self) -> int:
        return self.u32[B_DEVICE_UP // 4]

    @property
    def device_epoch(self) -> int:
        return self.u32[B_EPOCH // 4]

    @property
    def stateless_aead(self) -> int:
        return self.u32[B_STATELESS // 4]

    def set_device(self, up: bool, stateless_aead: bool = False) -> None:
        if up:
            self.u32[B_EPOCH // 4] += 1
        self.u32[B_STATELESS // 4] = 1 if up and stateless_aead else 0
        self.u32[B_DEVICE_UP // 4] = 1 if up else 0

    def release(self) -> None:
        self.cache.release()
        self.u32.release()
        self.mv.release()


class SessionCache:
    """The shared session cache (the notes' MD5(metadata) -> session id map),
    a view over the cache entries of a ``BackendRegion``; layout above."""

    def __init__(self, mv: memoryview, geometry: CacheGeometry):
        self.mv = mv
        self.u32 = mv.cast("I")
        self.u64 = mv.cast("Q")
        self.geometry = geometry
        self._mask = geometry.entries - 1

    def _entry(self, k: int) -> int:
        return self.geometry.cache_offset + self.geometry.entry_bytes * k

    def _probe(self, md5: bytes):
        start = int.from_bytes(md5[:4], "little")
        for step in range(min(MAX_PROBE, self.geometry.entries)):
            yield self._entry((start + step) & self._mask)

    def lookup(self, meta: bytes, md5: bytes | None = None,
               sha: bytes | None = None) -> int | None:
        """Session id cached for canonical metadata ``meta``, or None (a miss).
        ``md5``/``sha``: its digests, if the caller keeps them."""
        if md5 is None:
            md5 = hashlib.md5(meta, usedforsecurity=False).digest()
        if sha is None:
            sha = hashlib.sha256(meta).digest()
        mv, u32 = self.mv, self.u32
        for e in self._probe(md5):
            seq = u32[e // 4]
            state = u32[e // 4 + 1]
            if state == EMPTY:
                return None
            if seq & 1 or state != LIVE or mv[e + E_MD5:e + E_MD5 + 16] != md5:
                continue
            sid = self.u64[(e + E_SID) // 8]
            same = mv[e + E_SHA:e + E_SHA + 32] == sha
            if u32[e // 4] != seq:
                return None  # rewritten while we read: ask the backend
            return sid if same else None
        return None

    def insert(self, meta: bytes, session_id: int) -> bool:
        """Backend: cache ``meta`` -> ``session_id``. False if it cannot be cached."""
        md5 = hashlib.md5(meta, usedforsecurity=False).digest()
        free = None
        for e in self._probe(md5):
            state = self.u32[e // 4 + 1]
            if state == EMPTY:
                free = e if free is None else free
                break
            if state == TOMBSTONE and free is None:
                free = e
        if free is None:
            return False
        e, u32 = free, self.u32
        u32[e // 4] += 1  # odd: being written
        self.u64[(e + E_SID) // 8] = session_id
        self.mv[e + E_MD5:e + E_MD5 + 16] = md5
        self.mv[e + E_SHA:e + E_SHA + 32] = hashlib.sha256(meta).digest()
        u32[e // 4 + 1] = LIVE
        u32[e // 4] += 1  # even: stable
        return True

    def remove(self, meta: bytes, session_id: int) -> bool:
        md5 = hashlib.md5(meta, usedforsecurity=False).digest()
        for e in self._probe(md5):
            state = self.u32[e // 4 + 1]
            if state == EMPTY:
                return False
            if state == LIVE and self.u64[(e + E_SID) // 8] == session_id:
                self.u32[e // 4] += 1
                self.u32[e // 4 + 1] = TOMBSTONE
                self.u32[e // 4] += 1
                return True
        return False

    def live_entries(self) -> int:
        return sum(1 for k in range(self.geometry.entries)
                   if self.u32[self._entry(k) // 4 + 1] == LIVE)

    def release(self) -> None:
        self.u32.release()
        self.u64.release()
