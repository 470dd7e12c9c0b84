"""Status documents -> the text ``vcrypto status`` prints (sans-IO).

One block per daemon, read at a glance: a header line (daemon, pid, uptime,
socket), a few ``key value`` summary lines, then tables (the pool's
resources, the host's devices and queues, the backend's frontends). Numbers
come from the documents as they are; the only thing computed here is
presentation (percentages, durations, thousands separators).
"""
from __future__ import annotations

from collections.abc import Sequence


def _n(value) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.2f}".rstrip("0").rstrip(".") if value != int(value) else f"{int(value):,}"
    return "-" if value is None else str(value)


def duration(seconds: float) -> str:
    s = int(seconds)
    if s < 60:
        return f"{seconds:.1f}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def table(headers: Sequence[str], rows: Sequence[Sequence], indent: str = "    ") -> list[str]:
    """Left-aligned columns, two spaces apart."""
    cells = [list(headers)] + [[_n(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    return [indent + "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells]


def _kinds(by_kind: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(by_kind.items())) or "none"


def _header(doc: dict, admin_path: str) -> str:
    return (f"{doc.get('daemon')}  pid {doc.get('pid')}  up {duration(doc.get('uptime_s', 0))}"
            f"  admin {admin_path}")


def render_host(doc: dict, admin_path: str) -> list[str]:
    out = [_header(doc, admin_path)]
    totals, pool, poll = doc["totals"], doc["pool"], doc["poll"]
    devices = doc["devices"]
    completions = totals.get("completions", {})
    ok = sum(n for k, n in completions.items() if k.rsplit("/", 1)[-1] == "ok")
    failed = sum(completions.values()) - ok
    sessions = sum(d["sessions"] for d in devices)
    in_flight = sum(q["in_flight"] for d in devices for q in d["queues"])
    polling = poll["mode"]
    if poll["mode"] == "adaptive":
        polling += f" (spin {_n(poll['spin_us'])} us after batches >= {poll['batch_threshold']})"
    out.append(f"  devices {len(devices)}  sessions {_n(sessions)}  in flight {_n(in_flight)}"
               f"  requests {_n(totals['requests'])}  completed {_n(ok)}  failed {_n(failed)}")
    out.append(f"  polling {polling}  polls {_n(totals['polls'])}  sleeps {_n(totals['sleeps'])}"
               f"  kicks {_n(totals['kicks'])}  calls {_n(totals['calls'])}"
               f"  mean batch {_n(totals['mean_batch'])}")
    out.append(f"  fifo {'on' if doc.get('fifo') else 'off'}  reorder held {_n(totals['reorder_held'])}"
               f"  chain errors {_n(totals['chain_errors'])}"
               f"  resource faults {_n(totals['resource_faults'])}  cpu {_n(doc.get('cpu_s'))} s")
    policy = pool["policy"]
    fo = pool.get("failover")
    if fo:
        policy += f": {fo['primary']} -> {fo['secondary']} ({fo['balance']})"
    out.append(f"  pool  {policy}  submitted {_n(pool['submitted'])}  failed {_n(pool['failed'])}"
               f"  retries {_n(pool['retries'])}  spills {_n(pool['spills'])}"
               f"  waits {_n(pool['waits'])}")
    out += table(
        ["RESOURCE", "KIND", "GROUP", "HEALTH", "IN FLIGHT", "COMPLETED", "ERRORS", "TIMEOUTS",
         "RETRIES", "SPILLS", "EXEC S"],
        [[r["name"], r["kind"], ",".join(r["groups"]) or "-",
          r["health"].upper() if r["health"] != "healthy" else r["health"],
          f"{r['in_flight']}/{r['max_in_flight']}", r["completed"], r["errors"] + r["op_errors"],
          r["timeouts"], r["retries"], r["spills"], round(r["exec_s"], 3)]
         for r in pool["resources"]])
    if devices:
        out.append("  devices")
        rows = []
        for d in devices:
            queues = d["queues"] or [None]
            for i, q in enumerate(queues):
                first = i == 0
                rows.append([
                    d["id"] if first else "", str(d["driver_pid"]) if first else "",
                    duration(d["uptime_s"]) if first else "",
                    f"{d['sessions']}/{d['max_sessions']}" if first else "",
                    "-" if q is None else q["index"], "-" if q is None else q["state"],
                    "-" if q is None else q["size"], "-" if q is None else q["in_flight"],
                    "-" if q is None else q["pending"], "-" if q is None else q["poll_state"],
                    d["counters"]["requests"] if first else ""])
        out += table(["DEVICE", "DRIVER PID", "UP", "SESSIONS", "QUEUE", "STATE", "SIZE",
                      "IN FLIGHT", "PENDING", "POLL", "REQUESTS"], rows)
        for d in devices:
            out.append(f"    device {d['id']} sessions: {_kinds(d['sessions_by_kind'])}")
    else:
        out.append("  devices: none attached")
    return out


def render_backend(doc: dict, admin_path: str) -> list[str]:
    out = [_header(doc, admin_path)]
    dev, sess, req = doc["device"], doc["sessions"], doc["requests"]
    pol, bat = doc["polling"], doc["batches"]
    q = dev["queue"]
    if dev["up"]:
        state = f"up ({dev['kind']}{' ' + doc['host_socket'] if doc.get('host_socket') else ''})"
    else:
        state = "DOWN (frontends compute in-process)"
    out.append(f"  device {state}  sessions there {_n(dev['sessions'])}  attaches {dev['attaches']}"
               f"  lost {dev['down_events']}  stalls {dev['host_stalls']}")
    cap = q["capacity"]
    out.append(f"  queue to device  in flight {_n(q['in_flight'])}{'/' + _n(cap) if cap else ''}"
               f"  batch pending {_n(q['batch_pending'])}{'  FULL' if q['full'] else ''}"
               f"  kicks {_n(dev['kicks'])}  calls {_n(dev['calls'])}")
    cache = sess["cache"]
    rate = "-" if cache["hit_rate"] is None else f"{100 * cache['hit_rate']:.1f}%"
    out.append(f"  sessions {_n(sess['live'])} live, {_n(sess['cached'])} shared"
               f"  cache hit rate {rate} ({_n(cache['hits'])}/{_n(cache['lookups'])} lookups)"
               f"  entries {_n(cache['entries'])}  destroyed {_n(sess['destroyed'])}"
               f"  lost {_n(sess['lost'])}")
    out.append(f"    by kind: {_kinds(sess['by_kind'])}")
    inflight = ", ".join(f"{op} {n}" for op, n in sorted(req["in_flight_by_op"].items())) or "none"
    out.append(f"  requests {_n(req['taken'])} taken  {_n(req['completed'])} completed"
               f"  {_n(req['bad'])} bad  {_n(req['device_errors'])} device errors"
               f"  in flight: {inflight}")
    mode = pol["mode"]
    if mode == "adaptive":
        mode += f" (budget {_n(pol['budget_us'])} us, >= {pol['inflight_threshold']} in flight)"
    out.append(f"  polling {mode}  poll passes {_n(pol['poll_passes'])}  sleeps {_n(pol['sleeps'])}"
               f"  doorbell wakes {_n(pol['doorbell_wakes'])}"
               f"  frontend calls {_n(pol['frontend_calls'])}")
    out.append(f"  batches {_n(bat['count'])}  mean fill {_n(bat['mean_fill'])}  max {bat['max']}"
               f"  deadline {_n(bat['deadline_us'])} us  device full {_n(bat['device_full'])}")
    fronts = doc["frontends"]
    if fronts:
        out.append(f"  frontends {len(fronts)}")
        out += table(["FRONTEND", "PID", "IN FLIGHT", "RING", "SESSIONS"],
                     [[f["id"], str(f["pid"]), f["in_flight"], f["ring_depth"], f["sessions"]]
                      for f in fronts])
    else:
        out.append("  frontends: none attached")
    return out


RENDERERS = {"vcrypto-host": render_host, "vcrypto-engine-backend": render_backend}


def render_unreachable(name: str, admin_path: str, error: str) -> list[str]:
    return [f"{name}  UNREACHABLE  admin {admin_path}", f"  {error}"]
