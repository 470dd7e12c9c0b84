"""The host's admin status document (``vcrypto status``), built from live objects.

``host_status(host)`` is a plain function of the ``Host`` (devices, their
vrings and sessions, the scheduler's pool): no I/O, called on the host's
trio thread by the admin socket (``vcrypto.admin``) between two passes of
the data path, so every number in one document is from the same instant.
The document is JSON-ready (str keys, numbers, bools, lists); its shape::

    {"daemon": "vcrypto-host", "pid", "uptime_s", "socket", "fifo", "cpu_s",
     "poll": {"mode", "spin_us", "batch_threshold", "coalesce_us"},
     "devices": [{"id", "driver_pid", "uptime_s", "sessions", "max_sessions",
                  "sessions_by_kind": {"op/alg": n}, "memory_regions",
                  "queues": [{"index", "state", "size", "in_flight", "pending",
                              "poll_state"}],
                  "counters": {kicks, calls, polls, sleeps, requests, batches, ...}}],
     "totals": {same counters over live and detached devices,
                "completions": {"op/alg/status": n}, "mean_batch"},
     "pool": {"policy", "groups": {name: [resource]}, "failover": {...} | null,
              "resources": [{"name", "kind", "groups", "health", "in_flight",
                             "max_in_flight", "assigned", "completed",
                             "op_errors", "errors", "timeouts", "retries",
                             "spills", "unhealthy_marks", "readmissions",
                             "queue_wait_s", "exec_s"}],
              "in_flight_by_op", "submitted", "succeeded", "op_errors",
              "failed", "retries", "spills", "not_supported", "waits"}}
"""
from __future__ import annotations

import os
import time

from vcrypto.host.device import host_cpu_seconds
from vcrypto.host.queue import DeviceStats


def _counters(stats: DeviceStats) -> dict:
    return {f: getattr(stats, f) for f in DeviceStats.FIELDS}


def _device(dev, now: float) -> dict:
    queues = []
    for index, ring in sorted(dev.vrings.items()):
        q = ring.queue
        queues.append({
            "index": index,
            "state": ring.state.value,
            "size": ring.num,
            "in_flight": q.reorder.in_flight if q is not None else 0,
            # published by the driver, not yet popped (bounded by the ring size)
            "pending": min(q.vq.device_pending_avail(), ring.num) if q is not None else 0,
            "poll_state": q.poll_state.value if q is not None else "stopped",
        })
    return {
        "id": dev.id,
        "driver_pid": dev.peer_pid,
        "uptime_s": round(now - dev.started_at, 3),
        "sessions": len(dev.sessions),
        "max_sessions": dev.sessions.max_sessions,
        "sessions_by_kind": dev.sessions.by_kind(),
        "memory_regions": len(dev.mem),
        "queues": queues,
        "counters": _counters(dev.stats),
    }


def _pool(scheduler) -> dict:
    stats = scheduler.stats()
    core = scheduler.core
    member_of: dict[str, list[str]] = {}
    for gname, members in core.groups.items():
        for m in members:
            member_of.setdefault(m, []).append(gname)
    resources = []
    for name, r in stats.resources.items():
        resources.append({
            "name": name, "kind": r.kind, "groups": member_of.get(name, []),
            "health": "healthy" if r.healthy else "unhealthy",
            "in_flight": r.inflight, "max_in_flight": r.max_inflight,
            "assigned": r.assigned, "completed": r.completed, "op_errors": r.op_errors,
            "errors": r.errors, "timeouts": r.timeouts, "retries": r.retries,
            "spills": r.spills, "unhealthy_marks": r.unhealthy_marks,
            "readmissions": r.readmissions,
            "queue_wait_s": round(r.queue_wait_s_total, 6), "exec_s": round(r.exec_s_total, 6),
        })
    failover = core.failover
    return {
        "policy": stats.policy,
        "groups": {g: list(m) for g, m in core.groups.items()},
        "failover": None if failover is None else {
            "primary": failover.primary, "secondary": failover.secondary,
            "balance": failover.balance},
        "resources": resources,
        "in_flight_by_op": dict(stats.inflight_by_op),
        "submitted": stats.submitted, "succeeded": stats.succeeded,
        "op_errors": stats.op_errors, "failed": stats.failed, "retries": stats.retries,
        "spills": stats.spills, "not_supported": stats.not_supported, "waits": stats.waits,
    }


def host_status(host) -> dict:
    now = time.monotonic()
    devices = [_device(dev, now) for dev in list(host.devices.values())]
    total = DeviceStats()
    total.add(host.closed_stats)
    for dev in list(host.devices.values()):
        total.add(dev.stats)
    totals = _counters(total)
    totals["completions"] = {"/".join(k): n for k, n in sorted(total.by_op.items())}
    totals["mean_batch"] = round(total.batch_sum / total.batches, 2) if total.batches else 0.0
    poll = host.config.poll
    return {
        "daemon": "vcrypto-host",
        "pid": os.getpid(),
        "uptime_s": round(now - host.started_s, 3),
        "socket": host.socket_path,
        "fifo": host.config.fifo,
        "cpu_s": round(host_cpu_seconds(), 3),
        "poll": {"mode": poll.mode, "spin_us": poll.spin_us,
                 "batch_threshold": poll.batch_threshold, "coalesce_us": poll.coalesce_us},
        "keys": len(host.keys.names()),
        "devices": devices,
        "totals": totals,
        "pool": _pool(host.scheduler),
    }
