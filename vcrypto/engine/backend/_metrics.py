"""Engine-backend counters, and a Prometheus collector that reads them at
scrape time (the poll loop only bumps plain ints: no locks, no per-event
prometheus_client calls on the hot path)."""
from __future__ import annotations

import collections
import dataclasses

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


class BackendCollector:
    """prometheus_client custom collector over a live ``BackendStats``."""

    def __init__(self, stats: BackendStats, gauges):
        self._stats = stats
        self._gauges = gauges  # callable -> dict of name -> value

    def collect(self):
        from prometheus_client.core import (CounterMetricFamily, GaugeMetricFamily,
                                            HistogramMetricFamily)

        s = self._stats
        for name, doc in (
            ("requests", "requests taken from trans rings"),
            ("completed", "requests completed back to frontends"),
            ("bad_requests", "malformed slots rejected"),
            ("device_errors", "requests failed back to frontends for in-process fallback"),
            ("device_down_events", "times the host device was lost"),
            ("host_stalls", "times the host was failed as hung (a request outstanding past "
                            "stall_timeout_s)"),
            ("sessions_lost", "device sessions recreated after the device lost them (INVSESS)"),
            ("session_lost_redos", "requests redone at the device on a recreated session"),
            ("calls", "frontend eventfd notifications"),
            ("poll_passes", "loop passes spent polling"),
            ("device_full", "batches the device queue could not take whole (back-pressure)"),
            ("sleeps", "times the loop blocked on its doorbell"),
            ("cache_hits", "session cache hits"),
            ("cache_misses", "session cache misses (sessions created)"),
            ("sessions_destroyed", "sessions destroyed at refcount zero"),
        ):
            yield CounterMetricFamily(f"vcrypto_engine_{name}", doc, value=getattr(s, name))
        g = GaugeMetricFamily("vcrypto_engine_inflight", "requests in flight by op", labels=["op"])
        for op in Op:
            g.add_metric([op.value], s.inflight_by_op.get(op, 0))
        yield g
        buckets, acc = [], 0
        for b, n in zip(BATCH_BUCKETS, s.batch_fill):
            acc += n
            buckets.append((str(b), acc))
        buckets.append(("+Inf", acc))
        yield HistogramMetricFamily("vcrypto_engine_batch_fill", "requests per device batch",
                                    buckets=buckets, sum_value=s.requests)
        fam = HistogramMetricFamily("vcrypto_engine_family_batch_fill",
                                    "requests of one op family (handshake: ecdh+sign, bulk: "
                                    "aead) per device batch that carried that family",
                                    labels=["family"])
        for family in FAMILIES:
            buckets, acc = [], 0
            for b, n in zip(BATCH_BUCKETS, s.family_fill[family]):
                acc += n
                buckets.append((str(b), acc))
            buckets.append(("+Inf", acc))
            fam.add_metric([family], buckets, sum_value=s.family_requests[family])
        yield fam
        yield CounterMetricFamily("vcrypto_engine_queue_seconds",
                                  "time from frontend submit to device", value=s.queue_ns_sum / 1e9)
        yield CounterMetricFamily("vcrypto_engine_exec_seconds",
                                  "time from device submit to completion", value=s.exec_ns_sum / 1e9)
        for name, value in self._gauges().items():
            yield GaugeMetricFamily(f"vcrypto_engine_{name}", name, value=value)
