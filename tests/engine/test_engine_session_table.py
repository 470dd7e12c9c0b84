"""The backend's session table, sans-IO: refcounts, cache entries, reuse."""
from __future__ import annotations

from vcrypto.engine.contract import BackendRegion, CacheGeometry, SessionMeta
from vcrypto.engine.backend._metrics import BackendStats
from vcrypto.engine.backend._sessions import BackendSessionTable
from vcrypto.ops import Alg, Op


def _table():
    g = CacheGeometry(entries=16, entry_bytes=512)
    shared = BackendRegion(bytearray(g.region_bytes), g, create=True).cache
    stats = BackendStats()
    return BackendSessionTable(shared, stats), shared, stats


def test_refcount_lifecycle_and_cache():
    table, shared, stats = _table()
    meta = SessionMeta(Op.ECDH, Alg.X25519)
    canonical = meta.canonical()
    assert table.find(canonical) is None
    s = table.new(meta, canonical)
    table.add(s)
    fe_a: dict[int, int] = {}
    fe_b: dict[int, int] = {}
    table.ref(fe_a, s)
    assert shared.lookup(canonical) == s.sid
    assert table.acquire(s.sid, meta.canonical()) is s   # another frontend's hit
    table.ref(fe_b, s)
    table.ref(None, s)                                       # a request in flight
    assert (s.refs, fe_a, fe_b) == (3, {s.sid: 1}, {s.sid: 1})
    assert not table.unref(s) and not table.unref(s)
    assert table.unref(s)                                    # the last one destroys
    assert table.get(s.sid) is None and shared.lookup(canonical) is None
    assert (stats.cache_misses, stats.cache_hits, stats.sessions_destroyed) == (1, 1, 1)


def test_acquire_rejects_stale_or_mismatched():
    table, _, _ = _table()
    m1, m2 = SessionMeta(Op.ECDH, Alg.X25519), SessionMeta(Op.ECDH, Alg.SECP256R1)
    s = table.new(m1, m1.canonical())
    table.add(s)
    assert table.acquire(s.sid, m2.canonical()) is None   # sid reused for other metadata
    assert table.acquire(s.sid + 1, m1.canonical()) is None
    s2 = table.new(m2, m2.canonical())
    assert s2.sid != s.sid
