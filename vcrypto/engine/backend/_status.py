"""The engine-backend's admin status document (``vcrypto status``).

``backend_status(backend)`` is a plain function of the live ``Backend``
(its frontends, session table, shared cache, device, counters): no I/O. It
runs on the poll loop's own thread, at the top of a pass, when the admin
thread (``_admin``) asked for it, so the document is one consistent instant
of the loop and the loop never shares its objects with another thread.
Shape::

    {"daemon": "vcrypto-engine-backend", "pid", "uptime_s", "socket", "host_socket",
     "device": {"up", "attaches", "down_events", "host_stalls", "sessions",
                "queue": {"capacity", "in_flight", "batch_pending", "full"},
                "kicks", "calls"},
     "frontends": [{"id", "pid", "in_flight", "ring_depth", "sessions"}],
     "sessions": {"live", "cached", "by_kind": {"op/alg": n}, "destroyed",
                  "lost", "cache": {"entries", "hits", "misses", "lookups", "hit_rate"}},
     "requests": {"taken", "completed", "bad", "device_errors", "in_flight_by_op"},
     "polling": {"mode", "budget_us", "inflight_threshold", "poll_passes", "sleeps",
                 "doorbell_wakes", "frontend_calls"},
     "batches": {"count", "mean_fill", "max", "deadline_us", "device_full"}}
"""
from __future__ import annotations

import os
import time


def backend_status(backend) -> dict:
    st = backend.stats
    cfg = backend.cfg
    dev = backend.device
    frontends = []
    for fe in list(backend.control.order):
        ring = fe.region.ring if fe.region is not None else None
        frontends.append({
            "id": fe.fid, "pid": fe.pid, "in_flight": fe.inflight,
            # pushed by the worker, not yet taken by the loop
            "ring_depth": len(ring) if ring is not None else 0,
            "sessions": sum(1 for n in fe.refs.values() if n > 0),
        })
    by_kind: dict[str, int] = {}
    cached = 0
    for sess in backend.sessions:
        kind = f"{sess.meta.op.value}/{sess.meta.alg.value}"
        by_kind[kind] = by_kind.get(kind, 0) + 1
        cached += sess.cached
    lookups = st.cache_hits + st.cache_misses
    return {
        "daemon": "vcrypto-engine-backend",
        "pid": os.getpid(),
        "uptime_s": round(time.monotonic() - backend.started_s, 3),
        "socket": cfg.socket_path,
        "host_socket": cfg.host_socket,
        "device": {
            "up": dev is not None,
            "kind": "none" if dev is None else ("host" if cfg.host_socket else "local"),
            "attaches": st.device_attaches,
            "down_events": st.device_down_events,
            "host_stalls": st.host_stalls,
            "sessions": dev.session_count if dev is not None else 0,
            "queue": {
                "capacity": getattr(dev, "queue_capacity", None),
                "in_flight": backend.inflight_count,
                "batch_pending": backend.pending_batch,
                "full": backend.device_full,
            },
            "kicks": getattr(dev, "kicks", 0),
            "calls": getattr(dev, "calls", 0),
        },
        "frontends": frontends,
        "sessions": {
            "live": len(backend.sessions),
            "cached": cached,
            "by_kind": by_kind,
            "destroyed": st.sessions_destroyed,
            "lost": st.sessions_lost,
            "cache": {
                "entries": backend.shared.cache.live_entries(),
                "hits": st.cache_hits, "misses": st.cache_misses, "lookups": lookups,
                "hit_rate": round(st.cache_hits / lookups, 4) if lookups else None,
            },
        },
        "requests": {
            "taken": st.requests, "completed": st.completed, "bad": st.bad_requests,
            "device_errors": st.device_errors,
            "in_flight_by_op": {op.value: n for op, n in st.inflight_by_op.items() if n},
        },
        "polling": {
            "mode": "adaptive" if cfg.poll_budget_us > 0 else "doorbell",
            "budget_us": cfg.poll_budget_us,
            "inflight_threshold": cfg.poll_inflight_threshold,
            "poll_passes": st.poll_passes, "sleeps": st.sleeps,
            "doorbell_wakes": st.kicks_doorbell_wakes, "frontend_calls": st.calls,
        },
        "batches": {
            "count": st.batches,
            "mean_fill": round(st.requests / st.batches, 2) if st.batches else 0.0,
            "max": cfg.batch_max,
            "deadline_us": cfg.batch_deadline_us,
            "device_full": st.device_full,
        },
    }
