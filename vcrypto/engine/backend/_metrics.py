"""Engine-backend counters, and a Prometheus collector that reads them at
scrape time (the poll loop only bumps plain ints: no locks, no per-event
prometheus_client calls on the hot path).

``ENGINE_METRICS`` is the single list of what ``vcrypto-engine-backend``
exports (name, type, labels, help): the collector builds every family from
it, the README's table is printed from it (``python -m
vcrypto.engine.backend._metrics``) and the tests check the live endpoint
against it. Prometheus conventions: counts that only go up are counters
named ``..._total``, durations ``_seconds``, no precomputed ratios (the
session cache's hit rate is ``rate(..._cache_hits_total) /
(rate(..._cache_hits_total) + rate(..._cache_misses_total))``).
"""
from __future__ import annotations

import collections
import dataclasses
from typing import NamedTuple

from vcrypto.ops import Op

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
#: Op families for the per-family batch fill: a handshake's key exchange and
#: signature, and record protection.
FAMILY = {Op.ECDH: "handshake", Op.SIGN: "handshake", Op.AEAD_SEAL: "bulk", Op.AEAD_OPEN: "bulk"}
FAMILIES = ("handshake", "bulk")


def _bucket(n: int) -> int:
    for i, b in enumerate(BATCH_BUCKETS):
        if n <= b:
            return i
    return len(BATCH_BUCKETS) - 1


@dataclasses.dataclass
class BackendStats:
    requests: int = 0
    completed: int = 0
    bad_requests: int = 0
    stateless_requests: int = 0     # AEAD requests that carried their key (no session)
    device_errors: int = 0          # requests failed back to frontends (fallback)
    sessions_lost: int = 0          # device sessions recreated after the device lost them
    session_lost_redos: int = 0     # requests redone on a recreated session
    device_down_events: int = 0
    host_stalls: int = 0            # host failed for a request outstanding past stall_timeout_s
    device_attaches: int = 0
    kicks_doorbell_wakes: int = 0   # times we woke from sleep
    closed_host_kicks: int = 0      # kicks/calls of host devices already closed (a reconnect
    closed_host_calls: int = 0      # starts the device's own counts at 0 again)
    calls: int = 0                  # frontend eventfd writes
    poll_passes: int = 0            # passes spent polling instead of sleeping
    sleeps: int = 0
    inflight_holds: int = 0         # sleeps on the device call with requests in flight, unadvertised
    batches: int = 0
    device_full: int = 0            # batches the device queue could not take whole
    batch_fill: list = dataclasses.field(default_factory=lambda: [0] * len(BATCH_BUCKETS))
    # per op family: batches that carried it, how many of its requests, histogram
    family_batches: dict = dataclasses.field(default_factory=lambda: dict.fromkeys(FAMILIES, 0))
    family_requests: dict = dataclasses.field(default_factory=lambda: dict.fromkeys(FAMILIES, 0))
    family_fill: dict = dataclasses.field(
        default_factory=lambda: {f: [0] * len(BATCH_BUCKETS) for f in FAMILIES})
    queue_ns_sum: int = 0           # frontend submit -> handed to the device
    exec_ns_sum: int = 0            # handed to the device -> completion seen
    timed: int = 0
    cache_hits: int = 0             # acquire of a cached sid, or open of a live one
    cache_misses: int = 0           # sessions created
    sessions_destroyed: int = 0
    frontends_attached: int = 0
    frontends_detached: int = 0
    inflight_by_op: collections.Counter = dataclasses.field(default_factory=collections.Counter)

    def record_batch(self, ops) -> None:
        """One device batch, given the op of each of its requests."""
        self.batches += 1
        self.batch_fill[_bucket(len(ops))] += 1
        counts = collections.Counter(FAMILY[op] for op in ops)
        for family, n in counts.items():
            self.family_batches[family] += 1
            self.family_requests[family] += n
            self.family_fill[family][_bucket(n)] += 1

    def as_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["inflight_by_op"] = {op.value: self.inflight_by_op.get(op, 0) for op in Op}
        return d


class MetricDef(NamedTuple):
    kind: str                 # counter | gauge | histogram
    labels: tuple[str, ...]
    help: str


#: ``BackendStats`` field -> (metric name, help): the plain counters.
COUNTER_FIELDS: dict[str, tuple[str, str]] = {
    "requests": ("vcrypto_engine_requests_total", "requests taken from the frontends' trans rings"),
    "completed": ("vcrypto_engine_completed_total", "requests completed back to the frontends (any status)"),
    "bad_requests": ("vcrypto_engine_bad_requests_total", "malformed request slots rejected (bad session, op or offsets)"),
    "device_errors": ("vcrypto_engine_device_errors_total", "requests failed back to the frontends (no host device, or it failed them) for in-process fallback"),
    "device_down_events": ("vcrypto_engine_device_down_events_total", "times the host device was lost (connection closed, error or stall)"),
    "device_attaches": ("vcrypto_engine_device_attaches_total", "times the engine-backend attached to vcrypto-host (start-up and every reconnect)"),
    "host_stalls": ("vcrypto_engine_host_stalls_total", "times the host was failed as hung (a request outstanding past --stall-timeout-s with no completion)"),
    "sessions_lost": ("vcrypto_engine_sessions_lost_total", "device sessions recreated after the host reported them unknown (INVSESS)"),
    "session_lost_redos": ("vcrypto_engine_session_lost_redos_total", "requests redone at the host on a recreated session"),
    "calls": ("vcrypto_engine_calls_total", "eventfd notifications sent to frontends (a completed opdone woke a waiting worker)"),
    "kicks_doorbell_wakes": ("vcrypto_engine_doorbell_wakes_total", "times the poll loop woke from its doorbell sleep (a frontend, the host or a control socket rang)"),
    "poll_passes": ("vcrypto_engine_poll_passes_total", "poll loop passes spent busy-polling instead of sleeping"),
    "sleeps": ("vcrypto_engine_sleeps_total", "times the poll loop blocked on its doorbell (nothing in flight, or the poll budget spent)"),
    "device_full": ("vcrypto_engine_device_full_total", "batches the host's data queue could not take whole (back-pressure)"),
    "cache_hits": ("vcrypto_engine_cache_hits_total", "session lookups served by an existing session (cached metadata acquired, or a live one opened again)"),
    "cache_misses": ("vcrypto_engine_cache_misses_total", "session lookups that created a session at the host"),
    "sessions_destroyed": ("vcrypto_engine_sessions_destroyed_total", "sessions destroyed when their refcount reached zero"),
    "frontends_attached": ("vcrypto_engine_frontend_attaches_total", "frontends (proxy workers) that attached"),
    "frontends_detached": ("vcrypto_engine_frontend_detaches_total", "frontends (proxy workers) that detached or died"),
}

#: ``Backend.gauges()`` key -> (metric name, type, help).
LIVE_FIELDS: dict[str, tuple[str, str, str]] = {
    "sessions": ("vcrypto_engine_sessions", "gauge", "sessions open in the engine-backend's session table"),
    "frontends": ("vcrypto_engine_frontends", "gauge", "frontends (proxy workers) attached now"),
    "device_up": ("vcrypto_engine_device_up", "gauge", "1 while the host device is attached, 0 while frontends compute in-process"),
    "host_kicks": ("vcrypto_engine_host_kicks_total", "counter", "doorbells rung at the host (it was asleep), over every host connection"),
    "host_calls": ("vcrypto_engine_host_calls_total", "counter", "notifications the host sent (the backend was asleep), over every host connection"),
}

#: Full metric name (counters with their ``_total``) -> definition.
ENGINE_METRICS: dict[str, MetricDef] = {
    **{name: MetricDef("counter", (), doc) for name, doc in COUNTER_FIELDS.values()},
    **{name: MetricDef(kind, (), doc) for name, kind, doc in LIVE_FIELDS.values()},
    "vcrypto_engine_inflight": MetricDef("gauge", ("op",), "requests in flight at the host device now, by operation"),
    "vcrypto_engine_batch_fill": MetricDef("histogram", (), "requests per batch handed to the host's data queue (batch fill)"),
    "vcrypto_engine_family_batch_fill": MetricDef(
        "histogram", ("family",), "requests of one op family (handshake: ecdh+sign, bulk: aead) per device batch "
        "that carried that family"),
    "vcrypto_engine_queue_seconds_total": MetricDef("counter", (), "time requests waited from the frontend's submit to being handed to the host device (summed)"),
    "vcrypto_engine_exec_seconds_total": MetricDef("counter", (), "time from handing requests to the host device to seeing their completion (summed)"),
}


def family(name: str):
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

    d = ENGINE_METRICS[name]
    base = name.removesuffix("_total") if d.kind == "counter" else name
    cls = {"counter": CounterMetricFamily, "gauge": GaugeMetricFamily,
           "histogram": HistogramMetricFamily}[d.kind]
    return cls(base, d.help, labels=list(d.labels))


def reference_table() -> str:
    """The Markdown table of ``ENGINE_METRICS`` (README's engine-metrics-reference block)."""
    rows = ["| metric | type | labels | meaning |", "|---|---|---|---|"]
    for name, d in ENGINE_METRICS.items():
        rows.append(f"| `{name}` | {d.kind} | {', '.join(d.labels) or '-'} | {d.help} |")
    return "\n".join(rows) + "\n"


def _histogram(counts) -> list:
    buckets, acc = [], 0
    for b, n in zip(BATCH_BUCKETS, counts):
        acc += n
        buckets.append((str(b), acc))
    buckets.append(("+Inf", acc))
    return buckets


class BackendCollector:
    """prometheus_client custom collector over a live ``BackendStats``."""

    def __init__(self, stats: BackendStats, gauges):
        self._stats = stats
        self._gauges = gauges  # callable -> dict of name -> value (Backend.gauges)

    def collect(self):
        s = self._stats
        for field, (name, _doc) in COUNTER_FIELDS.items():
            fam = family(name)
            fam.add_metric([], getattr(s, field))
            yield fam
        live = self._gauges()
        for key, (name, _kind, _doc) in LIVE_FIELDS.items():
            fam = family(name)
            fam.add_metric([], live[key])
            yield fam
        g = family("vcrypto_engine_inflight")
        for op in Op:
            g.add_metric([op.value], s.inflight_by_op.get(op, 0))
        yield g
        fill = family("vcrypto_engine_batch_fill")
        fill.add_metric([], _histogram(s.batch_fill), s.requests)
        yield fill
        fam = family("vcrypto_engine_family_batch_fill")
        for fname in FAMILIES:
            fam.add_metric([fname], _histogram(s.family_fill[fname]), s.family_requests[fname])
        yield fam
        for name, ns in (("vcrypto_engine_queue_seconds_total", s.queue_ns_sum),
                         ("vcrypto_engine_exec_seconds_total", s.exec_ns_sum)):
            fam = family(name)
            fam.add_metric([], ns / 1e9)
            yield fam


if __name__ == "__main__":   # python -m vcrypto.engine.backend._metrics: the README table
    print(reference_table(), end="")
