"""The engine-backend's session table: backend session ids, the shared
session cache, and refcounted destruction (DESIGN §5). No I/O: the backend
creates and closes the sessions at the device around these calls.

A session is referenced by each frontend that opened or acquired it (one
reference per frontend handle) and by each request in flight on it. At zero
it leaves the shared cache and the table; the caller then closes it at the
device. Backend session ids are what slots carry; the device's own id is
kept per device attach (``epoch``), so a restarted host gets the sessions
re-created on first use while frontends keep their ids.
"""
from __future__ import annotations

from ..contract import SessionCache, SessionMeta
from ._metrics import BackendStats


class Session:
    __slots__ = ("sid", "meta", "canonical", "refs", "device_sid", "epoch", "cached")

    def __init__(self, sid: int, meta: SessionMeta, canonical: bytes):
        self.sid = sid
        self.meta = meta
        self.canonical = canonical
        self.refs = 0
        self.device_sid: int | None = None
        self.epoch = -1          # device attach the device_sid belongs to
        self.cached = False      # present in the shared cache


class BackendSessionTable:
    def __init__(self, shared: SessionCache, stats: BackendStats):
        self._shared = shared
        self._stats = stats
        self._by_sid: dict[int, Session] = {}
        self._by_meta: dict[bytes, Session] = {}
        self._next_sid = 1

    def __len__(self) -> int:
        return len(self._by_sid)

    def __iter__(self):
        return iter(list(self._by_sid.values()))

    def get(self, sid: int) -> Session | None:
        return self._by_sid.get(sid)

    def find(self, canonical: bytes) -> Session | None:
        """A live session with exactly this canonical metadata (an open that hits)."""
        sess = self._by_meta.get(canonical)
        if sess is not None and sess.meta.shareable:
            self._stats.cache_hits += 1
        return sess

    def acquire(self, sid: int, canonical: bytes) -> Session | None:
        """A frontend's shared-cache hit, confirmed: the sid is live and is
        still the session for exactly that metadata (not destroyed and reused).
        Confirmed against the metadata itself, not its MD5: the digests sit in
        memory every worker reads, so knowing one proves nothing."""
        sess = self._by_sid.get(sid)
        if sess is None or sess.canonical != canonical:
            return None
        self._stats.cache_hits += 1
        return sess

    def new(self, meta: SessionMeta, canonical: bytes) -> Session:
        """A session object not yet in the table (``add`` it once the device took it)."""
        return Session(self._next_sid, meta, canonical)

    def add(self, sess: Session) -> None:
        self._next_sid = max(self._next_sid, sess.sid + 1)
        if sess.meta.shareable:   # the cache's hits and misses count what it may hold
            self._stats.cache_misses += 1
        self._by_sid[sess.sid] = sess
        self._by_meta[sess.canonical] = sess
        # a connection's traffic key can never be reused: kept out of the shared cache
        sess.cached = sess.meta.shareable and self._shared.insert(sess.canonical, sess.sid)

    @staticmethod
    def ref(owner_refs: dict[int, int] | None, sess: Session) -> None:
        """+1, for a frontend (``owner_refs``: its per-sid counts) or a request (None)."""
        sess.refs += 1
        if owner_refs is not None:
            owner_refs[sess.sid] = owner_refs.get(sess.sid, 0) + 1

    def unref(self, sess: Session) -> bool:
        """-1; True when that was the last reference (the session is gone from
        the table and the cache; the caller closes it at the device)."""
        sess.refs -= 1
        if sess.refs > 0:
            return False
        self._stats.sessions_destroyed += 1
        if sess.cached:
            self._shared.remove(sess.canonical, sess.sid)
        self._by_sid.pop(sess.sid, None)
        self._by_meta.pop(sess.canonical, None)
        return True

    def forget_device(self) -> None:
        """The device is gone: no session has a device id any more."""
        for sess in self._by_sid.values():
            sess.device_sid = None

    def refcounts(self) -> dict[str, int]:
        return {str(s.sid): s.refs for s in self._by_sid.values()}
